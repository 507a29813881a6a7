// memo's alpha LP (plan/swap_split.h) with chunked memo's K, V rebuild: the
// inputs each unit copies back once more share the host link with its
// prefetch, and the rebuild's compute is backward time the prefetch can hide
// behind. And the device tier: where even x, o, lse of every swapped unit
// do not fit the host, memo holds the latest units' on the device. Pure C++.
#include <gtest/gtest.h>

#include <string>

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
  try {
    choose_split(in);
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("host memory too small"), std::string::npos) << what;
    EXPECT_NE(what.find("the device's spare"), std::string::npos) << what;
  }
  in = host_short();
  in.alpha = 0.2;
  EXPECT_THROW(choose_split(in), InputError);
  in.alpha = 0.0;
  EXPECT_EQ(choose_split(in).fixed_on_device_units, 3);
  in = host_short();
  in.swap_last_two = true;  // offload
  in.alpha = 1.0;
  EXPECT_THROW(choose_split(in), InputError);
  // A host that fits: no tier.
  in = host_short();
  in.host_bytes = 6 * 2e6;
  EXPECT_EQ(choose_split(in).fixed_on_device_units, 0);
}

}  // namespace
}  // namespace memo::plan
