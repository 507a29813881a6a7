// The planner's communication per rank per step (plan::comm_plan), by its
// properties: Ulysses' all-to-alls grow linearly with the sequence and ZeRO's
// collectives do not; the ZeRO stage changes the gathers and scatters, never
// the all-to-alls; a group within one host is timed on the intra-host link,
// a larger one on the inter-host link; one rank communicates nothing; the
// exposed communication is inside the step time.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/error.h"
#include "plan/cost_model.h"

namespace memo::plan {
namespace {

const std::vector<std::string> kPolicies = {"keep", "recompute", "offload", "memo"};

// Llama-3-8B's shape (config.json of meta-llama/Meta-Llama-3-8B), bfloat16, on H200s.
PlanInputs llama_8b(int64_t seq_len, int64_t sp, int64_t dp, int zero = -1) {
  PlanInputs in;
  in.model.name = "llama3-8b";
  in.model.vocab = 128256;
  in.model.hidden = 4096;
  in.model.layers = 32;
  in.model.heads = 32;
  in.model.kv_heads = 8;
  in.model.head_dim = 128;
  in.model.ffn = 14336;
  in.seq_len = seq_len;
  in.parallel.sp = sp;
  in.parallel.dp = dp;
  in.zero = zero;
  in.hardware = hardware_preset("h200-141gb");
  return in;
}

TEST(CommPlan, AllToAllBytesGrowLinearlyWithTheSequenceZeroBytesDoNot) {
  for (const auto& policy : kPolicies) {
    const auto a = comm_plan(llama_8b(65536, 8, 2, 3), policy, 0.5, 1.0);
    const auto b = comm_plan(llama_8b(4 * 65536, 8, 2, 3), policy, 0.5, 1.0);
    EXPECT_GT(a.all_to_all_bytes, 0) << policy;
    EXPECT_DOUBLE_EQ(b.all_to_all_bytes, 4.0 * a.all_to_all_bytes) << policy;
    EXPECT_GT(a.all_gather_bytes, 0) << policy;
    EXPECT_EQ(b.all_gather_bytes, a.all_gather_bytes) << policy;
    EXPECT_EQ(b.reduce_scatter_bytes, a.reduce_scatter_bytes) << policy;
  }
}

TEST(CommPlan, ZeroStageChangesGathersAndScattersNotAllToAlls) {
  for (const auto& policy : kPolicies) {
    const auto z0 = comm_plan(llama_8b(65536, 8, 1, 0), policy, 0.3, 1.0);
    const auto z3 = comm_plan(llama_8b(65536, 8, 1, 3), policy, 0.3, 1.0);
    EXPECT_EQ(z0.all_to_all_bytes, z3.all_to_all_bytes) << policy;
    EXPECT_EQ(z0.all_gather_bytes, 0) << policy;
    EXPECT_GT(z0.all_reduce_bytes, 0) << policy;  // sp ranks hold partial gradients of the same weights
    EXPECT_EQ(z0.reduce_scatter_bytes, 0) << policy;
    EXPECT_GT(z3.all_gather_bytes, 0) << policy;
    EXPECT_GT(z3.reduce_scatter_bytes, 0) << policy;
    // Only the loss sum and count and the clipping norm: three float64 values.
    EXPECT_GT(z3.all_reduce_bytes, 0) << policy;
    EXPECT_LE(z3.all_reduce_bytes, 2 * 3 * 8) << policy;
  }
}

TEST(CommPlan, OneRankOrNoSplitCommunicatesNothing) {
  const auto single = llama_8b(65536, 1, 1);
  EXPECT_EQ(zero_stage(single), 0);
  for (const auto& policy : kPolicies) {
    const auto c = comm_plan(single, policy, 0.5, 1.0);
    EXPECT_EQ(c.bytes(), 0) << policy;
    EXPECT_EQ(c.exposed_s, 0) << policy;
  }
  // dp only: ZeRO but no all-to-all; sp only with the default stage: both.
  const auto dp = comm_plan(llama_8b(65536, 1, 4), "keep", 0, 1.0);
  EXPECT_EQ(dp.all_to_all_bytes, 0);
  EXPECT_GT(dp.all_gather_bytes, 0);
  const auto sp = comm_plan(llama_8b(65536, 4, 1), "keep", 0, 1.0);
  EXPECT_GT(sp.all_to_all_bytes, 0);
  EXPECT_GT(sp.reduce_scatter_bytes, 0);
}

TEST(CommPlan, AGroupWithinOneHostUsesTheIntraHostLinkAcrossHostsTheInterHostLink) {
  auto in = llama_8b(65536, 8, 1, 3);
  in.hardware.collective_latency_s = 0;
  in.hardware.gpus_per_host = 8;
  const auto within = comm_plan(in, "keep", 0, 1e9);
  EXPECT_DOUBLE_EQ(within.all_to_all_s, within.all_to_all_bytes / in.hardware.intra_host_bytes_per_s);
  EXPECT_DOUBLE_EQ(within.zero_s, (within.all_gather_bytes + within.reduce_scatter_bytes + within.all_reduce_bytes) /
                                      in.hardware.intra_host_bytes_per_s);
  in.hardware.gpus_per_host = 4;
  const auto across = comm_plan(in, "keep", 0, 1e9);
  EXPECT_EQ(across.all_to_all_bytes, within.all_to_all_bytes);
  EXPECT_DOUBLE_EQ(across.all_to_all_s, across.all_to_all_bytes / in.hardware.inter_host_bytes_per_s);
  EXPECT_GT(across.all_to_all_s, within.all_to_all_s);
}

TEST(CommPlan, PoliciesSendWhatTheyRecompute) {
  const auto in = llama_8b(65536, 8, 1);
  const auto keep = comm_plan(in, "keep", 0, 1.0);
  EXPECT_EQ(comm_plan(in, "offload", 0, 1.0).all_to_all_bytes, keep.all_to_all_bytes);
  EXPECT_GT(comm_plan(in, "recompute", 0, 1.0).all_to_all_bytes, keep.all_to_all_bytes);
  // memo recomputes its dropped tokens from its own x and o (every skeletal
  // tensor lives in token layout, docs/dist.md): nothing more moves,
  // whatever share it recomputes.
  for (double recomputed : {0.0, 0.5, 1.0})
    EXPECT_EQ(comm_plan(in, "memo", recomputed, 1.0).all_to_all_bytes, keep.all_to_all_bytes) << recomputed;
}

TEST(CommPlan, ZeroOverlapsComputeAllToAllsAreExposed) {
  auto in = llama_8b(65536, 8, 1, 3);
  const auto hidden = comm_plan(in, "keep", 0, 1e9);
  EXPECT_DOUBLE_EQ(hidden.exposed_s, hidden.all_to_all_s);
  const auto bare = comm_plan(in, "keep", 0, 0);
  EXPECT_DOUBLE_EQ(bare.exposed_s, bare.all_to_all_s + bare.zero_s);
}

TEST(CommPlan, StepTimeIncludesTheExposedCommunication) {
  auto one = llama_8b(131072, 8, 1, 3);
  const Plan pl = make_plan(one);
  for (const auto& p : pl.policies) {
    EXPECT_GT(p.comm.exposed_s, 0) << p.policy;
    EXPECT_NEAR(p.step_s, p.matmul_s + p.attention_s + p.recompute_s + p.exposed_copy_s + p.comm.exposed_s,
                1e-12 * p.step_s)
        << p.policy;
  }
  // A slower inter-host link (the group now spans two hosts) lowers MFU.
  one.hardware.gpus_per_host = 4;
  const Plan slow = make_plan(one);
  EXPECT_LT(slow.policy("keep").mfu, pl.policy("keep").mfu);
}

TEST(CommPlan, HigherZeroStagesHoldLessStaticMemory) {
  double last = 0;
  for (int zero : {3, 2, 1, 0}) {
    const Plan pl = make_plan(llama_8b(65536, 8, 1, zero));
    const double stat = pl.weight_bytes + pl.grad_bytes + pl.optimizer_bytes;
    EXPECT_GT(stat, last) << zero;
    last = stat;
  }
  // One rank: the stage changes nothing.
  EXPECT_EQ(make_plan(llama_8b(65536, 1, 1, 3)).weight_bytes, make_plan(llama_8b(65536, 1, 1, 0)).weight_bytes);
}

TEST(CommPlan, BadLinkFiguresAndZeroStageAreInputErrors) {
  auto in = llama_8b(65536, 8, 1);
  in.hardware.intra_host_bytes_per_s = 0;
  EXPECT_THROW(make_plan(in), InputError);
  in = llama_8b(65536, 8, 1);
  in.hardware.collective_latency_s = -1;
  EXPECT_THROW(make_plan(in), InputError);
  in = llama_8b(65536, 8, 1, 4);
  try {
    make_plan(in);
    FAIL() << "zero 4 accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("--zero"), std::string::npos) << e.what();
  }
}

TEST(CommPlan, EveryPresetHasLinkFigures) {
  for (const auto& name : hardware_names()) {
    const auto hw = hardware_preset(name);
    EXPECT_NO_THROW(hw.validate()) << name;
    EXPECT_GT(hw.intra_host_bytes_per_s, hw.inter_host_bytes_per_s) << name;
  }
}

}  // namespace
}  // namespace memo::plan
