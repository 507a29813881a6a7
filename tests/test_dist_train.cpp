// `memo train` on 2 and 4 real ranks over Gloo (started with RANK/WORLD_SIZE,
// once through torchrun --no-python), in float64: per-step losses and final
// weights of every mesh (sp 2, sp 4 with the tiny model's 2 kv heads
// replicated, dp 2, dp 2 x sp 2) under every policy equal the single-process
// run's within 1e-10 relative; only rank 0 prints and writes; each step's
// all-to-all bytes equal the Ulysses count for the shape (also with layers in
// chunks of each rank's shard, sp 2 and 4); ZeRO 1-3 the same (also with
// --grad-accum 2), each stage holding the model state the planner counts,
// and a ZeRO 3 checkpoint of 4 ranks resumes on 2 and on 1; memo bench's
// rows on 2 ranks move the planned bytes.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "cli_runner.h"
#include "dist/context.h"
#include "dist/ulysses.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "plan/chunk_plan.h"
#include "plan/cost_model.h"
#include "plan/hardware.h"
#include "rank_runner.h"

namespace {

namespace fs = std::filesystem;
namespace plan = memo::plan;
using memo::testing::env_ranks;
using memo::testing::free_port;
using memo::testing::ProcessResult;
using memo::testing::contains;
using memo::testing::describe;
using memo::testing::run_processes;

#define REQUIRE_DIST() \
  if (!memo::dist::available()) GTEST_SKIP() << memo::dist::unavailable_reason()

// The tiny model (4 heads, 2 kv heads) with 3 layers (memo swaps layer 0 and
// keeps the last two), 16 tokens, 4 sequences, 2 steps, float64.
constexpr int64_t kSeq = 16, kBatch = 4, kSteps = 2;

std::vector<std::string> train_args(const fs::path& dir, const std::string& policy, int64_t sp,
                                    int64_t chunk_tokens = 0) {
  std::vector<std::string> a = {MEMO_BINARY, "train", "--dtype", "float64", "--device", "cpu", "--layers", "3",
                                "--seq-len", std::to_string(kSeq), "--batch", std::to_string(kBatch), "--steps",
                                std::to_string(kSteps), "--warmup", "0", "--lr", "1e-2", "--policy", policy,
                                "--json", (dir / "report.json").string(), "--out", (dir / "out").string(),
                                "--checkpoint-every", std::to_string(kSteps), "--dist-timeout", "120",
                                "--zero", "0"};
  if (policy == "memo") a.insert(a.end(), {"--alpha", "0.5"});  // half of each shard's tokens recomputed
  if (sp > 1) a.insert(a.end(), {"--sp", std::to_string(sp)});
  if (chunk_tokens > 0) a.insert(a.end(), {"--chunk-tokens", std::to_string(chunk_tokens)});
  return a;
}

struct RunResult {
  nlohmann::json report;
  std::vector<double> losses;
  std::map<std::string, std::vector<double>> weights;  // the last checkpoint's, float64
};

RunResult read_run(const fs::path& dir) {
  RunResult r;
  std::ifstream in(dir / "report.json");
  std::stringstream ss;
  ss << in.rdbuf();
  r.report = nlohmann::json::parse(ss.str());
  for (const auto& s : r.report["steps"]) r.losses.push_back(s["loss"].get<double>());
  fs::path newest;
  for (const auto& e : fs::directory_iterator(dir / "out" / "checkpoints"))
    if (e.path().filename().string().rfind("step-", 0) == 0 && e.path() > newest) newest = e.path();
  memo::model::SafetensorsReader reader((newest / "model.safetensors").string());
  for (const auto& t : reader.header().tensors) {
    EXPECT_EQ(t.dtype, "F64") << t.name;
    std::vector<double> v(static_cast<size_t>(t.numel()));
    std::memcpy(v.data(), reader.bytes(t), v.size() * sizeof(double));
    r.weights[t.name] = std::move(v);
  }
  return r;
}

// The single-process run (keep), once per test process.
const RunResult& reference() {
  static const RunResult ref = [] {
    const auto dir = memo::testing::scratch_dir("dist_train_ref");
    fs::remove_all(dir);
    fs::create_directories(dir);
    const auto rs = run_processes({{train_args(dir, "keep", 1), {{"OMP_NUM_THREADS", "1"}}}}, 300);
    EXPECT_EQ(rs[0].code, 0) << describe(rs);
    return read_run(dir);
  }();
  return ref;
}

// max |a - b| over a tensor, relative to its largest |b|.
double relative_difference(const std::vector<double>& a, const std::vector<double>& b) {
  double diff = 0, scale = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::abs(a[i] - b[i]));
    scale = std::max(scale, std::abs(b[i]));
  }
  return scale > 0 ? diff / scale : diff;
}

