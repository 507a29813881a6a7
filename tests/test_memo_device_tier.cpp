// memo's device tier (plan/swap_split.h, runtime/activation_store.h): where
// the host cannot hold x, o and lse of every swapped unit, the latest units
// keep theirs on the device. In float64, whole layers and chunks: the step's
// loss and gradients are bitwise those of the all-host step, the host pool
// is smaller by exactly the moved units' slots, and the most the store held
// on the device is larger by exactly their bytes.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <string>

#include "float64_steps.h"
#include "model/skeletal.h"
#include "reference.h"
#include "runtime/host_slots.h"
#include "runtime/policy.h"
#include "train/step.h"

namespace memo {
namespace {

struct TierCase {
  int64_t chunk;   // 0: whole layers
  int64_t layers;
};

std::string tier_name(const TierCase& c) { return "c" + std::to_string(c.chunk) + "_l" + std::to_string(c.layers); }

class MemoDeviceTier : public ::testing::TestWithParam<TierCase> {};

TEST_P(MemoDeviceTier, HoldsTheHostsShortfallOnTheDeviceAndChangesNoBit) {
  const auto c = GetParam();
  const int64_t B = 2, S = 12;
  const auto cfg = testing::small_config(4, 2, 4, 20, c.layers, 31);
  // Units of the chunk's full size (12 divides by 4 and 3): the moved ones
  // are half the swapped ones (at least one), as tier_host_budget asks.
  const int64_t unit = c.chunk > 0 ? c.chunk : S;
  const int64_t swapped = c.layers * (S / unit) - 2;
  const int64_t moved = std::max<int64_t>(1, swapped / 2);
  int64_t fixed = 0, slots = 0;  // one unit's x, o, lse: bytes, and their host slots aligned
  for (const auto& s : model::skeletal_specs(cfg, B, unit, at::kDouble))
    if (s.always_offloaded) {
      fixed += s.bytes();
      slots += (s.bytes() + runtime::HostSlots::kAlign - 1) / runtime::HostSlots::kAlign * runtime::HostSlots::kAlign;
    }
  ASSERT_GT(fixed, 0);

  auto run = [&](bool tier, model::LlamaModel& model) {
    runtime::PolicyOptions opts;
    opts.alpha = 0.0;
    opts.chunk_tokens = c.chunk;
    opts.host_memory_bytes = tier ? testing::tier_host_budget(cfg, B, S, c.chunk) + 1 : double(1 << 30);
    // Exactly the tier's bytes: nothing left for resident tokens.
    opts.device_spare_bytes = tier ? static_cast<double>(moved * fixed) : 0.0;
    auto policy = runtime::make_policy("memo", opts);
    policy->prepare(model, B, S);
    const auto batch = testing::batch_of(cfg.vocab_size, B, S, 5);
    auto loss = train::forward_backward(model, *policy, batch, 1.0, 7, nullptr, c.chunk);
    return std::make_pair(loss.total(), policy->peak_held());
  };
  auto host_model = testing::float64_model(cfg);
  auto tier_model = testing::float64_model(cfg);
  const auto [host_loss, host_held] = run(false, host_model);
  const auto [tier_loss, tier_held] = run(true, tier_model);

  EXPECT_EQ(tier_loss, host_loss);
  auto a = tier_model.grads().named();
  auto b = host_model.grads().named();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(at::equal(*a[i].second, *b[i].second)) << a[i].first;

  EXPECT_EQ(host_held.host - tier_held.host, moved * slots);
  EXPECT_EQ(tier_held.device - host_held.device, moved * fixed);
}

INSTANTIATE_TEST_SUITE_P(Units, MemoDeviceTier,
                         ::testing::Values(TierCase{0, 4}, TierCase{0, 5}, TierCase{4, 3}, TierCase{3, 2}),
                         [](const auto& info) { return tier_name(info.param); });

}  // namespace
}  // namespace memo
