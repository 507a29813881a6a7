// Chunked cross-entropy equals the unchunked loss and gradients, for chunk
// sizes that do and do not divide the token count, in float64 and (with a
// float32 head gradient) bfloat16; a chunk chosen from a memory budget keeps
// the loss phase's measured peak within that budget, and no chunk allocates a
// [vocab, hidden]-sized temporary for the head gradient.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "memory/device_memory.h"
#include "reference.h"
#include "train/loss.h"

namespace memo {
namespace {

class ChunkedLoss : public ::testing::TestWithParam<int64_t> {};

TEST_P(ChunkedLoss, EqualsUnchunkedLossAndGradients) {
  const int64_t T = 23, H = 8, V = 19;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(1);
  auto f64 = at::TensorOptions().dtype(at::kDouble);
  auto h = at::normal(0, 1, {T, H}, gen, f64);
  auto W = at::normal(0, 1, {V, H}, gen, f64);
  auto targets = at::randint(V, {T}, gen, at::kLong);
  targets.index_put_({3}, train::kIgnoreTarget);
  targets.index_put_({17}, train::kIgnoreTarget);
  const double scale = 0.7;

  auto dW = at::zeros_like(W);
  auto got = train::chunked_cross_entropy(h, W, targets, GetParam(), scale, &dW);

  auto hr = h.clone().set_requires_grad(true);
  auto Wr = W.clone().set_requires_grad(true);
  auto sum = at::cross_entropy_loss(at::matmul(hr, Wr.t()), targets, {}, at::Reduction::Sum,
                                    train::kIgnoreTarget);
  (sum * scale).backward();

  EXPECT_EQ(got.loss_sum.scalar_type(), at::kDouble);
  EXPECT_NEAR(got.loss_sum.item<double>(), sum.item<double>(), 1e-12 * std::abs(sum.item<double>()));
  EXPECT_LE(testing::max_rel_error(got.dh, hr.grad()), 1e-12);
  EXPECT_LE(testing::max_rel_error(dW, Wr.grad()), 1e-12);
}

INSTANTIATE_TEST_SUITE_P(ChunkSizes, ChunkedLoss, ::testing::Values(1, 4, 5, 7, 23, 64));

// bfloat16 compute with a float32 head gradient (the training configuration
// on a GPU): each chunk's head-gradient product is added into float32 in
// vocabulary blocks on the CPU; against float64 on the same rounded inputs.
class ChunkedLossBf16 : public ::testing::TestWithParam<int64_t> {};

TEST_P(ChunkedLossBf16, MatchesFloat64WithinBfloat16Rounding) {
  const int64_t T = 37, H = 16, V = 53;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(4);
  auto f64 = at::TensorOptions().dtype(at::kDouble);
  auto h = at::normal(0, 1, {T, H}, gen, f64).to(at::kBFloat16);
  auto W = at::normal(0, 0.5, {V, H}, gen, f64).to(at::kBFloat16);
  auto targets = at::randint(V, {T}, gen, at::kLong);
  targets.index_put_({5}, train::kIgnoreTarget);
  const double scale = 0.3;

  auto dW = at::zeros({V, H}, at::kFloat);
  auto got = train::chunked_cross_entropy(h, W, targets, GetParam(), scale, &dW);

  auto hr = h.to(at::kDouble).set_requires_grad(true);
  auto Wr = W.to(at::kDouble).set_requires_grad(true);
  auto sum = at::cross_entropy_loss(at::matmul(hr, Wr.t()), targets, {}, at::Reduction::Sum,
                                    train::kIgnoreTarget);
  (sum * scale).backward();

  // On the CPU the logits and the gradients pass through bfloat16 once (8
  // bits of mantissa; on CUDA the logits are float32 from the GEMM).
  EXPECT_NEAR(got.loss_sum.item<double>(), sum.item<double>(), 1e-3 * std::abs(sum.item<double>()));
  EXPECT_EQ(got.dh.scalar_type(), at::kBFloat16);
  EXPECT_LE(testing::max_rel_error(got.dh, hr.grad()), 1e-2);
  EXPECT_LE(testing::max_rel_error(dW, Wr.grad()), 1e-2);
}

INSTANTIATE_TEST_SUITE_P(ChunkSizes, ChunkedLossBf16, ::testing::Values(1, 3, 16, 37));

TEST(ChunkedLossNoGrad, ForwardOnlyLeavesGradientUndefined) {
  auto h = at::randn({6, 4});
  auto W = at::randn({9, 4});
  auto t = at::randint(9, {6}, at::kLong);
  auto r = train::chunked_cross_entropy(h, W, t, 4, 0.0, nullptr);
  EXPECT_FALSE(r.dh.defined());
  auto full = at::cross_entropy_loss(at::matmul(h, W.t()), t, {}, at::Reduction::Sum);
  EXPECT_NEAR(r.loss_sum.item<double>(), full.item<double>(), 1e-4);
}

TEST(ChunkedLossBudget, ThousandsOfTokensPerChunkOnAGpuModestOnCpu) {
  // Llama 3's vocabulary in bf16: float32 logits + bf16 gradient = 6 bytes per entry.
  const int64_t V = 128256;
  EXPECT_EQ(train::loss_bytes_per_token(V, at::kBFloat16), 6 * V);
  EXPECT_EQ(train::loss_bytes_per_token(V, at::kFloat), 4 * V);
  EXPECT_EQ(train::loss_bytes_per_token(V, at::kDouble), 8 * V);
  const int64_t gpu = train::default_loss_chunk(V, at::kBFloat16, train::default_loss_budget(at::Device(at::kCUDA, 0)));
  const int64_t cpu = train::default_loss_chunk(V, at::kFloat, train::default_loss_budget(at::Device(at::kCPU)));
  EXPECT_GE(gpu, 4096);
  EXPECT_LE(gpu * 6 * V, 4ll << 30);
  EXPECT_GE(cpu, 256);
  EXPECT_LE(cpu * 4 * V, 256ll << 20);
}

// Bytes the loss phase allocates at its peak beyond what existed before the
// call (h, head, head gradient, targets), by the CPU memory meter.
int64_t loss_phase_peak(const at::Tensor& h, const at::Tensor& W, const at::Tensor& targets, int64_t chunk,
                        at::Tensor& dW) {
  const at::Device cpu(at::kCPU);
  memory::reset_peak_memory(cpu);
  const auto before = memory::memory_stats(cpu).allocated;
  auto r = train::chunked_cross_entropy(h, W, targets, chunk, 0.5, &dW);
  return memory::memory_stats(cpu).peak_allocated - before;
}

TEST(ChunkedLossBudget, MeasuredPeakOfTheLossPhaseStaysWithinTheBudget) {
  memory::install_cpu_memory_meter();
  const int64_t T = 256, H = 64, V = 2000;
  const int64_t budget = 512 << 10;
  for (auto dtype : {at::kBFloat16, at::kFloat, at::kDouble}) {
    auto h = at::randn({T, H}).to(dtype);
    auto W = at::randn({V, H}).to(dtype);
    auto targets = at::randint(V, {T}, at::kLong);
    auto dW = at::zeros({V, H}, dtype == at::kDouble ? at::kDouble : at::kFloat);  // as the trainer's masters
    const int64_t chunk = train::default_loss_chunk(V, dtype, budget);
    ASSERT_LT(chunk, T) << "the test needs several chunks";
    const int64_t dh = T * H * static_cast<int64_t>(c10::elementSize(dtype));  // the returned gradient
    const int64_t small = 16 << 10;  // [chunk]-sized vectors and scalars
    EXPECT_LE(loss_phase_peak(h, W, targets, chunk, dW), budget + dh + small) << c10::toString(dtype);
  }
}

TEST(ChunkedLossBudget, NoVocabularySizedTemporaryPerChunk) {
  memory::install_cpu_memory_meter();
  // bf16 compute, float32 head gradient, 4-token chunks: the head gradient's
  // accumulation must not materialise a [V, h] product (nor its float32 copy).
  const int64_t T = 64, H = 64, V = 4096;
  auto h = at::randn({T, H}).to(at::kBFloat16);
  auto W = at::randn({V, H}).to(at::kBFloat16);
  auto targets = at::randint(V, {T}, at::kLong);
  auto dW = at::zeros({V, H}, at::kFloat);
  const int64_t dh = T * H * 2;
  EXPECT_LT(loss_phase_peak(h, W, targets, 4, dW) - dh, V * H * 2);
}

}  // namespace
}  // namespace memo