void expect_matches_reference(const RunResult& got, const std::string& what) {
  const auto& ref = reference();
  ASSERT_EQ(got.losses.size(), ref.losses.size()) << what;
  for (size_t i = 0; i < ref.losses.size(); ++i)
    EXPECT_NEAR(got.losses[i], ref.losses[i], 1e-10 * std::abs(ref.losses[i])) << what << ": step " << i + 1;
  ASSERT_EQ(got.weights.size(), ref.weights.size()) << what;
  for (const auto& [name, w] : ref.weights) {
    ASSERT_TRUE(got.weights.count(name)) << what << ": " << name;
    ASSERT_EQ(got.weights.at(name).size(), w.size()) << what << ": " << name;
    EXPECT_LE(relative_difference(got.weights.at(name), w), 1e-10) << what << ": " << name;
  }
}

// Runs `world` ranks of memo train under `policy` with --sp `sp`; rank 0's
// outputs, after checking that every rank succeeded and only rank 0 spoke.
RunResult run_ranks(int world, int64_t sp, const std::string& policy, int64_t chunk_tokens = 0) {
  const auto dir = memo::testing::scratch_dir("dist_train_" + std::to_string(world) + "_" + std::to_string(sp) + "_" +
                                              policy + "_c" + std::to_string(chunk_tokens));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const auto rs = run_processes(env_ranks(world, train_args(dir, policy, sp, chunk_tokens), free_port()), 300);
  for (size_t r = 0; r < rs.size(); ++r) {
    EXPECT_EQ(rs[r].code, 0) << describe(rs);
    if (r > 0) EXPECT_EQ(rs[r].output, "") << "rank " << r << " spoke on success\n" << describe(rs);
  }
  EXPECT_NE(rs[0].output.find("memo train\n"), std::string::npos) << describe(rs);
  // Only rank 0 wrote: one report, one checkpoint directory.
  auto result = read_run(dir);
  fs::remove_all(dir);
  return result;
}

// The planner's inputs for the shape these tests run (float64).
plan::PlanInputs plan_inputs(int world, int64_t sp) {
  plan::PlanInputs in;
  auto config = memo::model::resolve_model("tiny");
  config.layers = 3;
  in.model = memo::model::to_plan_shape(config);
  in.seq_len = kSeq;
  in.batch = kBatch / (world / sp);  // per replica
  in.parallel.sp = sp;
  in.parallel.dp = world / sp;
  in.zero = 0;
  in.compute_bytes = 8;
  in.master_bytes = 8;
  in.hardware = plan::hardware_preset("h200-141gb");
  return in;
}

// The planner's count for the same shape (float64, ZeRO stage 0).
plan::CommPlan planned(int world, int64_t sp, const std::string& policy, int64_t chunk_tokens = 0) {
  return plan::chunked_comm_plan(plan_inputs(world, sp), policy, chunk_tokens, policy == "memo" ? 0.5 : 0.0, 1.0);
}

// chunk_tokens > 0: every layer in chunks of that many of the rank's tokens.
void check_mesh_under_every_policy(int world, int64_t sp, int64_t chunk_tokens = 0) {
  REQUIRE_DIST();
  for (const std::string policy : {"keep", "recompute", "offload", "memo"}) {
    const auto got = run_ranks(world, sp, policy, chunk_tokens);
    const std::string what = "world " + std::to_string(world) + ", sp " + std::to_string(sp) + ", " + policy +
                             (chunk_tokens > 0 ? ", chunks of " + std::to_string(chunk_tokens) : "");
    expect_matches_reference(got, what);
    // The mesh and the bytes moved are reported, per step and in the summary.
    EXPECT_EQ(got.report["summary"]["mesh"]["sp"].get<int64_t>(), sp) << what;
    EXPECT_EQ(got.report["summary"]["mesh"]["dp"].get<int64_t>(), world / sp) << what;
    // Each step's bytes, counted at the process group, are the planner's.
    const auto plan = planned(world, sp, policy, chunk_tokens);
    if (chunk_tokens > 0) {  // the run did chunk: more all-to-alls than whole layers make
      EXPECT_EQ(got.report["config"]["chunk_tokens"].get<int64_t>(), chunk_tokens) << what;
      EXPECT_GT(plan.all_to_all_calls, planned(world, sp, policy).all_to_all_calls) << what;
    }
    for (const auto& step : got.report["steps"]) {
      ASSERT_TRUE(step.contains("comm")) << what;
      const auto& c = step["comm"];
      EXPECT_EQ(c["all_to_all"]["bytes_sent"].get<double>(), plan.all_to_all_bytes) << what;
      EXPECT_EQ(c["all_to_all"]["calls"].get<int64_t>(), plan.all_to_all_calls) << what;
      EXPECT_EQ(c["all_reduce"]["bytes_sent"].get<double>(), plan.all_reduce_bytes) << what;
      EXPECT_EQ(c["all_reduce"]["calls"].get<int64_t>(), plan.zero_calls) << what;
      EXPECT_GT(c["all_reduce"]["bytes_sent"].get<double>(), 0) << what;
      if (sp == 1) EXPECT_EQ(c["all_to_all"]["calls"].get<int64_t>(), 0) << what;
    }
  }
}

