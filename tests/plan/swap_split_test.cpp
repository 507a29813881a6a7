// memo's alpha LP (plan/swap_split.h) with chunked memo's K, V rebuild: the
// inputs each unit copies back once more share the host link with its
// prefetch, and the rebuild's compute is backward time the prefetch can hide
// behind. And the device tier: where even x, o, lse of every swapped unit
// do not fit the host, memo holds the latest units' on the device, and
// where the spare cannot hold enough of them, units keep only x (their
// attention recomputed in backward), the earliest chunks first. Pure C++.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/error.h"

#include "plan/swap_split.h"

namespace memo::plan {
namespace {

// A unit whose prefetch the link bounds: 1 GB/s, 10 ms of backward, 2 MB of
// x, o, lse, 20 MB of the rest.
SplitInputs bandwidth_bound() {
  SplitInputs in;
  in.layers = 8;
  in.seq_len = 1000;
  in.fixed_bytes = 2e6;
  in.rest_bytes = 20e6;
  in.forward_s = 1.0;  // copy-out never binds here
  in.backward_s = 10e-3;
  in.recompute_s = 5e-3;
  in.d2h_bytes_per_s = 1e9;
  in.h2d_bytes_per_s = 1e9;
  return in;
}

// The message of the InputError choose_split(in) throws; a test failure and
// "" when it throws none.
std::string split_error(const SplitInputs& in) {
  try {
    choose_split(in);
  } catch (const InputError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected InputError";
  return {};
}

TEST(SwapSplit, TheKvRebuildSharesTheLinkAndTheBackward) {
  const auto plain = choose_split(bandwidth_bound());
  EXPECT_EQ(plain.limited_by, "bandwidth");
  EXPECT_NEAR(plain.alpha, (1e9 * 10e-3 - 2e6) / 20e6, 1e-3);  // 0.4

  // 1 MB of inputs back per unit and no time to hide them in: less alpha.
  auto in = bandwidth_bound();
  in.rebuild_h2d_bytes = 1e6;
  const auto copies = choose_split(in);
  EXPECT_NEAR(copies.alpha, (1e9 * 10e-3 - 2e6 - 1e6) / 20e6, 1e-3);  // 0.35
  EXPECT_NEAR(copies.copy_in_s, (2e6 + copies.alpha * 20e6 + 1e6) / 1e9, 1e-9);

  // The rebuild's own compute (1 ms per unit) hides a millisecond of copies.
  in.rebuild_s = 1e-3;
  const auto both = choose_split(in);
  EXPECT_NEAR(both.alpha, (1e9 * 11e-3 - 2e6 - 1e6) / 20e6, 1e-3);  // 0.4
  EXPECT_GT(both.alpha, copies.alpha);
}

// 8 units, 6 swapped (memo keeps the last two in their buffers), 2 MB of
// x, o, lse each; the host holds 3.5 units' worth.
SplitInputs host_short() {
  SplitInputs in = bandwidth_bound();
  in.host_bytes = 3.5 * in.fixed_bytes;
  in.device_spare_bytes = 100e6;
  return in;
}

// Short by 2.5 units' x, o, lse: exactly 3 units, the latest swapped ones
// (4, 5), hold theirs on the device, the other 3 fit the host, alpha is 0.
TEST(SwapSplit, TheHostsShortfallGoesToTheLatestSwappedUnits) {
  const auto c = choose_split(host_short());
  EXPECT_EQ(c.fixed_on_device_units, 3);
  EXPECT_DOUBLE_EQ(c.fixed_on_device_bytes, 3 * 2e6);
  EXPECT_EQ(c.alpha, 0.0);
  EXPECT_EQ(c.limited_by, "host memory");
  EXPECT_DOUBLE_EQ(c.host_bytes, 3 * 2e6);
  EXPECT_LE(c.host_bytes, host_short().host_bytes);
  for (int64_t i = 0; i < 8; ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(c.layers[static_cast<size_t>(i)].fixed_on_device, i >= 3 && i < 6);
    EXPECT_EQ(c.layers[static_cast<size_t>(i)].swapped, i < 6);
  }
  // The resident share takes only what the tier left of the spare.
  EXPECT_NEAR(c.resident, (100e6 - 6e6) / (6 * 20e6), 1e-3);
}

// Host and spare together short: the error names both; an explicit alpha
// above 0 and offload never use the tier.
TEST(SwapSplit, TheTierIsBoundedByTheSpareAndOnlyForMemo) {
  auto in = host_short();
  in.device_spare_bytes = 4e6;  // two units' worth, three needed
  const std::string what = split_error(in);
  EXPECT_NE(what.find("host memory too small"), std::string::npos) << what;
  EXPECT_NE(what.find("the device's spare"), std::string::npos) << what;
  in = host_short();
  in.alpha = 0.2;
  EXPECT_THROW(choose_split(in), InputError);
  in.alpha = 0.0;
  EXPECT_EQ(choose_split(in).fixed_on_device_units, 3);
  in = host_short();
  in.swap_last_two = true;  // offload: its message says it keeps every tensor
  in.alpha = 1.0;
  const std::string offload = split_error(in);
  EXPECT_NE(offload.find("offload keeps every skeletal tensor of its 8 layers"), std::string::npos) << offload;
  // A host that fits: no tier.
  in = host_short();
  in.host_bytes = 6 * 2e6;
  EXPECT_EQ(choose_split(in).fixed_on_device_units, 0);
}


// The spare holds 2 of the 3 units the host is short of (5 MB): the third's
// 1 MB left is made up by one unit keeping only x (o, lse: 1.2 MB), chunk 0
// of layer 0 (8 units: 4 layers of 2 chunks), which keeps no resident tokens.
TEST(SwapSplit, WhatTheSpareCannotHoldUnitsKeepingOnlyXMakeUp) {
  auto in = host_short();
  in.device_spare_bytes = 4e6 + 1.2e6;  // two units' x, o, lse and some resident tokens
  in.attention_bytes = 1.2e6;
  in.chunks_per_layer = 2;
  const auto c = choose_split(in);
  EXPECT_EQ(c.fixed_on_device_units, 2);
  EXPECT_EQ(c.attention_recomputed_units, 1);
  EXPECT_DOUBLE_EQ(c.attention_recomputed_bytes, 1.2e6);
  EXPECT_DOUBLE_EQ(c.host_bytes, 4 * 2e6 - 1.2e6);
  EXPECT_LE(c.host_bytes, in.host_bytes);
  for (int64_t i = 0; i < 8; ++i) {
    SCOPED_TRACE(i);
    const auto& l = c.layers[static_cast<size_t>(i)];
    EXPECT_EQ(l.fixed_on_device, i == 4 || i == 5);
    EXPECT_EQ(l.attention_recomputed, i == 0);
    if (l.swapped && !l.attention_recomputed) EXPECT_GT(l.resident_tokens, 0);  // the spare's 1.2 MB left
  }
  EXPECT_EQ(c.layers[0].resident_tokens, 0);
  // A backward of 1 ms hides 1 ms of each plain unit's 2 ms prefetch; the
  // tier's copy nothing, the unit keeping only x 0.8 ms: 3 plain units, 3 ms.
  auto slow = in;
  slow.backward_s = 1e-3;
  slow.recompute_s = 0;
  EXPECT_NEAR(choose_split(slow).exposed_copy_s, 3e-3, 1e-9);
  // Without attention_bytes (sp > 1, offload) the same host is too short.
  in.attention_bytes = 0;
  EXPECT_THROW(choose_split(in), InputError);
}

// No spare: 3 layers of 4 chunks, 10 units swapped. Short by 3.5 MB, three
// units keep only x: chunk 0 of each layer (units 0, 4, 8); by 4.5 MB, four:
// then chunk 1 of layer 0 (unit 1).
TEST(SwapSplit, UnitsKeepingOnlyXAreTheEarliestChunksOfEveryLayer) {
  SplitInputs in = bandwidth_bound();
  in.layers = 12;
  in.chunks_per_layer = 4;
  in.attention_bytes = 1.2e6;
  in.device_spare_bytes = 0;
  auto marked = [&](double short_by) {
    in.host_bytes = 10 * in.fixed_bytes - short_by;
    const auto c = choose_split(in);
    std::vector<int64_t> units;
    for (int64_t i = 0; i < in.layers; ++i)
      if (c.layers[static_cast<size_t>(i)].attention_recomputed) units.push_back(i);
    EXPECT_EQ(static_cast<int64_t>(units.size()), c.attention_recomputed_units);
    EXPECT_EQ(c.fixed_on_device_units, 0);
    EXPECT_LE(c.host_bytes, in.host_bytes);
    return units;
  };
  EXPECT_EQ(marked(3.5e6), (std::vector<int64_t>{0, 4, 8}));
  EXPECT_EQ(marked(4.5e6), (std::vector<int64_t>{0, 1, 4, 8}));
  // Every swapped unit keeping only x saves 12 MB; 12.5 MB short cannot
  // fit, and the message says by how much.
  in.host_bytes = 10 * in.fixed_bytes - 12.5e6;
  const std::string what = split_error(in);
  EXPECT_NE(what.find("keeping only x of every other unit"), std::string::npos) << what;
}

}  // namespace
}  // namespace memo::plan
