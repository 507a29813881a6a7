// Attention kernel choice by device, dtype and preference (errors before
// anything is allocated), and the grouped-query expansion the float32 CUDA
// kernel needs, checked on CPU against the CPU kernel's own grouped call.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <string>

#include "core/error.h"
#include "model/attention.h"
#include "reference.h"

namespace memo {
namespace {

using model::AttentionKernel;

std::string pick_error(const at::Device& device, at::ScalarType dtype, const std::string& pref) {
  try {
    model::pick_attention_kernel(device, dtype, pref);
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

TEST(AttentionKernelChoice, ByDeviceDtypeAndPreference) {
  const at::Device cpu(at::kCPU), cuda(at::kCUDA, 0);  // naming a device allocates nothing
  for (auto dt : {at::kFloat, at::kDouble, at::kBFloat16})
    EXPECT_EQ(model::pick_attention_kernel(cpu, dt, "auto"), AttentionKernel::CpuFlash);
  EXPECT_EQ(model::pick_attention_kernel(cuda, at::kBFloat16, "auto"), AttentionKernel::CudaCudnn);
  EXPECT_EQ(model::pick_attention_kernel(cuda, at::kHalf, "cudnn"), AttentionKernel::CudaCudnn);
  EXPECT_EQ(model::pick_attention_kernel(cuda, at::kBFloat16, "flash"), AttentionKernel::CudaFlash);
  EXPECT_EQ(model::pick_attention_kernel(cuda, at::kBFloat16, "efficient"),
            AttentionKernel::CudaEfficient);
  EXPECT_EQ(model::pick_attention_kernel(cuda, at::kFloat, "auto"), AttentionKernel::CudaEfficient);
  EXPECT_EQ(model::pick_attention_kernel(cuda, at::kFloat, "efficient"), AttentionKernel::CudaEfficient);
  EXPECT_STREQ(model::attention_kernel_name(AttentionKernel::CudaEfficient), "efficient");
}

TEST(AttentionKernelChoice, RefusesWhatNoKernelTakesNamingWhatWorks) {
  const at::Device cpu(at::kCPU), cuda(at::kCUDA, 0);
  auto msg = pick_error(cuda, at::kFloat, "cudnn");
  EXPECT_NE(msg.find("float32"), std::string::npos) << msg;
  EXPECT_NE(msg.find("bfloat16 or float16"), std::string::npos) << msg;
  EXPECT_NE(msg.find("efficient"), std::string::npos) << msg;
  EXPECT_NE(pick_error(cuda, at::kFloat, "flash").find("efficient"), std::string::npos);
  msg = pick_error(cuda, at::kDouble, "auto");
  EXPECT_NE(msg.find("float64"), std::string::npos) << msg;
  EXPECT_NE(msg.find("bfloat16, float16 or float32"), std::string::npos) << msg;
  msg = pick_error(cpu, at::kFloat, "fast");  // an unknown name is refused on every device
  EXPECT_NE(msg.find("\"fast\""), std::string::npos) << msg;
  EXPECT_NE(msg.find("auto, cudnn, flash or efficient"), std::string::npos) << msg;
}

// k and v repeated to nh heads and dk, dv summed back over each group give
// what the grouped kernel gives, forward and backward.
TEST(AttentionExpansion, EqualsTheGroupedKernelInFloat64) {
  struct Case { int64_t B, S, nh, nkv, d; };
  for (const auto& c : {Case{2, 9, 4, 2, 8}, Case{1, 16, 8, 2, 4}, Case{3, 5, 6, 1, 6}}) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(21);
    const auto f64 = at::TensorOptions().dtype(at::kDouble);
    // q, k, v as views into one token-major qkv tensor, as the layer passes them.
    auto qkv = at::normal(0.0, 1.0, {c.B, c.S, c.nh + 2 * c.nkv, c.d}, gen, f64);
    auto q = qkv.narrow(2, 0, c.nh).transpose(1, 2);
    auto k = qkv.narrow(2, c.nh, c.nkv).transpose(1, 2);
    auto v = qkv.narrow(2, c.nh + c.nkv, c.nkv).transpose(1, 2);
    auto d_o = at::normal(0.0, 1.0, {c.B, c.S, c.nh, c.d}, gen, f64).transpose(1, 2);

    auto want = model::attention_forward(AttentionKernel::CpuFlash, q, k, v);
    auto got = model::attention_forward_expanded(AttentionKernel::CpuFlash, q, k, v);
    EXPECT_LE(testing::max_rel_error(got.o, want.o), 1e-13);
    EXPECT_LE(testing::max_rel_error(got.lse, want.lse), 1e-13);
    auto gw = model::attention_backward(AttentionKernel::CpuFlash, d_o, q, k, v, want.o, want.lse);
    auto gg = model::attention_backward_expanded(AttentionKernel::CpuFlash, d_o, q, k, v, want.o, want.lse);
    EXPECT_EQ(gg.dk.sizes(), k.sizes());
    EXPECT_EQ(gg.dv.sizes(), v.sizes());
    EXPECT_LE(testing::max_rel_error(gg.dq, gw.dq), 1e-12) << "dq, nh " << c.nh << " nkv " << c.nkv;
    EXPECT_LE(testing::max_rel_error(gg.dk, gw.dk), 1e-12) << "dk, nh " << c.nh << " nkv " << c.nkv;
    EXPECT_LE(testing::max_rel_error(gg.dv, gw.dv), 1e-12) << "dv, nh " << c.nh << " nkv " << c.nkv;
  }
}

}  // namespace
}  // namespace memo