TEST(DistTrain, Sp2MatchesOneProcessUnderEveryPolicy) { check_mesh_under_every_policy(2, 2); }
TEST(DistTrain, Sp4ReplicatedKvHeadsMatchesOneProcessUnderEveryPolicy) { check_mesh_under_every_policy(4, 4); }
TEST(DistTrain, Dp2MatchesOneProcessUnderEveryPolicy) { check_mesh_under_every_policy(2, 1); }
TEST(DistTrain, Dp2Sp2MatchesOneProcessUnderEveryPolicy) { check_mesh_under_every_policy(4, 2); }
// Chunks of a rank's shard (docs/chunks.md): 3 tokens over shards of 8 (sp 2:
// chunks 3, 3, 2) and of 4 (sp 4, kv heads replicated: chunks 3, 1), against
// the single-process unchunked run; the all-to-alls as the planner counts.
TEST(DistTrain, ChunkedSp2MatchesOneProcessUnderEveryPolicy) { check_mesh_under_every_policy(2, 2, 3); }
TEST(DistTrain, ChunkedSp4ReplicatedKvHeadsMatchesOneProcessUnderEveryPolicy) {
  check_mesh_under_every_policy(4, 4, 3);
}

// memo with its alpha measured on each rank: the ranks agree on one (the
// smallest) and train as the single process does.
TEST(DistTrain, MemoWithMeasuredAlphaAgreesAcrossRanks) {
  REQUIRE_DIST();
  const auto dir = memo::testing::scratch_dir("dist_train_alpha");
  fs::remove_all(dir);
  fs::create_directories(dir);
  auto args = train_args(dir, "memo", 2);
  args.erase(std::find(args.begin(), args.end(), "--alpha"), std::find(args.begin(), args.end(), "--alpha") + 2);
  const auto rs = run_processes(env_ranks(2, args, free_port()), 300);
  for (const auto& r : rs) EXPECT_EQ(r.code, 0) << describe(rs);
  expect_matches_reference(read_run(dir), "sp 2, memo, measured alpha");
  fs::remove_all(dir);
}

// memo under sp 2 on a host short of x, o, lse of some swapped units: the
// ranks agree on the units that keep only x, run their attention again with
// its all-to-alls in step, and train as the single process does. In chunks
// of 3 over each rank's 8 tokens, 3 of 7 units (3 all-to-alls more each: q
// to head layout, o and lse back); whole layers, the one swapped layer.
TEST(DistTrain, MemoOnAShortHostUnderSpRecomputesTheSameUnitsOnEveryRank) {
  REQUIRE_DIST();
  struct Case {
    int64_t chunk;
    const char* host_gib;  // see below
    int64_t x_only;
  };
  // float64, 4 sequences: a chunk of 3 tokens holds x, o, lse in 24,960 B and
  // o, lse in 12,672 B, so 7 units less 3 units' o, lse plus half of one is
  // 143,040 B; a whole layer (8 tokens) 66,560 B and 33,792 B: 49,664 B.
  for (const Case& c : {Case{3, "0.0001333", 3}, Case{0, "0.00004626", 1}}) {
    const std::string what = "sp 2, memo, chunk " + std::to_string(c.chunk);
    const auto dir = memo::testing::scratch_dir("dist_train_x_only_c" + std::to_string(c.chunk));
    fs::remove_all(dir);
    fs::create_directories(dir);
    auto args = train_args(dir, "memo", 2, c.chunk);
    *(std::find(args.begin(), args.end(), "--alpha") + 1) = "0";
    args.insert(args.end(), {"--host-memory-gib", c.host_gib});
    const auto rs = run_processes(env_ranks(2, args, free_port()), 300);
    for (const auto& r : rs) ASSERT_EQ(r.code, 0) << what << "\n" << describe(rs);
    EXPECT_NE(rs[0].output.find("only x for " + std::to_string(c.x_only) + " units"), std::string::npos)
        << what << "\n" << rs[0].output;
    const auto got = read_run(dir);
    expect_matches_reference(got, what);
    const auto plan = planned(2, 2, "memo", c.chunk);
    for (const auto& step : got.report["steps"]) {
      const auto calls = step["comm"]["all_to_all"]["calls"].get<int64_t>();
      if (c.chunk > 0) EXPECT_EQ(calls, plan.all_to_all_calls + 3 * c.x_only) << what << ": " << step.dump();
      EXPECT_GT(calls, plan.all_to_all_calls) << what;  // the recomputed attention's
    }
    fs::remove_all(dir);
  }
}

// --trace on many ranks: rank 0's Chrome trace has a comm lane with each
// collective of the step (the layer's all-to-alls, the all-reduces).
TEST(DistTrain, TraceHasACommLane) {
  REQUIRE_DIST();
  const auto dir = memo::testing::scratch_dir("dist_train_trace");
  fs::remove_all(dir);
  fs::create_directories(dir);
  auto args = train_args(dir, "keep", 2);
  args.insert(args.end(), {"--trace", (dir / "trace.json").string()});
  const auto rs = run_processes(env_ranks(2, args, free_port()), 300);
  for (const auto& r : rs) ASSERT_EQ(r.code, 0) << describe(rs);
  std::ifstream in(dir / "trace.json");
  const auto trace = nlohmann::json::parse(in);
  int lanes = 0;
  std::map<std::string, int> spans;
  for (const auto& e : trace["traceEvents"]) {
    if (e["ph"] == "M" && e["args"]["name"] == "comm") ++lanes;
    if (e["ph"] == "X" && e["cat"] == "comm") {
      ++spans[e["name"].get<std::string>()];
      EXPECT_GE(e["dur"].get<double>(), 0.0);
    }
  }
  EXPECT_EQ(lanes, 1) << trace.dump();
  const auto plan = planned(2, 2, "keep");
  EXPECT_EQ(spans["all_to_all sp0"], plan.all_to_all_calls) << trace.dump();
  EXPECT_EQ(spans["all_reduce world"], plan.zero_calls) << trace.dump();
  fs::remove_all(dir);
}

