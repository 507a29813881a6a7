// The planner's communication counts equal dist's own counters (the ones
// the process-group byte counts are checked against in the multi-rank
// tests): per layer all-to-all bytes against dist::ulysses_layer_bytes, and
// ZeRO gather/scatter bytes against dist::zero_collective_bytes, for GQA
// with kv heads split and replicated, sp 2/4/8 and several world sizes.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>

#include "dist/ulysses.h"
#include "dist/zero.h"
#include "plan/cost_model.h"
#include "plan/hardware.h"

namespace memo {
namespace {

plan::PlanInputs shape(int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t seq_len, int64_t batch) {
  plan::PlanInputs in;
  in.model.name = "gqa";
  in.model.vocab = 1000;
  in.model.hidden = heads * head_dim;
  in.model.layers = 4;
  in.model.heads = heads;
  in.model.kv_heads = kv_heads;
  in.model.head_dim = head_dim;
  in.model.ffn = 3 * heads * head_dim;
  in.seq_len = seq_len;
  in.batch = batch;
  in.hardware = plan::hardware_preset("h200-141gb");
  return in;
}

TEST(PlanCommDist, UlyssesLayerBytesEqualDistsCounter) {
  struct Case {
    int64_t heads, kv_heads, head_dim, seq_len, batch;
  };
  // kv heads split (8 over sp 2, 4, 8) and replicated (2 or 4 kv heads over sp 8).
  for (const Case& c : {Case{32, 8, 128, 65536, 1}, Case{8, 2, 16, 96, 2}, Case{16, 4, 64, 4096, 3},
                        Case{8, 8, 32, 1024, 1}}) {
    for (int64_t sp : {2, 4, 8}) {
      if (c.heads % sp != 0 || (c.kv_heads % sp != 0 && sp % c.kv_heads != 0)) continue;
      for (int compute_bytes : {2, 8}) {
        auto in = shape(c.heads, c.kv_heads, c.head_dim, c.seq_len, c.batch);
        in.parallel.sp = sp;
        in.compute_bytes = compute_bytes;
        const std::string what = "heads " + std::to_string(c.heads) + "/" + std::to_string(c.kv_heads) + " sp " +
                                 std::to_string(sp) + " element " + std::to_string(compute_bytes);
        const auto got = plan::ulysses_layer(in);
        const auto want =
            dist::ulysses_layer_bytes(c.batch, c.seq_len, c.heads, c.kv_heads, c.head_dim, sp, compute_bytes);
        EXPECT_EQ(got.forward, want.forward) << what;
        EXPECT_EQ(got.backward, want.backward) << what;
        EXPECT_EQ(got.q, dist::ulysses_all_to_all_bytes(c.batch, c.seq_len, c.heads, c.head_dim, sp, compute_bytes))
            << what;
        // What memo train's exchange sends (docs/dist.md: token layout between
        // forward and backward): the minimal mirror, plus o and the packed
        // q, k, v again in backward, plus lse both ways; recompute the
        // forward's three once more. memo sends keep's whatever it recomputes.
        const int64_t lse = dist::ulysses_all_to_all_bytes(c.batch, c.seq_len, c.heads, 1, sp,
                                                           std::max(4, compute_bytes));
        EXPECT_EQ(got.lse, lse) << what;
        const int64_t q = got.q, kv = got.kv;
        const int64_t forward = (q + 2 * kv) + q + lse;
        const int64_t keep_layer = want.forward + want.backward + q + (q + 2 * kv) + 2 * lse;
        for (const char* policy : {"keep", "offload", "memo"}) {
          const auto p = plan::comm_plan(in, policy, 0.5, 1.0);
          EXPECT_EQ(p.all_to_all_bytes, static_cast<double>(in.model.layers * keep_layer)) << what << " " << policy;
          EXPECT_EQ(p.all_to_all_calls, in.model.layers * 8) << what << " " << policy;
        }
        const auto recompute = plan::comm_plan(in, "recompute", 0, 1.0);
        EXPECT_EQ(recompute.all_to_all_bytes, static_cast<double>(in.model.layers * (keep_layer + forward))) << what;
        EXPECT_EQ(recompute.all_to_all_calls, in.model.layers * 11) << what;
      }
    }
  }
}

TEST(PlanCommDist, ZeroBytesEqualDistsCounter) {
  for (int64_t dp : {1, 2, 3}) {
    for (int64_t sp : {1, 2, 4, 8}) {
      if (dp * sp == 1) continue;
      auto in = shape(8, 2, 16, 8 * 96, 1);  // small: shards padded unevenly
      in.parallel.sp = sp;
      in.parallel.dp = dp;
      const int world = static_cast<int>(dp * sp);
      ASSERT_EQ(plan::zero_group(in), world);
      const int64_t layer = plan::zero_layer_numel(in.model), rest = plan::zero_rest_numel(in.model);
      ASSERT_EQ(in.model.layers * layer + rest, in.model.total_params());
      auto step = [&](int64_t element) {
        return static_cast<double>(in.model.layers * dist::zero_collective_bytes(layer, world, element) +
                                   dist::zero_collective_bytes(rest, world, element));
      };
      const std::string what = "dp " + std::to_string(dp) + " sp " + std::to_string(sp);
      EXPECT_EQ(plan::zero_collective_bytes(layer, world, 2), dist::zero_collective_bytes(layer, world, 2)) << what;
      in.zero = 3;
      auto z3 = plan::comm_plan(in, "keep", 0, 1.0);
      // Each layer in forward and again in backward; the rest once.
      EXPECT_EQ(z3.all_gather_bytes,
                step(in.compute_bytes) +
                    static_cast<double>(in.model.layers * dist::zero_collective_bytes(layer, world, in.compute_bytes)))
          << what;
      EXPECT_EQ(z3.reduce_scatter_bytes, step(in.master_bytes)) << what;
      in.zero = 1;  // reduce-scattered too (the owner needs only its shard), not all-reduced
      auto z1 = plan::comm_plan(in, "keep", 0, 1.0);
      EXPECT_EQ(z1.reduce_scatter_bytes, step(in.master_bytes)) << what;
      EXPECT_EQ(z1.all_gather_bytes, step(in.compute_bytes)) << what;
      in.zero = 2;
      auto z2 = plan::comm_plan(in, "keep", 0, 1.0);
      EXPECT_EQ(z2.all_gather_bytes, step(in.compute_bytes)) << what;  // after the optimizer step
      EXPECT_EQ(z2.reduce_scatter_bytes, step(in.master_bytes)) << what;
      in.zero = 0;
      auto z0 = plan::comm_plan(in, "keep", 0, 1.0);
      EXPECT_EQ(z0.all_gather_bytes, 0) << what;
      // memo train's stage 0: one ring all-reduce per gradient tensor
      // (dist counts 2 (n - 1)/n of its bytes), then the loss sum and count.
      int64_t want = 0;
      auto ring = [&](int64_t numel, int64_t bytes) { want += 2 * (world - 1) * numel * bytes / world; };
      const auto& m = in.model;
      for (int64_t l = 0; l < m.layers; ++l)
        for (int64_t numel : {m.hidden, (m.heads + 2 * m.kv_heads) * m.head_dim * m.hidden,
                              m.hidden * m.heads * m.head_dim, m.hidden, 2 * m.ffn * m.hidden, m.hidden * m.ffn})
          ring(numel, in.master_bytes);
      ring(m.vocab * m.hidden, in.master_bytes);
      ring(m.hidden, in.master_bytes);
      if (!m.tied_embeddings) ring(m.vocab * m.hidden, in.master_bytes);
      ring(2, 8);
      EXPECT_EQ(z0.all_reduce_bytes, static_cast<double>(want)) << what;
      EXPECT_EQ(z0.zero_calls, 6 * m.layers + (m.tied_embeddings ? 2 : 3) + 1) << what;
    }
  }
}

}  // namespace
}  // namespace memo
