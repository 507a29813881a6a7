// On CUDA, a training step from moving the batch through the embedding,
// layers, loss and backward to the optimizer never waits for the device:
// under c10's sync-debug mode set to error (memory::ScopedSyncCheck), every
// policy's step runs without throwing. Skipped without a CUDA device (the GPU
// script runs it: scripts/gpu-first.sh, in memo_gpu_tests).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <optional>

#include "memory/device_memory.h"
#include "memory/sync_check.h"
#include "model/llama.h"
#include "reference.h"
#include "runtime/policy.h"
#include "train/data.h"
#include "train/step.h"

namespace memo {
namespace {

TEST(SyncCheck, AHostSynchronisationThrowsWhileArmed) {
  if (!memory::cuda_available()) GTEST_SKIP() << "no CUDA device";
  auto t = at::ones({4}, at::TensorOptions().device(at::kCUDA));
  {
    memory::ScopedSyncCheck check(t.device());
    ASSERT_TRUE(check.armed()) << "a CUDA device, but memo was built without MEMO_CUDA";
    EXPECT_THROW(t.sum().item<float>(), c10::Error);
  }
  EXPECT_EQ(t.sum().item<float>(), 4.0f);  // disarmed again
}

TEST(SyncCheck, DoesNothingOnTheCpu) {
  memory::ScopedSyncCheck check(at::Device(at::kCPU));
  EXPECT_FALSE(check.armed());
  EXPECT_EQ(at::ones({3}).sum().item<float>(), 3.0f);
}

class SyncFreeStep : public ::testing::TestWithParam<std::string> {};

TEST_P(SyncFreeStep, FromTheBatchToTheOptimizerNothingWaitsForTheDevice) {
  if (!memory::cuda_available()) GTEST_SKIP() << "no CUDA device";
  const at::Device cuda(at::kCUDA, 0);
  const int64_t B = 2, S = 64, V = 256;
  auto cfg = testing::small_config(4, 2, 32, 96, 4, V);  // 4 layers: memo swaps two of them
  model::ModelOptions mo;
  mo.device = cuda;
  mo.compute_dtype = at::kBFloat16;
  mo.master_dtype = at::kFloat;
  mo.seed = 2;
  model::LlamaModel model(cfg, mo);
  runtime::PolicyOptions po;
  po.host_memory_bytes = 1 << 30;
  if (GetParam() == "memo") po.alpha = 0.5;  // some tokens recomputed
  auto policy = runtime::make_policy(GetParam(), po);
  policy->prepare(model, B, S);
  auto data = train::make_synthetic_source({V, 0, 9}, S);
  // The first step is unarmed: one-time set-up (the RoPE table, library
  // handles) may wait; the second is the steady state, armed throughout.
  for (int step = 0; step < 2; ++step) {
    train::LossSum loss;
    {
      std::optional<memory::ScopedSyncCheck> check;
      if (step == 1) {
        check.emplace(cuda);
        ASSERT_TRUE(check->armed());
      }
      auto batch = train::to_device(data->next(B, S), cuda);
      EXPECT_NO_THROW(loss.add(train::forward_backward(model, *policy, batch, 1.0, /*loss_chunk=*/48)))
          << GetParam() << ", step " << step + 1;
    }
    EXPECT_TRUE(std::isfinite(loss.mean()));  // read after the armed region
    model.zero_grads();
  }
}

INSTANTIATE_TEST_SUITE_P(Policies, SyncFreeStep, ::testing::Values("keep", "recompute", "offload", "memo"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace memo
