// CUDA-only checks of chunked attention (skipped without a CUDA device): on
// each fused kernel, chunked o, lse, dq, dk, dv against the same kernel
// unchunked and both against the CPU kernel in float64 on the same (rounded)
// inputs. The CPU tests (tests/test_chunked_attention.cpp) show the algorithm
// exact; these show the CUDA kernels take the non-causal rectangular blocks,
// the strided chunk views and the merged o and lse the way the CPU one does
// (cuDNN's [B, H, S, 1] lse, the efficient kernel's padded lse and its GQA
// expansion included).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "memory/device_memory.h"
#include "model/chunked_attention.h"
#include "reference.h"

namespace memo {
namespace {

using model::AttentionKernel;

struct Case {
  AttentionKernel kernel;
  at::ScalarType dtype;
  double abs_tol;    // error vs float64 allowed in any case
  double extra_tol;  // error chunking may add to the unchunked kernel's
};

void check_kernel(const Case& kc) {
  const at::Device dev(at::kCUDA, 0);
  // Head dim 64 (the fused kernels want a multiple of 8), GQA 8 over 2.
  const int64_t B = 2, S = 512, nh = 8, nkv = 2, d = 64;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(19);
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  // Rounded to the compute dtype first, so float64 sees the same values.
  auto qkv64 = at::normal(0.0, 0.5, {B, S, nh + 2 * nkv, d}, gen, f64).to(kc.dtype).to(at::kDouble);
  auto do64 = at::normal(0.0, 1.0, {B, S, nh, d}, gen, f64).to(kc.dtype).to(at::kDouble);
  auto split = [&](const at::Tensor& qkv) {
    return std::vector<at::Tensor>{qkv.narrow(2, 0, nh).transpose(1, 2),
                                   qkv.narrow(2, nh, nkv).transpose(1, 2),
                                   qkv.narrow(2, nh + nkv, nkv).transpose(1, 2)};
  };
  auto r64 = split(qkv64);
  auto ref = model::attention_forward(AttentionKernel::CpuFlash, r64[0], r64[1], r64[2]);
  auto gref = model::attention_backward(AttentionKernel::CpuFlash, do64.transpose(1, 2), r64[0],
                                        r64[1], r64[2], ref.o, ref.lse);

  auto qkv = qkv64.to(dev, kc.dtype);
  auto d_o = do64.to(dev, kc.dtype).transpose(1, 2);  // [B, nh, S, d]
  auto in = split(qkv);
  auto whole = model::attention_forward(kc.kernel, in[0], in[1], in[2]);
  auto gw = model::attention_backward(kc.kernel, d_o, in[0], in[1], in[2], whole.o, whole.lse);

  using Sizes = std::pair<int64_t, int64_t>;  // chunk, kv_block
  for (const auto& [chunk, kv_block] :
       {Sizes{128, model::kWholePrefix}, Sizes{200, model::kWholePrefix}, Sizes{96, 160}}) {
    const std::string at_ = std::string(model::attention_kernel_name(kc.kernel)) + " chunk " +
                            std::to_string(chunk) + " kv_block " + std::to_string(kv_block);
    auto out = model::chunked_attention_forward(kc.kernel, in[0], in[1], in[2], chunk, kv_block);
    auto g = model::chunked_attention_backward(kc.kernel, d_o, in[0], in[1], in[2], out.o, out.lse,
                                               chunk, kv_block);
    memory::synchronize(dev);
    const std::vector<std::tuple<const char*, at::Tensor, at::Tensor, at::Tensor>> rows = {
        {"o", out.o, whole.o, ref.o}, {"lse", out.lse, whole.lse, ref.lse},
        {"dq", g.dq, gw.dq, gref.dq}, {"dk", g.dk, gw.dk, gref.dk},
        {"dv", g.dv, gw.dv, gref.dv}};
    for (const auto& [name, got, unchunked, want] : rows) {
      ASSERT_EQ(got.sizes(), want.sizes()) << name << ", " << at_;
      const double err = testing::max_rel_error(got.cpu(), want);
      const double base = testing::max_rel_error(unchunked.cpu(), want);
      EXPECT_LE(err, kc.abs_tol) << name << ", " << at_;
      EXPECT_LE(err, base + kc.extra_tol) << name << ", " << at_ << " (unchunked " << base << ")";
    }
  }
}

TEST(CudaChunkedAttention, Bfloat16CudnnMatchesUnchunked) {
  if (!memory::cuda_available()) GTEST_SKIP() << "no CUDA device";
  check_kernel({AttentionKernel::CudaCudnn, at::kBFloat16, 5e-2, 1e-2});
}

TEST(CudaChunkedAttention, Bfloat16FlashMatchesUnchunked) {
  if (!memory::cuda_available()) GTEST_SKIP() << "no CUDA device";
  check_kernel({AttentionKernel::CudaFlash, at::kBFloat16, 5e-2, 1e-2});
}

TEST(CudaChunkedAttention, Float32EfficientMatchesUnchunked) {
  if (!memory::cuda_available()) GTEST_SKIP() << "no CUDA device";
  check_kernel({AttentionKernel::CudaEfficient, at::kFloat, 1e-3, 2e-5});
}

}  // namespace
}  // namespace memo
