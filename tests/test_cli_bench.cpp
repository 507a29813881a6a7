// `memo bench` and `memo train --trace` from the outside: every policy gets a
// row with the documented keys, gradients agree with keep's, bad input exits 2.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <set>
#include <string>
#include <vector>

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
                            "host_bytes", "host_pinned_bytes", "pin_seconds", "host_needed_bytes",
                            "host_budget_bytes", "alpha", "max_grad_rel_diff", "status", "message"})
      EXPECT_TRUE(row.contains(key)) << key;
    EXPECT_EQ(row["status"], "ok");
    EXPECT_LE(row["max_grad_rel_diff"].get<double>(), 1e-4) << row["policy"];
    // Every policy computes the same first step: the same loss up to rounding.
    const double keep_loss = j["rows"][0]["loss"].get<double>();
    EXPECT_GT(keep_loss, 1.0);  // random init over the tiny vocabulary: about log(vocab)
    EXPECT_NEAR(row["loss"].get<double>(), keep_loss, 1e-5 * keep_loss) << row["policy"];
  }
  EXPECT_EQ(seen, (std::set<std::string>{"keep", "recompute", "offload", "memo"}));
  // memo keeps x, o, lse and 37% of the rest of 1 layer (3 - 2) on the host; offload all of 3.
  EXPECT_GT(j["rows"][2]["host_bytes"].get<int64_t>(), j["rows"][3]["host_bytes"].get<int64_t>());
}

// --chunk-tokens 0,C: each policy whole and chunked, side by side; the
// chunked rows compute the same step (gradients near keep's), recompute's
// chunked peak is below its whole-layer peak, and each row's peak split adds
// up to no more than its peak.
TEST(BenchCli, ChunkSettingsGiveEachPolicyARowPerChunk) {
  auto j = run_bench_json("bench_chunks",
                          "--layers 2 --seq-len 256 --batch 1 --steps 1 --chunk-tokens 0,48 --policies keep,recompute,memo");
  ASSERT_EQ(j["rows"].size(), 6u);
  const std::vector<std::string> policies = {"keep", "keep", "recompute", "recompute", "memo", "memo"};
  for (size_t i = 0; i < 6; ++i) {
    const auto& row = j["rows"][i];
    SCOPED_TRACE(row.dump());
    EXPECT_EQ(row["policy"], policies[i]);
    EXPECT_EQ(row["chunk_setting"], i % 2 ? "48" : "0");
    EXPECT_EQ(row["chunk_tokens"], i % 2 ? 48 : 0);
    EXPECT_EQ(row["status"], "ok");
    EXPECT_LE(row["max_grad_rel_diff"].get<double>(), 1e-4);
    const auto& split = row["peak_split"];
    int64_t sum = 0;
    for (const char* key : {"static_bytes", "whole_sequence_bytes", "chunk_buffer_bytes", "transient_bytes"}) {
      ASSERT_TRUE(split.contains(key)) << key;
      EXPECT_GE(split[key].get<int64_t>(), 0) << key;
      sum += split[key].get<int64_t>();
    }
    EXPECT_LE(sum, row["peak_allocated_bytes"].get<int64_t>());
    EXPECT_GT(split["static_bytes"].get<int64_t>(), 0);
  }
  EXPECT_LT(j["rows"][3]["peak_allocated_bytes"].get<int64_t>(), j["rows"][2]["peak_allocated_bytes"].get<int64_t>());
  EXPECT_GT(j["rows"][5]["peak_split"]["chunk_buffer_bytes"].get<int64_t>(), 0);  // memo's two chunk buffers
  EXPECT_LT(j["rows"][5]["peak_split"]["chunk_buffer_bytes"].get<int64_t>(),
            j["rows"][4]["peak_split"]["chunk_buffer_bytes"].get<int64_t>());
}

// memo's row on a host short of x, o, lse of its swapped chunks (CPU: no
// device tier): its split says how many keep only x, as the runtime chose,
// and its gradients still match keep's; offload's row cannot run (its fit
// check says why).
TEST(BenchCli, MemoOnAShortHostReportsItsUnitsKeepingOnlyX) {
  auto j = run_bench_json("bench_x_only", "--layers 4 --seq-len 1024 --batch 1 --steps 1 --alpha 0 "
                                          "--chunk-tokens 128 --host-memory-gib 0.0028 --policies keep,offload,memo");
  ASSERT_EQ(j["rows"].size(), 3u);
  EXPECT_TRUE(j["rows"][0]["split"].is_null());  // keep
  EXPECT_EQ(j["rows"][1]["status"], "host-memory");
  EXPECT_NE(j["rows"][1]["message"].get<std::string>().find("The pinned host pool of offload needs"),
            std::string::npos)
      << j["rows"][1]["message"];
  const auto& memo = j["rows"][2];
  ASSERT_EQ(memo["status"], "ok") << memo.dump();
  EXPECT_LE(memo["max_grad_rel_diff"].get<double>(), 1e-4);
  const auto& split = memo["split"];
  EXPECT_EQ(split["units"], 32);
  EXPECT_EQ(split["swapped_units"], 30);
  EXPECT_EQ(split["fixed_on_device_units"], 0);
  EXPECT_EQ(split["attention_recomputed_units"], 15);
  EXPECT_GT(split["attention_recomputed_bytes"].get<double>(), 0.0);
  EXPECT_LE(memo["host_bytes"].get<double>(), 0.0028 * 1024 * 1024 * 1024);
}