// ZeRO 1-3 (docs/dist.md, "ZeRO"): the arguments of train_args with --zero
// `stage` (-1: no --zero, the default) and a checkpoint every
// `checkpoint_every` steps.
std::vector<std::string> zero_args(const fs::path& dir, const std::string& policy, int64_t sp, int zero,
                                   int64_t checkpoint_every = kSteps) {
  auto a = train_args(dir, policy, sp);
  *(std::find(a.begin(), a.end(), "--checkpoint-every") + 1) = std::to_string(checkpoint_every);
  const auto flag = std::find(a.begin(), a.end(), "--zero");
  if (zero < 0)
    a.erase(flag, flag + 2);
  else
    *(flag + 1) = std::to_string(zero);
  return a;
}

// Runs `world` ranks at ZeRO `zero`; every rank succeeded, only rank 0 spoke.
// Leaves the run's directory in place (its checkpoints may be resumed).
RunResult run_zero(const fs::path& dir, int world, const std::vector<std::string>& args) {
  fs::remove_all(dir);
  fs::create_directories(dir);
  const auto rs = run_processes(env_ranks(world, args, free_port()), 300);
  for (size_t r = 0; r < rs.size(); ++r) {
    EXPECT_EQ(rs[r].code, 0) << describe(rs);
    if (r > 0) EXPECT_EQ(rs[r].output, "") << "rank " << r << " spoke on success\n" << describe(rs);
  }
  return read_run(dir);
}

// Each step's collectives at ZeRO `zero` on 3 layers under keep: every unit
// (3 layers, then embed + final norm + head) reduce-scattered once; stages
// 1-2 gather every unit once (publish), stage 3 every layer in forward and
// again in backward and the rest once; two all-reduces (the loss, the norm).
void expect_zero_collectives(const RunResult& got, int world, int64_t sp, int zero, const std::string& what) {
  constexpr int64_t kLayers = 3, kUnits = kLayers + 1;
  // The planner's count for the same shape and stage (memo plan --zero).
  auto in = plan_inputs(world, sp);
  in.zero = zero;
  const auto plan = plan::comm_plan(in, "keep", 0.0, 1.0);
  for (const auto& step : got.report["steps"]) {
    ASSERT_TRUE(step.contains("comm")) << what;
    const auto& c = step["comm"];
    EXPECT_EQ(c["reduce_scatter"]["calls"].get<int64_t>(), kUnits) << what;
    EXPECT_EQ(c["all_gather"]["calls"].get<int64_t>(), zero == 3 ? 2 * kLayers + 1 : kUnits) << what;
    EXPECT_EQ(c["all_reduce"]["calls"].get<int64_t>(), 2) << what;
    EXPECT_EQ(c["all_gather"]["bytes_sent"].get<double>(), plan.all_gather_bytes) << what;
    EXPECT_EQ(c["reduce_scatter"]["bytes_sent"].get<double>(), plan.reduce_scatter_bytes) << what;
    EXPECT_EQ(c["all_reduce"]["bytes_sent"].get<double>(), plan.all_reduce_bytes) << what;
    EXPECT_EQ(c["all_gather"]["calls"].get<int64_t>() + c["reduce_scatter"]["calls"].get<int64_t>() +
                  c["all_reduce"]["calls"].get<int64_t>(),
              plan.zero_calls)
        << what;
  }
}

// --zero 1, 2, 3 on 2 ranks (dp 2, sp 2), 3 on dp 2 x sp 2, and no --zero
// (the default on many ranks: stage 3's collectives): losses and
// final weights equal the single process's within 1e-10 (the sharded AdamW
// is the unsharded kernel on the shard pieces; the gradients are summed in
// another order), and the gradients move as the stage says.
TEST(DistTrainZero, Stages1To3MatchOneProcess) {
  REQUIRE_DIST();
  struct Case {
    int world;
    int64_t sp;
    int zero;
    std::string policy;
  };
  for (const Case& c : {Case{2, 1, 1, "keep"}, Case{2, 2, 2, "keep"}, Case{2, 2, 3, "keep"}, Case{2, 1, 3, "keep"},
                        Case{4, 2, 3, "memo"}, Case{2, 2, -1, "keep"}}) {
    const std::string what = "world " + std::to_string(c.world) + ", sp " + std::to_string(c.sp) + ", zero " +
                             std::to_string(c.zero) + ", " + c.policy;
    const auto dir = memo::testing::scratch_dir("dist_train_zero_" + std::to_string(c.world) + "_" +
                                                std::to_string(c.sp) + "_" + std::to_string(c.zero + 1));
    const auto got = run_zero(dir, c.world, zero_args(dir, c.policy, c.sp, c.zero));
    expect_matches_reference(got, what);
    if (c.policy == "keep") expect_zero_collectives(got, c.world, c.sp, c.zero < 0 ? 3 : c.zero, what);
    fs::remove_all(dir);
  }
}

