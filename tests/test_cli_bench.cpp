// `memo bench` and `memo train --trace` from the outside: every policy gets a
// row with the documented keys, gradients agree with keep's, bad input exits 2.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <set>

#include "cli_runner.h"

namespace memo {
namespace {

// Runs `memo bench ARGS --json F` in a fresh scratch folder and parses F
// (empty when the run failed, with the output in a test failure).
nlohmann::json run_bench_json(const std::string& scratch, const std::string& args) {
  auto json_path = (testing::scratch_dir(scratch) / "bench.json").string();
  auto r = testing::run_memo("bench " + args + " --json " + json_path);
  EXPECT_EQ(r.code, 0) << r.output;
  if (r.code != 0) return {};
  std::ifstream in(json_path);
  return nlohmann::json::parse(in);
}

TEST(BenchCli, EveryPolicyGetsARowAndMatchesKeep) {
  auto j = run_bench_json("bench", "--layers 3 --seq-len 24 --batch 2 --steps 1 --alpha 0.37");
  ASSERT_EQ(j["rows"].size(), 4u);
  std::set<std::string> seen;
  for (const auto& row : j["rows"]) {
    seen.insert(row["policy"].get<std::string>());
    for (const char* key : {"policy", "step_s", "mfu", "peak_allocated_bytes", "peak_reserved_bytes",
                            "host_bytes", "alpha", "max_grad_rel_diff", "status"})
      EXPECT_TRUE(row.contains(key)) << key;
    EXPECT_EQ(row["status"], "ok");
    EXPECT_LE(row["max_grad_rel_diff"].get<double>(), 1e-4) << row["policy"];
  }
  EXPECT_EQ(seen, (std::set<std::string>{"keep", "recompute", "offload", "memo"}));
  // memo keeps x, o, lse and 37% of the rest of 1 layer (3 - 2) on the host; offload all of 3.
  EXPECT_GT(j["rows"][2]["host_bytes"].get<int64_t>(), j["rows"][3]["host_bytes"].get<int64_t>());
}

TEST(BenchCli, UnknownPolicyExits2) {
  auto r = testing::run_memo("bench --policies keep,swapall --steps 1");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("unknown policy \"swapall\""), std::string::npos) << r.output;
}

TEST(TrainCli, TraceFileIsChromeJsonWithAllThreeStreams) {
  auto dir = testing::scratch_dir("trace");
  auto trace = (dir / "t.json").string();
  auto r = testing::run_memo("train --policy memo --layers 4 --alpha 0.5 --steps 2 --seq-len 32 --batch 1 --trace " +
                             trace);
  ASSERT_EQ(r.code, 0) << r.output;
  std::ifstream in(trace);
  auto j = nlohmann::json::parse(in);
  std::set<std::string> lanes;
  for (const auto& e : j["traceEvents"])
    if (e["ph"] == "X") lanes.insert(e["cat"].get<std::string>());
  EXPECT_EQ(lanes, (std::set<std::string>{"compute", "device-to-host", "host-to-device"}));
}

TEST(TrainCli, TooSmallHostMemoryFailsBeforeTheFirstStep) {
  auto r = testing::run_memo("train --policy memo --layers 4 --alpha 1 --host-memory-gib 0.00001 --steps 1");
  EXPECT_EQ(r.code, 2) << r.output;
  // The fit check names the pool before the model is built (the policy's own
  // check, "host memory too small", comes later and is now not reached).
  EXPECT_NE(r.output.find("The pinned host pool of memo needs"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("step 1/"), std::string::npos) << r.output;
}

TEST(BenchCli, PlannedMemoryColumnShowsNoFallbacksAndNoMallocs) {
  auto j = run_bench_json("bench_planned", "--layers 3 --seq-len 24 --batch 2 --steps 2 --alpha 0.5 --planned-memory");
  ASSERT_EQ(j["rows"].size(), 4u);
  for (const auto& row : j["rows"]) {
    EXPECT_GT(row["arena_bytes"].get<int64_t>(), 0) << row["policy"];
    EXPECT_EQ(row["plan_fallbacks"].get<int64_t>(), 0) << row["policy"];
    EXPECT_EQ(row["device_mallocs_per_step"].get<int64_t>(), 0) << row["policy"];
  }
}

TEST(BenchCli, WithoutThePlanEveryStepCallsTheDeviceMalloc) {
  // The column's counterpart: on CPU every unplanned tensor is a malloc, so a
  // column that read 0 here would measure nothing.
  auto j = run_bench_json("bench_unplanned", "--layers 2 --seq-len 24 --batch 2 --steps 2 --policies keep,memo");
  ASSERT_EQ(j["rows"].size(), 2u);
  for (const auto& row : j["rows"]) {
    EXPECT_GT(row["device_mallocs_per_step"].get<int64_t>(), 10) << row["policy"];
    EXPECT_GE(row["fragmentation"].get<double>(), 0.0) << row["policy"];
  }
}

}  // namespace
}  // namespace memo
