// memo's device tier (plan/swap_split.h, runtime/activation_store.h): where
// the host cannot hold x, o and lse of every swapped unit, the latest units
// keep theirs on the device. In float64, whole layers and chunks: the step's
// loss and gradients are bitwise those of the all-host step, the host pool
// is smaller by exactly the moved units' slots, and the most the store held
// on the device is larger by exactly their bytes. And --chunk-tokens auto on
// CUDA leaves the device room for what the run's host budget cannot hold.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <string>

#include "float64_steps.h"
#include "model/config.h"
#include "model/skeletal.h"
#include "plan/chunk_plan.h"
#include "reference.h"
#include "runtime/host_slots.h"
#include "runtime/policy.h"
#include "train/chunking.h"
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

// Llama-3.2-1B at 1M tokens under memo on an H200-sized CUDA device (the
// resolution is pure: no device is touched) with a 100 GiB host budget: memo
// needs ~122 GiB of host for x, o, lse, more than the tier can take at the
// device's largest chunk, so the auto chunk is the shortest giving the fewest
// chunks per layer that fit with the tier and no recompute beyond the rule's
// bound (here: none), smaller than with an unbounded host; one chunk fewer
// would recompute more than that. On CPU (no tier at run time) the budget changes nothing.
TEST(MemoDeviceTierAuto, TheAutoChunkLeavesRoomForTheTier) {
  constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
  train::ChunkContext ctx;
  ctx.config = model::resolve_model("llama3.2-1b");
  ctx.batch = 1;
  ctx.seq_len = 1 << 20;
  ctx.policy = "memo";
  ctx.device = c10::Device(c10::DeviceType::CUDA, 0);
  ctx.compute_dtype = at::kBFloat16;
  ctx.device_bytes = 140.4 * kGiB;
  const int64_t unbounded = train::resolve_chunk_tokens({true, 0}, ctx);
  ctx.host_budget_bytes = 100 * kGiB;
  const int64_t bounded = train::resolve_chunk_tokens({true, 0}, ctx);
  ASSERT_GT(bounded, 0);
  EXPECT_LT(bounded, unbounded);
  const auto in = train::chunk_plan_inputs(ctx);
  EXPECT_DOUBLE_EQ(in.hardware.host_share(), 100 * kGiB);
  const auto m = plan::chunk_memory(in, "memo", bounded);
  EXPECT_GT(m.fixed_on_device_units, 0);
  EXPECT_EQ(m.attention_recomputed_units, 0);
  EXPECT_TRUE(m.fits()) << m.device_bytes / kGiB << " GiB device, " << m.host_bytes / kGiB << " GiB host";
  EXPECT_EQ(bounded, ((ctx.seq_len + m.chunks - 1) / m.chunks + 1023) / 1024 * 1024);  // balanced chunks
  // One chunk fewer per layer recomputes more than the rule allows (or does not fit).
  const int64_t fewer = ((ctx.seq_len + m.chunks - 2) / (m.chunks - 1) + 1023) / 1024 * 1024;
  const auto f = plan::chunk_memory(in, "memo", fewer);
  const double bound = std::max(0.02 * plan::step_attention_flops(in),
                                1.1 * plan::chunk_memory(in, "memo", 1024).attention_recompute_flops);
  EXPECT_FALSE(f.fits() && f.attention_recompute_flops <= bound) << fewer;
  ctx.device = c10::Device(c10::DeviceType::CPU);
  const int64_t cpu_bounded = train::resolve_chunk_tokens({true, 0}, ctx);
  ctx.host_budget_bytes = 0;
  EXPECT_EQ(cpu_bounded, train::resolve_chunk_tokens({true, 0}, ctx));
}

}  // namespace
}  // namespace memo