// A checkpoint written by 4 ranks at ZeRO 3 (dp 2 x sp 2) after step 1
// resumes on 2 ranks at ZeRO 3 and on one process with the losses and final
// weights of the uninterrupted single-process run.
TEST(DistTrainZero, Zero3CheckpointResumesOnTwoRanksAndOne) {
  REQUIRE_DIST();
  const auto dir = memo::testing::scratch_dir("dist_train_zero_ckpt");
  const auto written = run_zero(dir, 4, zero_args(dir, "keep", 2, 3, 1));
  expect_matches_reference(written, "4 ranks, zero 3, writing");
  fs::path first;
  for (const auto& e : fs::directory_iterator(dir / "out" / "checkpoints"))
    if (e.path().filename().string().rfind("step-", 0) == 0 && (first.empty() || e.path() < first)) first = e.path();
  ASSERT_FALSE(first.empty());
  const auto& ref = reference();
  auto expect_resumed = [&](const RunResult& got, const std::string& what) {
    ASSERT_EQ(got.losses.size(), 1u) << what;  // step 2 only
    EXPECT_NEAR(got.losses[0], ref.losses[1], 1e-10 * std::abs(ref.losses[1])) << what;
    for (const auto& [name, w] : ref.weights) {
      ASSERT_TRUE(got.weights.count(name)) << what << ": " << name;
      EXPECT_LE(relative_difference(got.weights.at(name), w), 1e-10) << what << ": " << name;
    }
  };
  {
    const auto on2 = memo::testing::scratch_dir("dist_train_zero_resume2");
    auto args = zero_args(on2, "keep", 2, 3);
    args.insert(args.end(), {"--resume", first.string()});
    expect_resumed(run_zero(on2, 2, args), "resumed on 2 ranks, zero 3");
    fs::remove_all(on2);
  }
  {
    const auto on1 = memo::testing::scratch_dir("dist_train_zero_resume1");
    fs::remove_all(on1);
    fs::create_directories(on1);
    auto args = train_args(on1, "keep", 1);
    args.insert(args.end(), {"--resume", first.string()});
    const auto rs = run_processes({{args, {{"OMP_NUM_THREADS", "1"}}}}, 300);
    ASSERT_EQ(rs[0].code, 0) << describe(rs);
    expect_resumed(read_run(on1), "resumed on one process");
    fs::remove_all(on1);
  }
  fs::remove_all(dir);
}

// The model state a report says rank 0 held after its last step
// (summary.model_state_bytes).
plan::ModelStateBytes held_state(const RunResult& r) {
  const auto& j = r.report["summary"]["model_state_bytes"];
  plan::ModelStateBytes b;
  b.weights = j.at("weights").get<int64_t>();
  b.master = j.at("master").get<int64_t>();
  b.grads = j.at("grads").get<int64_t>();
  b.moments = j.at("moments").get<int64_t>();
  EXPECT_EQ(j.at("total").get<int64_t>(), b.total());
  return b;
}

// The planner's count of it for the tiny model with 3 layers in float64.
plan::ModelStateBytes planned_state(int stage, int64_t world) {
  auto config = memo::model::resolve_model("tiny");
  config.layers = 3;
  return plan::model_state_bytes(memo::model::to_plan_shape(config), stage, world, 8, 8);
}

void expect_state(const plan::ModelStateBytes& got, const plan::ModelStateBytes& want, const std::string& what) {
  EXPECT_EQ(got.weights, want.weights) << what;
  EXPECT_EQ(got.master, want.master) << what;
  EXPECT_EQ(got.grads, want.grads) << what;
  EXPECT_EQ(got.moments, want.moments) << what;
}

