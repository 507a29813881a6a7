// memo's alpha LP (plan/swap_split.h) with chunked memo's K, V rebuild: the
// inputs each unit copies back once more share the host link with its
// prefetch, and the rebuild's compute is backward time the prefetch can hide
// behind. Pure C++.
#include <gtest/gtest.h>

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

}  // namespace
}  // namespace memo::plan
