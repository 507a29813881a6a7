// The request profiler, the bi-level plan and the planned allocator on CPU:
// plans validate with the independent DSA validator, profiling is
// deterministic so a plan replays to identical offsets, training with the
// planned arena gives bitwise-identical losses, a changed shape re-plans, and
// requests the plan did not expect are served elsewhere and counted.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "cli_runner.h"
#include "core/error.h"
#include "memory/planned_allocator.h"
#include "model/llama.h"
#include "plan/bilevel.h"
#include "plan/dsa_validate.h"
#include "reference.h"
#include "runtime/policy.h"
#include "train/memory_planning.h"
#include "train/step.h"
#include "train/trainer.h"

namespace memo {
namespace {

struct Rig {
  model::LlamaModel model;
  std::unique_ptr<runtime::ActivationPolicy> policy;
  train::MicroBatch batch;
};

Rig make_rig(const std::string& policy, int64_t seq) {
  auto cfg = testing::small_config(4, 2, 8, 48, 4, 64);
  model::LlamaModel m(cfg, {});
  runtime::PolicyOptions po;
  po.alpha = 0.4;
  po.host_memory_bytes = 1 << 28;
  auto p = runtime::make_policy(policy, po);
  p->prepare(m, 2, seq);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
  train::MicroBatch b{at::randint(64, {2, seq}, gen, at::kLong), at::randint(64, {2, seq}, gen, at::kLong)};
  return {std::move(m), std::move(p), b};
}

plan::RequestTrace profile_step(Rig& rig) {
  auto& a = memory::PlannedAllocator::install();
  a.start_recording();
  a.begin_step();
  train::forward_backward(rig.model, *rig.policy, rig.batch, 1.0);
  rig.model.zero_grads();
  a.end_step();
  return a.stop_recording();
}

TEST(MemoryPlan, ProfiledStepPlanValidatesWithTheDsaValidator) {
  auto rig = make_rig("memo", 24);
  profile_step(rig);  // warm-up: lazy one-off allocations
  auto trace = profile_step(rig);
  ASSERT_GT(trace.requests.size(), 50u);
  auto plan = train::plan_profiled_step(trace, 64);
  plan::Problem flat;
  plan::Offsets offsets;
  plan::flatten(trace, plan, flat, offsets);
  auto v = plan::validate(flat, offsets, plan.arena_bytes);
  EXPECT_TRUE(v.ok()) << v.summary();
  for (const auto& l1 : plan.level1) {
    auto v1 = plan::validate(l1.problem, l1.offsets);
    EXPECT_TRUE(v1.ok()) << l1.region << ": " << v1.summary();
  }
  EXPECT_TRUE(plan::validate(plan.level2, plan.level2_offsets).ok());
  EXPECT_GE(plan.arena_bytes, plan.flat_load);
  // Every layer's forward shares one level-1 plan per signature: far fewer plans than regions.
  EXPECT_LT(plan.level1.size(), trace.regions.size());
}

TEST(MemoryPlan, ProfilingIsDeterministicSoPlansReplayToIdenticalOffsets) {
  auto rig = make_rig("keep", 20);
  profile_step(rig);
  auto a = profile_step(rig);
  auto b = profile_step(rig);
  ASSERT_EQ(a.requests.size(), b.requests.size());
  for (size_t k = 0; k < a.requests.size(); ++k) {
    EXPECT_EQ(a.requests[k].bytes, b.requests[k].bytes) << k;
    EXPECT_EQ(a.requests[k].free_time, b.requests[k].free_time) << k;
  }
  auto pa = train::plan_profiled_step(a, 64);
  auto pb = train::plan_profiled_step(b, 64);
  ASSERT_EQ(pa.placements.size(), pb.placements.size());
  for (size_t k = 0; k < pa.placements.size(); ++k) EXPECT_EQ(pa.placements[k].offset, pb.placements[k].offset);
}

TEST(MemoryPlan, ArmedStepServesEveryPlannedRequestFromTheArena) {
  auto rig = make_rig("recompute", 20);
  profile_step(rig);
  auto trace = profile_step(rig);
  auto plan = train::plan_profiled_step(trace, 64);
  auto& a = memory::PlannedAllocator::install();
  a.arm(plan);
  a.reset_counters();
  a.begin_step();
  train::forward_backward(rig.model, *rig.policy, rig.batch, 1.0);
  rig.model.zero_grads();
  a.end_step();
  const auto s = a.stats();
  EXPECT_EQ(s.fallback, 0);
  EXPECT_EQ(s.planned, static_cast<int64_t>(plan.placements.size()) - plan.fallback_requests);
  EXPECT_EQ(s.base_allocs, plan.fallback_requests);
}

TEST(MemoryPlan, AWrongPlanIsNeverMisplacedOnlyCountedAsFallbacks) {
  // A plan profiled at 20 tokens, armed for a step at 28: sizes differ, so
  // requests go to the plain allocator and are counted; the gradients stay
  // exactly those of an unplanned step.
  auto small = make_rig("keep", 20);
  profile_step(small);
  auto plan = train::plan_profiled_step(profile_step(small), 64);

  auto plain = make_rig("keep", 28);
  train::forward_backward(plain.model, *plain.policy, plain.batch, 1.0);
  auto big = make_rig("keep", 28);
  auto& a = memory::PlannedAllocator::install();
  a.arm(plan);
  a.reset_counters();
  a.begin_step();
  train::forward_backward(big.model, *big.policy, big.batch, 1.0);
  a.end_step();
  EXPECT_GT(a.stats().fallback, 0);
  auto g1 = plain.model.grads().named();
  auto g2 = big.model.grads().named();
  for (size_t i = 0; i < g1.size(); ++i) EXPECT_TRUE(at::equal(*g1[i].second, *g2[i].second)) << g1[i].first;
}

#ifndef MEMO_WITH_CUDA
TEST(PlannedAllocatorInstall, CudaInACpuOnlyBuildIsAClearInputError) {
  try {
    memory::PlannedAllocator::install(c10::Device(c10::DeviceType::CUDA));
    FAIL() << "installed a CUDA planned allocator in a build without MEMO_CUDA";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("cuda"), std::string::npos) << e.what();
  }
}
#endif

train::TrainOptions run_options(const std::string& policy, const std::string& cache, bool planned) {
  train::TrainOptions o;
  o.seq_len = 32;
  o.batch = 2;
  o.steps = 5;
  o.layers = 4;
  o.policy = policy;
  o.alpha = 0.4;
  o.host_memory_gib = 0.25;
  o.device = "cpu";
  o.planned_memory = planned;
  o.plan_cache = cache;
  return o;
}

std::vector<double> run_losses(const train::TrainOptions& o, train::TrainSummary* s = nullptr) {
  train::Trainer t(o);
  std::vector<double> losses;
  auto summary = t.run([&](const train::StepRecord& r) { losses.push_back(r.loss); });
  if (s) *s = summary;
  return losses;
}

class PlannedTraining : public ::testing::TestWithParam<std::string> {};

TEST_P(PlannedTraining, LossesAreBitwiseIdenticalWithAndWithoutThePlan) {
  auto cache = testing::scratch_dir("plan_cache_" + GetParam()).string();
  train::TrainSummary s;
  auto plain = run_losses(run_options(GetParam(), cache, false));
  auto planned = run_losses(run_options(GetParam(), cache, true), &s);
  EXPECT_EQ(plain, planned);
  EXPECT_TRUE(s.memory_plan.active);
  EXPECT_EQ(s.memory_plan.fallbacks, 0);
  EXPECT_EQ(s.memory_plan.base_allocs_last_step, 0) << "steady-state steps use the fallback";
  EXPECT_EQ(s.memory_plan.device_mallocs_last_step, 0) << "steady-state steps call malloc";
  EXPECT_EQ(s.memory_plan.device_frees_last_step, 0) << "steady-state steps call free";
  EXPECT_GT(s.memory_plan.planned_requests, 0);
}

INSTANTIATE_TEST_SUITE_P(Policies, PlannedTraining, ::testing::Values("keep", "recompute", "memo"));

TEST(PlanCache, SameRunReusesThePlanAndAChangedShapeReplans) {
  auto cache = testing::scratch_dir("plan_cache_shape").string();
  train::TrainSummary first, again, other;
  run_losses(run_options("keep", cache, true), &first);
  run_losses(run_options("keep", cache, true), &again);
  auto longer = run_options("keep", cache, true);
  longer.seq_len = 40;
  run_losses(longer, &other);
  EXPECT_EQ(first.memory_plan.source, "profiled");
  EXPECT_EQ(again.memory_plan.source, "cache");
  EXPECT_EQ(again.memory_plan.cache_file, first.memory_plan.cache_file);
  EXPECT_EQ(again.memory_plan.fallbacks, 0);
  EXPECT_EQ(other.memory_plan.source, "profiled");
  EXPECT_NE(other.memory_plan.cache_file, first.memory_plan.cache_file);
}

TEST(PlanCli, ReportsTheArenaAndWritesTimelineAndDsaCsvs) {
  auto dir = testing::scratch_dir("plan_cli");
  auto r = testing::run_memo("train --steps 4 --seq-len 32 --batch 2 --planned-memory --plan-cache " +
                             (dir / "cache").string() + " --memory-timeline " + (dir / "t.html").string() +
                             " --export-dsa " + (dir / "dsa").string());
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("memory plan      arena"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("0 fallbacks"), std::string::npos) << r.output;
  EXPECT_TRUE(std::filesystem::exists(dir / "t.html"));
  // The exported level-2 problem is valid minimalloc CSV that memo dsa solves.
  auto d = testing::run_memo("dsa " + (dir / "dsa" / "level2.csv").string());
  EXPECT_EQ(d.code, 0) << d.output;
}

}  // namespace
}  // namespace memo