// ZeRO's memory saving on 4 ranks (dp 2 x sp 2): at stages 0-3 each rank
// holds the model state the planner predicts (plan::model_state_bytes:
// counted from the tensors the trainer owns; every rank's shards are padded
// to one size, so rank 0's report stands for each), each stage strictly
// less than the one before, and the allocator's meter agrees: the bytes
// allocated before the first step (peak_split.static_bytes) differ between
// stages by the model state's difference, up to AdamW's step counters (one
// float32 per parameter, or per shard piece: at most 4 bytes for each of
// the model's 20 tensors, which model_state_bytes leaves out). Losses and
// final weights still equal the single process's. The single process holds
// the whole model.
TEST(DistTrainZero, EachStageHoldsThePlannedModelState) {
  REQUIRE_DIST();
  expect_state(held_state(reference()), planned_state(0, 1), "one process");
  plan::ModelStateBytes last;
  int64_t static0 = 0;
  for (int zero = 0; zero <= 3; ++zero) {
    const std::string what = "4 ranks, zero " + std::to_string(zero);
    const auto dir = memo::testing::scratch_dir("dist_train_zero_state_" + std::to_string(zero));
    const auto got = run_zero(dir, 4, zero_args(dir, "keep", 2, zero));
    expect_matches_reference(got, what);
    const auto held = held_state(got);
    expect_state(held, planned_state(zero, 4), what);
    const int64_t stat = got.report["summary"]["peak_split"]["static_bytes"].get<int64_t>();
    if (zero == 0) {
      static0 = stat - held.total();
    } else {
      EXPECT_LT(held.total(), last.total()) << what;
    }
    // What the meter counts besides the model state: the same at every stage
    // but for the step counters (20 tensors: 3 layers of 6, embed, final norm).
    EXPECT_GE(stat - held.total(), 0) << what;
    EXPECT_LE(std::abs((stat - held.total()) - static0), 20 * 4) << what;
    last = held;
    fs::remove_all(dir);
  }
}

// --grad-accum 2 at stages 2 and 3 (2 ranks): each micro-batch's layer
// gradients are reduce-scattered into the shards as they complete (every
// unit twice a step) and released, so between steps a rank holds only the
// gradient shards (the planner's count); losses and final weights equal one
// process's with --grad-accum 2 within 1e-10.
TEST(DistTrainZero, GradAccumAtStages2And3ReducesEachMicroBatch) {
  REQUIRE_DIST();
  auto with_accum = [](std::vector<std::string> a) {
    a.insert(a.end(), {"--grad-accum", "2"});
    return a;
  };
  const auto one = memo::testing::scratch_dir("dist_train_zero_accum_ref");
  fs::remove_all(one);
  fs::create_directories(one);
  const auto rs = run_processes({{with_accum(train_args(one, "keep", 1)), {{"OMP_NUM_THREADS", "1"}}}}, 300);
  ASSERT_EQ(rs[0].code, 0) << describe(rs);
  const auto ref = read_run(one);
  fs::remove_all(one);
  for (const auto& [zero, sp] : std::vector<std::pair<int, int64_t>>{{2, 2}, {3, 1}}) {
    const std::string what = "2 ranks, sp " + std::to_string(sp) + ", zero " + std::to_string(zero) + ", grad-accum 2";
    const auto dir = memo::testing::scratch_dir("dist_train_zero_accum_" + std::to_string(zero));
    const auto got = run_zero(dir, 2, with_accum(zero_args(dir, "keep", sp, zero)));
    ASSERT_EQ(got.losses.size(), ref.losses.size()) << what;
    for (size_t i = 0; i < ref.losses.size(); ++i)
      EXPECT_NEAR(got.losses[i], ref.losses[i], 1e-10 * std::abs(ref.losses[i])) << what << ": step " << i + 1;
    for (const auto& [name, w] : ref.weights) {
      ASSERT_TRUE(got.weights.count(name)) << what << ": " << name;
      EXPECT_LE(relative_difference(got.weights.at(name), w), 1e-10) << what << ": " << name;
    }
    for (const auto& step : got.report["steps"])
      EXPECT_EQ(step["comm"]["reduce_scatter"]["calls"].get<int64_t>(), 2 * 4) << what;  // 4 units, 2 micro-batches
    expect_state(held_state(got), planned_state(zero, 2), what);
    fs::remove_all(dir);
  }
}