TEST(BenchCli, ARowWhoseHostPoolDoesNotFitDoesNotStopTheOthers) {
  // 1 KiB of host memory: neither offload's nor memo's pool fits.
  auto j = run_bench_json("bench_host", "--layers 3 --seq-len 24 --batch 2 --steps 1 --host-memory-gib 0.000001 "
                                        "--policies keep,offload,memo");
  ASSERT_EQ(j["rows"].size(), 3u);
  EXPECT_EQ(j["host_memory_budget_source"], "--host-memory-gib");
  const auto& keep = j["rows"][0];
  EXPECT_EQ(keep["status"], "ok");
  EXPECT_TRUE(keep["message"].is_null());
  EXPECT_GT(keep["step_s"].get<double>(), 0.0);
  EXPECT_GT(keep["peak_allocated_bytes"].get<int64_t>(), 0);
  for (int i : {1, 2}) {
    const auto& row = j["rows"][i];
    SCOPED_TRACE(row["policy"].get<std::string>());
    EXPECT_EQ(row["status"], "host-memory");
    EXPECT_NE(row["message"].get<std::string>().find("host memory too small"), std::string::npos) << row["message"];
    EXPECT_TRUE(row["step_s"].is_null());
    EXPECT_NEAR(row["host_budget_bytes"].get<double>(), 0.000001 * (1 << 30), 1.0);
    EXPECT_GT(row["host_needed_bytes"].get<double>(), row["host_budget_bytes"].get<double>());
  }
}

TEST(BenchCli, EachChunkSizeIsCheckedOnItsOwn) {
  // Under an address-space limit (about 240 MiB left once memo has loaded)
  // recompute on whole layers needs about 315 MiB and does not fit; in chunks
  // of 512 it needs about 172 MiB and runs. The check is per row: the whole
  // layers' estimate must not stop the chunked row (nor the bench).
  auto json_path = (testing::scratch_dir("bench_chunk_fit") / "bench.json").string();
  auto r = testing::run_memo("bench --policies recompute --chunk-tokens 0,512 --seq-len 8192 --batch 2 --steps 1 "
                             "--layers 2 --json " + json_path,
                             "ulimit -v 650000; ");
  ASSERT_EQ(r.code, 0) << r.output;
  std::ifstream in(json_path);
  const auto j = nlohmann::json::parse(in);
  ASSERT_EQ(j["rows"].size(), 2u);
  EXPECT_EQ(j["rows"][0]["chunk_tokens"], 0);
  EXPECT_EQ(j["rows"][0]["status"], "oom") << j["rows"][0]["message"];
  EXPECT_EQ(j["rows"][1]["chunk_tokens"], 512);
  EXPECT_EQ(j["rows"][1]["status"], "ok") << j["rows"][1]["message"];
  EXPECT_GT(j["rows"][1]["step_s"].get<double>(), 0.0);
}

TEST(BenchCli, BadOptionsStillExit2BeforeAnyRow) {
  auto r = testing::run_memo("bench --seq-len 0 --steps 1");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_EQ(r.output.find("building the model"), std::string::npos) << r.output;
}

// Rows do not see each other: the same row gets the same split and the same
// peak whatever ran before it (keep's gradients, held for the comparison,
// are not device memory, and each row's peak starts at its own start).
TEST(BenchCli, ARowsFiguresDoNotDependOnTheOrderOfRows) {
  const std::string shape = "--layers 4 --seq-len 24 --batch 2 --steps 1 --alpha 0.5 ";
  auto a = run_bench_json("bench_order_a", shape + "--policies keep,memo");
  auto b = run_bench_json("bench_order_b", shape + "--policies memo,keep");
  ASSERT_EQ(a["rows"].size(), 2u);
  ASSERT_EQ(b["rows"].size(), 2u);
  const auto& keep_a = a["rows"][0];
  const auto& memo_a = a["rows"][1];
  const auto& memo_b = b["rows"][0];
  const auto& keep_b = b["rows"][1];
  EXPECT_EQ(memo_a["alpha"], memo_b["alpha"]);
  EXPECT_EQ(memo_a["host_bytes"], memo_b["host_bytes"]);
  EXPECT_EQ(memo_a["peak_allocated_bytes"], memo_b["peak_allocated_bytes"]);
  EXPECT_EQ(keep_a["peak_allocated_bytes"], keep_b["peak_allocated_bytes"]);
}

// On CPU the device and the host are the same memory, but a row's device
// figures still count only device memory: offload's and memo's host pools
// are not in their peaks, so at a shape where activations dominate both are
// below keep, which holds every layer's skeletal set.
TEST(BenchCli, HostPoolsAreNotInTheDevicePeakOnCpu) {
  auto j = run_bench_json("bench_cpu_peak", "--layers 8 --seq-len 128 --batch 2 --steps 1 --alpha 1 "
                                            "--policies keep,offload,memo");
  ASSERT_EQ(j["rows"].size(), 3u);
  const auto keep = j["rows"][0]["peak_allocated_bytes"].get<int64_t>();
  for (int i : {1, 2}) {
    const auto& row = j["rows"][i];
    EXPECT_GT(row["host_bytes"].get<int64_t>(), 0) << row["policy"];
    EXPECT_LT(row["peak_allocated_bytes"].get<int64_t>(), keep) << row["policy"];
    EXPECT_EQ(row.value("host_pinned_bytes", int64_t{-1}), 0) << row["policy"];  // CPU: nothing pinned
  }
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
