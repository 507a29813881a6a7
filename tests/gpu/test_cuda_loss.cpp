// CUDA-only check of the chunked loss (skipped without a CUDA device): bf16
// with a float32 head gradient takes ATen's out_dtype GEMMs, allocates no
// [vocab, hidden] temporary and matches a float64 reference.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "memory/device_memory.h"
#include "reference.h"
#include "train/loss.h"

namespace memo {
namespace {

// On CUDA, bf16 with a float32 head gradient takes ATen's out_dtype GEMMs:
// float32 logits, the head gradient accumulated in place (no [V, h]
// temporary, in the caching allocator's statistics). Skipped without CUDA.
TEST(ChunkedLossCuda, Bf16UsesTheInPlaceFloat32GemmsAndMatchesFloat64) {
  if (!memory::cuda_available()) GTEST_SKIP() << "no CUDA device";
  const at::Device cuda(at::kCUDA, 0);
  const int64_t T = 300, H = 256, V = 4096;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(8);
  auto f64 = at::TensorOptions().dtype(at::kDouble);
  auto h = at::normal(0, 1, {T, H}, gen, f64).to(at::kBFloat16);
  auto W = at::normal(0, 0.2, {V, H}, gen, f64).to(at::kBFloat16);
  auto targets = at::randint(V, {T}, gen, at::kLong);
  targets.index_put_({7}, train::kIgnoreTarget);
  const double scale = 0.01;
  auto hd = h.to(cuda), Wd = W.to(cuda), td = targets.to(cuda);
  auto dW = at::zeros({V, H}, at::TensorOptions().dtype(at::kFloat).device(cuda));
  memory::reset_peak_memory(cuda);
  const auto before = memory::memory_stats(cuda).allocated;
  auto got = train::chunked_cross_entropy(hd, Wd, td, 16, scale, &dW);
  const int64_t peak = memory::memory_stats(cuda).peak_allocated - before;
  EXPECT_FALSE(train::mixed_gemm_refused()) << "ATen refused an out_dtype GEMM: the portable path ran";
  EXPECT_LT(peak, V * H * 2) << "a [V, h] temporary";

  auto hr = h.to(at::kDouble).set_requires_grad(true);
  auto Wr = W.to(at::kDouble).set_requires_grad(true);
  auto sum = at::cross_entropy_loss(at::matmul(hr, Wr.t()), targets, {}, at::Reduction::Sum,
                                    train::kIgnoreTarget);
  (sum * scale).backward();
  EXPECT_NEAR(got.loss_sum.item<double>(), sum.item<double>(), 1e-5 * std::abs(sum.item<double>()));
  EXPECT_LE(testing::max_rel_error(got.dh.cpu(), hr.grad()), 1e-2);
  EXPECT_LE(testing::max_rel_error(dW.cpu(), Wr.grad()), 1e-2);
}

}  // namespace
}  // namespace memo