// A rank killed (SIGKILL) mid-run, after the first checkpoint is complete:
// the other exits non-zero within --dist-timeout naming it, and the newest
// complete checkpoint is intact: one process resumed from it takes the same
// next three steps (losses within 1e-10) as the 2 ranks run uninterrupted.
TEST(DistTrain, RankKilledMidRunLeavesAnIntactCheckpoint) {
  REQUIRE_DIST();
  constexpr int64_t kLongSteps = 200;  // long enough that the kill lands mid-run
  constexpr double kTimeout = 20;
  const auto dir = memo::testing::scratch_dir("dist_train_killed");
  fs::remove_all(dir);
  fs::create_directories(dir);
  auto with_steps = [&](std::vector<std::string> a, const fs::path& d) {
    *(std::find(a.begin(), a.end(), "--steps") + 1) = std::to_string(kLongSteps);
    *(std::find(a.begin(), a.end(), "--checkpoint-every") + 1) = "2";
    *(std::find(a.begin(), a.end(), "--dist-timeout") + 1) = std::to_string(static_cast<int>(kTimeout));
    *(std::find(a.begin(), a.end(), "--json") + 1) = (d / "report.json").string();
    *(std::find(a.begin(), a.end(), "--out") + 1) = (d / "out").string();
    return a;
  };
  const auto killed_dir = dir / "killed";
  fs::create_directories(killed_dir);
  // Rank 1 dies once rank 0 has renamed its first checkpoint into place.
  const auto first = killed_dir / "out" / "checkpoints" / "step-00000002";
  memo::testing::KillWhen kill{1, [&] { return fs::exists(first / "trainer_state.json"); }};
  const auto rs = run_processes(env_ranks(2, with_steps(train_args(killed_dir, "keep", 2), killed_dir), free_port()),
                                300, {}, &kill);
  ASSERT_GE(kill.killed_at, 0) << "rank 1 ended before its first checkpoint\n" << describe(rs);
  EXPECT_EQ(rs[1].code, 128 + SIGKILL) << "rank 1 finished before the kill\n" << describe(rs);
  EXPECT_NE(rs[0].code, 0) << describe(rs);
  EXPECT_FALSE(rs[0].killed) << describe(rs);
  EXPECT_LE(rs[0].seconds - kill.killed_at, kTimeout + 10) << describe(rs);
  EXPECT_NE(rs[0].output.find("from rank 1 (died or frozen)"), std::string::npos) << describe(rs);
  EXPECT_FALSE(fs::exists(killed_dir / "report.json")) << "the run finished: nothing was interrupted";

  // The newest complete checkpoint (a step-* directory; a *.tmp is not one).
  int64_t newest = 0;
  for (const auto& e : fs::directory_iterator(killed_dir / "out" / "checkpoints")) {
    const auto name = e.path().filename().string();
    if (name.rfind("step-", 0) == 0 && name.find(".tmp") == std::string::npos)
      newest = std::max<int64_t>(newest, std::stoll(name.substr(5)));
  }
  ASSERT_GE(newest, 2);
  ASSERT_LT(newest, kLongSteps);

  // One process resumes from it and runs to the end; the same 2 ranks run
  // uninterrupted are the reference (from the same weights at the checkpoint
  // the two differ by rounding only; a single-process reference would differ
  // by rounding amplified over the tens of steps before the checkpoint).
  const auto resumed_dir = dir / "resumed", ref_dir = dir / "ref";
  fs::create_directories(resumed_dir);
  fs::create_directories(ref_dir);
  auto resumed_args = with_steps(train_args(resumed_dir, "keep", 1), resumed_dir);
  resumed_args.insert(resumed_args.end(), {"--resume", (killed_dir / "out").string()});
  const auto resumed = run_processes({{resumed_args, {{"OMP_NUM_THREADS", "1"}}}}, 300);
  ASSERT_EQ(resumed[0].code, 0) << describe(resumed);
  const auto ref = run_processes(env_ranks(2, with_steps(train_args(ref_dir, "keep", 2), ref_dir), free_port()), 300);
  for (const auto& r : ref) ASSERT_EQ(r.code, 0) << describe(ref);
  const auto got = read_run(resumed_dir), want = read_run(ref_dir);
  ASSERT_EQ(want.losses.size(), static_cast<size_t>(kLongSteps));
  ASSERT_EQ(got.losses.size(), static_cast<size_t>(kLongSteps - newest));
  // The next three steps: the first checks the weights (and the data
  // position), the later ones the AdamW moments and step count too.
  for (size_t i = 0; i < std::min<size_t>(3, got.losses.size()); ++i) {
    const double w = want.losses[static_cast<size_t>(newest) + i];
    EXPECT_NEAR(got.losses[i], w, 1e-10 * std::abs(w)) << "step " << newest + 1 + static_cast<int64_t>(i);
  }
  fs::remove_all(dir);
}

// torchrun --no-python: its agent hosts the store; sp 2 under recompute.
TEST(DistTorchrun, TrainSp2MatchesOneProcess) {
  REQUIRE_DIST();
  const std::string torchrun = std::string(MEMO_SOURCE_DIR) + "/.venv/bin/torchrun";
  if (!fs::exists(torchrun)) GTEST_SKIP() << "no " << torchrun << " (scripts/setup.sh makes it)";
  const auto dir = memo::testing::scratch_dir("dist_train_torchrun");
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::vector<std::string> argv = {torchrun, "--no-python", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                                   "--master-port", std::to_string(free_port())};
  for (const auto& a : train_args(dir, "recompute", 2)) argv.push_back(a);
  const auto rs = run_processes({{argv, {{"OMP_NUM_THREADS", "1"}}}}, 300);
  ASSERT_EQ(rs[0].code, 0) << describe(rs);
  EXPECT_NE(rs[0].output.find("launched by torchrun"), std::string::npos) << describe(rs);
  expect_matches_reference(read_run(dir), "torchrun, sp 2, recompute");
  fs::remove_all(dir);
}

