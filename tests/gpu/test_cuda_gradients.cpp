// CUDA-only gradient checks (skipped without a CUDA device): every policy's
// gradients on the GPU against a float64 CPU run of the same model and batch.
// float32 shows the kernels and the stream ordering are right to fp32
// precision; bfloat16 that nothing is grossly wrong at training precision.
// And memo on a short host in chunks: the device tier and the units that
// keep only x (their attention recomputed in backward), on the GPU's streams.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "memory/device_memory.h"
#include "model/llama.h"
#include "model/skeletal.h"
#include "reference.h"
#include "runtime/policy.h"
#include "train/step.h"

namespace memo {
namespace {

// Head dim 64: the fused CUDA kernels need a multiple of 8.
model::ModelConfig config() { return testing::small_config(4, 2, 64, 256, 4, 128); }

// A host short of x, o, lse of 5 of memo's 14 swapped units (4 layers of 4
// chunks of 64 tokens): the spare holds 2 units' (the tier), 3 units keep
// only x. Empty for other policies.
runtime::PolicyOptions short_host_options(int64_t B, at::ScalarType dtype) {
  runtime::PolicyOptions po;
  po.alpha = 0.0;
  po.chunk_tokens = 64;
  double fixed = 0, attention = 0;
  for (const auto& s : model::skeletal_specs(config(), B, po.chunk_tokens, dtype))
    if (s.always_offloaded) {
      fixed += static_cast<double>(s.bytes());
      if (!s.layer_input) attention += static_cast<double>(s.bytes());
    }
  po.host_memory_bytes = (14 - 2) * fixed - 3 * attention + 0.5 * attention;
  po.device_spare_bytes = 2 * fixed;
  return po;
}

std::vector<at::Tensor> grads_on(at::Device dev, at::ScalarType dtype, const std::string& policy_name,
                                 bool short_host = false) {
  model::ModelOptions mo;
  mo.device = dev;
  mo.master_dtype = dtype == at::kBFloat16 ? at::kFloat : dtype;
  mo.compute_dtype = dtype;
  mo.seed = 5;
  model::LlamaModel model(config(), mo);
  const int64_t B = 2, S = 256;
  runtime::PolicyOptions po;
  po.host_memory_bytes = 1 << 30;
  if (policy_name == "memo") po.alpha = 0.5;
  if (short_host) po = short_host_options(B, dtype);
  auto policy = runtime::make_policy(policy_name, po);
  policy->prepare(model, B, S);
  if (short_host) {
    std::string split;
    for (const auto& [k, v] : policy->describe())
      if (k == "split") split = v;
    EXPECT_NE(split.find("on the device for the latest 2 units"), std::string::npos) << split;
    EXPECT_NE(split.find("only x for 3 units"), std::string::npos) << split;
  }
  auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
  train::MicroBatch b{at::randint(128, {B, S}, gen, at::kLong).to(dev),
                      at::randint(128, {B, S}, gen, at::kLong).to(dev)};
  train::forward_backward(model, *policy, b, 1.0, 0, nullptr, short_host ? po.chunk_tokens : 0);
  memory::synchronize(dev);
  std::vector<at::Tensor> out;
  for (auto& [n, t] : model.grads().named()) out.push_back(t->to(at::kCPU, at::kDouble));
  return out;
}

double worst(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& ref) {
  double w = 0;
  for (size_t i = 0; i < a.size(); ++i) w = std::max(w, testing::max_rel_error(a[i], ref[i]));
  return w;
}

TEST(CudaGradients, Float32MatchesCpuFloat64UnderEveryPolicy) {
  if (!memory::cuda_available()) GTEST_SKIP() << "no CUDA device";
  const auto ref = grads_on(at::kCPU, at::kDouble, "keep");
  for (const auto& p : runtime::policy_names())
    EXPECT_LE(worst(grads_on(at::Device(at::kCUDA, 0), at::kFloat, p), ref), 1e-3) << p;
}

TEST(CudaGradients, Bfloat16StaysNearCpuFloat64UnderEveryPolicy) {
  if (!memory::cuda_available()) GTEST_SKIP() << "no CUDA device";
  const auto ref = grads_on(at::kCPU, at::kDouble, "keep");
  for (const auto& p : runtime::policy_names())
    EXPECT_LE(worst(grads_on(at::Device(at::kCUDA, 0), at::kBFloat16, p), ref), 5e-2) << p;
}

TEST(CudaGradients, Float32MemoOnAShortHostMatchesCpuFloat64) {
  if (!memory::cuda_available()) GTEST_SKIP() << "no CUDA device";
  const auto ref = grads_on(at::kCPU, at::kDouble, "keep");
  EXPECT_LE(worst(grads_on(at::Device(at::kCUDA, 0), at::kFloat, "memo", true), ref), 1e-3);
}

}  // namespace
}  // namespace memo
