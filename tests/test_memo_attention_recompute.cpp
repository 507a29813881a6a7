// memo's units that keep only x (plan/swap_split.h, runtime/unit_recompute.h):
// where neither the host nor the device tier can hold x, o and lse of every
// swapped unit, the earliest chunks keep only x on the host and backward
// runs their attention again (against the layer's rebuilt K, V, or its
// --kv-on-host blocks; whole layers on their own). In float64: the step's
// loss and gradients are bitwise those of the all-host step, the host pool
// is smaller by exactly those units' o and lse slots, and the store holds
// nothing more on the device for it.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "float64_steps.h"
#include "model/config.h"
#include "model/skeletal.h"
#include "reference.h"
#include "runtime/host_slots.h"
#include "runtime/policy.h"
#include "train/step.h"

namespace memo {
namespace {

struct XOnlyCase {
  int64_t chunk;     // 0: whole layers
  int64_t layers;
  bool kv_on_host;   // chunked: K, V in host blocks
  bool tier;         // the device spare holds one unit's x, o, lse too
};

std::string case_name(const XOnlyCase& c) {
  return "c" + std::to_string(c.chunk) + "_l" + std::to_string(c.layers) + (c.kv_on_host ? "_kvhost" : "") +
         (c.tier ? "_tier" : "");
}

int64_t aligned(int64_t bytes) {
  return (bytes + runtime::HostSlots::kAlign - 1) / runtime::HostSlots::kAlign * runtime::HostSlots::kAlign;
}

class MemoAttentionRecompute : public ::testing::TestWithParam<XOnlyCase> {};

TEST_P(MemoAttentionRecompute, ChangesNoBitAndLeavesOAndLseOffTheHost) {
  const auto c = GetParam();
  const int64_t B = 2, S = 12;
  const auto cfg = testing::small_config(4, 2, 4, 20, c.layers, 31);  // GQA: 4 query heads, 2 kv heads
  // Every unit of the chunk's full size (12 divides by 4 and 3), so the
  // units keeping only x save the same bytes whichever they are.
  const int64_t unit = c.chunk > 0 ? c.chunk : S;
  const int64_t swapped = c.layers * (S / unit) - 2;
  const int64_t tier = c.tier ? 1 : 0;
  const int64_t x_only = std::max<int64_t>(1, (swapped - tier) / 2);
  ASSERT_GE(swapped - tier, x_only);
  int64_t fixed = 0, attention = 0, attention_slots = 0;  // one unit's x, o, lse; its o, lse; their slots
  for (const auto& s : model::skeletal_specs(cfg, B, unit, at::kDouble))
    if (s.always_offloaded) {
      fixed += s.bytes();
      if (!s.layer_input) {
        attention += s.bytes();
        attention_slots += aligned(s.bytes());
      }
    }
  ASSERT_GT(attention, 0);
  // --kv-on-host: the blocks and accumulators come off memo's budget first.
  const double kv_blocks =
      c.kv_on_host ? static_cast<double>(B * S * 2 * cfg.kv_heads * cfg.head_dim * (8 + 8)) : 0.0;
  // x, o, lse of every swapped unit but the tier's, less x_only units' o
  // and lse, and half a unit's o, lse to spare: exactly x_only units keep only x.
  const double short_budget = static_cast<double>((swapped - tier) * fixed - x_only * attention) +
                              0.5 * static_cast<double>(attention) + kv_blocks;

  auto run = [&](bool short_host, model::LlamaModel& model) {
    runtime::PolicyOptions opts;
    opts.alpha = 0.0;
    opts.chunk_tokens = c.chunk;
    opts.kv_on_host = c.kv_on_host;
    opts.host_memory_bytes = short_host ? short_budget : double(1 << 30);
    opts.device_spare_bytes = short_host && c.tier ? static_cast<double>(fixed) : 0.0;  // no resident tokens
    auto policy = runtime::make_policy("memo", opts);
    policy->prepare(model, B, S);
    const auto batch = testing::batch_of(cfg.vocab_size, B, S, 5);
    auto loss = train::forward_backward(model, *policy, batch, 1.0, 7, nullptr, c.chunk);
    std::string split;
    for (const auto& [k, v] : policy->describe())
      if (k == "split") split = v;
    return std::make_tuple(loss.total(), policy->peak_held(), split);
  };
  auto host_model = testing::float64_model(cfg);
  auto short_model = testing::float64_model(cfg);
  const auto [host_loss, host_held, host_split] = run(false, host_model);
  const auto [short_loss, short_held, short_split] = run(true, short_model);

  EXPECT_EQ(host_split.find("only x"), std::string::npos) << host_split;
  EXPECT_NE(short_split.find("only x for " + std::to_string(x_only) + " units"), std::string::npos) << short_split;
  EXPECT_EQ(short_loss, host_loss);
  auto a = short_model.grads().named();
  auto b = host_model.grads().named();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(at::equal(*a[i].second, *b[i].second)) << a[i].first;

  int64_t fixed_slots = 0;
  for (const auto& s : model::skeletal_specs(cfg, B, unit, at::kDouble))
    if (s.always_offloaded) fixed_slots += aligned(s.bytes());
  EXPECT_EQ(host_held.host - short_held.host, x_only * attention_slots + tier * fixed_slots);
  EXPECT_EQ(short_held.device - host_held.device, tier * fixed);  // o, lse recomputed into the buffers
}

INSTANTIATE_TEST_SUITE_P(Units, MemoAttentionRecompute,
                         ::testing::Values(XOnlyCase{0, 4, false, false}, XOnlyCase{0, 5, false, true},
                                           XOnlyCase{4, 2, false, false}, XOnlyCase{3, 3, false, false},
                                           XOnlyCase{4, 3, false, true}, XOnlyCase{4, 2, true, false},
                                           XOnlyCase{3, 2, true, true}),
                         [](const auto& info) { return case_name(info.param); });

// Chunks of 5 over 12 tokens (5, 5, 2), 2 layers: a host holding only x of
// every swapped unit makes all four keep only x, the short last chunk of
// layer 0 among them (its recompute writes into a strided view of the
// rounding buffer, as its forward did). Bitwise the all-host step, with K, V
// on the device and in --kv-on-host blocks.
TEST(MemoAttentionRecomputeShortChunk, EveryUnitKeepingOnlyXIncludingAShortLastChunk) {
  const int64_t B = 2, S = 12, C = 5;
  const auto cfg = testing::small_config(4, 2, 4, 20, 2, 31);
  double fixed = 0, attention = 0;  // a full unit's x, o, lse and o, lse (what the LP counts)
  for (const auto& s : model::skeletal_specs(cfg, B, C, at::kDouble))
    if (s.always_offloaded) {
      fixed += static_cast<double>(s.bytes());
      if (!s.layer_input) attention += static_cast<double>(s.bytes());
    }
  const int64_t swapped = 2 * 3 - 2;
  for (const bool kv_on_host : {false, true}) {
    SCOPED_TRACE(kv_on_host ? "K, V in host blocks" : "K, V on the device");
    const double kv_blocks =
        kv_on_host ? static_cast<double>(B * S * 2 * cfg.kv_heads * cfg.head_dim * (8 + 8)) : 0.0;
    auto run = [&](bool short_host) {
      auto model = testing::float64_model(cfg);
      runtime::PolicyOptions opts;
      opts.alpha = 0.0;
      opts.chunk_tokens = C;
      opts.kv_on_host = kv_on_host;
      opts.device_spare_bytes = 0;
      opts.host_memory_bytes =
          short_host ? static_cast<double>(swapped) * (fixed - attention) + 0.5 * attention + kv_blocks : double(1 << 30);
      auto policy = runtime::make_policy("memo", opts);
      policy->prepare(model, B, S);
      const auto report = policy->split_report();
      EXPECT_TRUE(report.has_value());
      if (report) EXPECT_EQ(report->attention_recomputed_units, short_host ? swapped : 0);
      const auto batch = testing::batch_of(cfg.vocab_size, B, S, 9);
      const double loss = train::forward_backward(model, *policy, batch, 1.0, 7, nullptr, C).total();
      std::vector<at::Tensor> grads;
      for (const auto& [n, g] : model.grads().named()) grads.push_back(g->clone());
      return std::make_pair(loss, grads);
    };
    const auto [host_loss, host_grads] = run(false);
    const auto [short_loss, short_grads] = run(true);
    EXPECT_EQ(short_loss, host_loss);
    ASSERT_EQ(short_grads.size(), host_grads.size());
    for (size_t i = 0; i < host_grads.size(); ++i) EXPECT_TRUE(at::equal(short_grads[i], host_grads[i])) << i;
  }
}

}  // namespace
}  // namespace memo