// memo bench on `world` ranks (--sp `sp`, --zero `zero`) of the tiny model's
// 3 layers, float64, one timed step per row: every rank succeeded, only rank
// 0 spoke; rank 0's --json.
nlohmann::json run_bench_ranks(int world, int64_t sp, int zero, const std::string& policies) {
  const auto dir = memo::testing::scratch_dir("dist_bench_" + std::to_string(sp) + "_" + std::to_string(zero));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const auto json = dir / "bench.json";
  std::vector<std::string> args = {MEMO_BINARY, "bench", "--dtype", "float64", "--device", "cpu", "--layers", "3",
                                   "--seq-len", std::to_string(kSeq), "--batch", std::to_string(kBatch), "--steps",
                                   "1", "--policies", policies, "--alpha", "0.5", "--zero", std::to_string(zero),
                                   "--dist-timeout", "120", "--json", json.string()};
  if (sp > 1) args.insert(args.end(), {"--sp", std::to_string(sp)});
  const auto rs = run_processes(env_ranks(world, args, free_port()), 300);
  for (size_t r = 0; r < rs.size(); ++r) {
    EXPECT_EQ(rs[r].code, 0) << describe(rs);
    if (r > 0) EXPECT_EQ(rs[r].output, "") << "rank " << r << " spoke on success\n" << describe(rs);
  }
  EXPECT_TRUE(contains(rs[0].output, "memo bench: ")) << describe(rs);
  EXPECT_TRUE(contains(rs[0].output, "(bytes sent per step by rank 0 / calls)")) << describe(rs);
  std::ifstream in(json);
  EXPECT_TRUE(in.good()) << "rank 0 wrote no --json\n" << describe(rs);
  nlohmann::json j = in.good() ? nlohmann::json::parse(in) : nlohmann::json::object();
  fs::remove_all(dir);
  return j;
}

// memo bench on 2 ranks (it refused many ranks before): each row is memo
// train's step on the mesh, and its bytes moved per step by collective kind
// are the planner's count for that configuration (memo plan --sp --zero):
// sp 2 at ZeRO 0 under every policy (Ulysses all-to-alls, gradient
// all-reduces), dp 2 at ZeRO 3 under keep (gathers, reduce-scatters, the
// loss and norm all-reduces).
TEST(DistBench, RowsMoveThePlannedBytesPerRank) {
  REQUIRE_DIST();
  const std::vector<std::string> policies = {"keep", "recompute", "offload", "memo"};
  const auto sp2 = run_bench_ranks(2, 2, 0, "keep,recompute,offload,memo");
  ASSERT_TRUE(sp2.contains("rows")) << sp2.dump();
  EXPECT_EQ(sp2["mesh"]["sp"].get<int64_t>(), 2) << sp2.dump();
  EXPECT_EQ(sp2["mesh"]["dp"].get<int64_t>(), 1) << sp2.dump();
  ASSERT_EQ(sp2["rows"].size(), policies.size()) << sp2.dump();
  for (size_t i = 0; i < policies.size(); ++i) {
    const auto& row = sp2["rows"][i];
    const std::string what = "sp 2, " + policies[i] + ": " + row.dump();
    ASSERT_EQ(row["policy"].get<std::string>(), policies[i]) << what;
    ASSERT_EQ(row["status"].get<std::string>(), "ok") << what;
    const auto plan = planned(2, 2, policies[i]);
    const auto& c = row["comm_per_step"];
    EXPECT_EQ(c["all_to_all"]["bytes_sent"].get<double>(), plan.all_to_all_bytes) << what;
    EXPECT_EQ(c["all_to_all"]["calls"].get<int64_t>(), plan.all_to_all_calls) << what;
    EXPECT_EQ(c["all_reduce"]["bytes_sent"].get<double>(), plan.all_reduce_bytes) << what;
    EXPECT_EQ(c["all_reduce"]["calls"].get<int64_t>(), plan.zero_calls) << what;
    EXPECT_EQ(c["all_gather"]["calls"].get<int64_t>(), 0) << what;
    EXPECT_EQ(c["reduce_scatter"]["calls"].get<int64_t>(), 0) << what;
    EXPECT_GT(c["all_to_all"]["bytes_sent"].get<double>(), 0) << what;
  }

  const auto dp2 = run_bench_ranks(2, 1, 3, "keep");
  ASSERT_TRUE(dp2.contains("rows")) << dp2.dump();
  EXPECT_EQ(dp2["mesh"]["dp"].get<int64_t>(), 2) << dp2.dump();
  EXPECT_EQ(dp2["mesh"]["zero"].get<int64_t>(), 3) << dp2.dump();
  ASSERT_EQ(dp2["rows"].size(), 1u) << dp2.dump();
  const auto& row = dp2["rows"][0];
  ASSERT_EQ(row["status"].get<std::string>(), "ok") << row.dump();
  auto in = plan_inputs(2, 1);
  in.zero = 3;
  const auto plan = plan::comm_plan(in, "keep", 0.0, 1.0);
  const auto& c = row["comm_per_step"];
  EXPECT_EQ(c["all_to_all"]["calls"].get<int64_t>(), 0) << row.dump();
  EXPECT_EQ(c["all_gather"]["bytes_sent"].get<double>(), plan.all_gather_bytes) << row.dump();
  EXPECT_EQ(c["reduce_scatter"]["bytes_sent"].get<double>(), plan.reduce_scatter_bytes) << row.dump();
  EXPECT_EQ(c["all_reduce"]["bytes_sent"].get<double>(), plan.all_reduce_bytes) << row.dump();
  EXPECT_EQ(c["all_gather"]["calls"].get<int64_t>() + c["reduce_scatter"]["calls"].get<int64_t>() +
                c["all_reduce"]["calls"].get<int64_t>(),
            plan.zero_calls)
      << row.dump();
  EXPECT_GT(plan.all_gather_bytes, 0);
}

}  // namespace
