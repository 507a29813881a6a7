// K and V on the host (`--kv-on-host`, runtime/kv_stream.h, docs/chunks.md
// "K and V on the host"): in float64 a chunked step that streams K, V and
// dK, dV through host blocks gives the unchunked step's (and the resident
// chunked step's) loss and gradients within 1e-10 under every policy, for
// chunks that do and do not divide the sequence, GQA, batch > 1 and 1 to 3
// layers; the bytes the stream copies each way equal the formula from the
// shapes; its host bytes are the layer's K, V and dK, dV; and a step's
// device peak drops by at least the whole-sequence K, V and accumulators
// less the staged blocks.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ostream>
#include <string>
#include <vector>

#include "memory/device_memory.h"
#include "model/config.h"
#include "model/llama.h"
#include "plan/hardware.h"
#include "plan/kv_on_host_plan.h"
#include "float64_steps.h"
#include "reference.h"
#include "runtime/kv_stream.h"
#include "runtime/policy.h"
#include "train/loss.h"
#include "train/step.h"
#include "train/chunking.h"
#include "train/trainer.h"

namespace memo {
namespace {

using testing::batch_of;
using testing::float64_model;
using testing::sgd_step;
using testing::step_peak;

std::unique_ptr<runtime::ActivationPolicy> prepared(const std::string& name, double alpha, int64_t chunk,
                                                    bool kv_on_host, model::LlamaModel& model, int64_t B,
                                                    int64_t S) {
  runtime::PolicyOptions opts;
  opts.host_memory_bytes = 1 << 30;
  opts.chunk_tokens = chunk;
  opts.kv_on_host = kv_on_host;
  if (name == "memo") opts.alpha = alpha;
  auto policy = runtime::make_policy(name, opts);
  policy->prepare(model, B, S);
  return policy;
}

// The largest difference between two models' gradients, relative to each
// gradient's largest entry (at least 1); every gradient must be nonzero.
double gradient_gap(model::LlamaModel& a, model::LlamaModel& b) {
  auto ga = a.grads().named();
  auto gb = b.grads().named();
  EXPECT_EQ(ga.size(), gb.size());
  double gap = 0;
  for (size_t i = 0; i < ga.size(); ++i) {
    const double scale = gb[i].second->abs().max().item<double>();
    EXPECT_GT(scale, 0.0) << gb[i].first;  // a real gradient
    gap = std::max(gap, (*ga[i].second - *gb[i].second).abs().max().item<double>() / std::max(1.0, scale));
  }
  return gap;
}

struct KvCase {
  const char* policy;
  double alpha;  // memo only
  int64_t chunk;
  int64_t layers;
  int64_t batch;
};

std::string case_name(const KvCase& c) {
  return std::string(c.policy) + "_a" + std::to_string(static_cast<int>(c.alpha * 100)) + "_c" +
         std::to_string(c.chunk) + "_l" + std::to_string(c.layers) + "_b" + std::to_string(c.batch);
}

void PrintTo(const KvCase& c, std::ostream* os) { *os << case_name(c); }

class KvOnHostSteps : public ::testing::TestWithParam<KvCase> {};

// Two steps with K, V on the host against the unchunked keep step and the
// chunked step with K, V resident: loss and every gradient within 1e-10, on a
// GQA model (4 query heads over 2 kv heads), 12 tokens. The stream was used
// (it copied bytes) and holds nothing after the step.
TEST_P(KvOnHostSteps, EqualUnchunkedAndResidentWithin1e10InFloat64) {
  const auto c = GetParam();
  const int64_t S = 12, loss_chunk = 7;
  const auto cfg = testing::small_config(4, 2, 4, 20, c.layers, 31);
  auto host = float64_model(cfg);
  auto resident = float64_model(cfg);
  auto whole = float64_model(cfg);
  auto host_policy = prepared(c.policy, c.alpha, c.chunk, true, host, c.batch, S);
  auto resident_policy = prepared(c.policy, c.alpha, c.chunk, false, resident, c.batch, S);
  auto whole_policy = prepared("keep", 0, 0, false, whole, c.batch, S);
  ASSERT_NE(host_policy->kv_stream(), nullptr);
  for (int step = 0; step < 2; ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
    const auto batch = batch_of(cfg.vocab_size, c.batch, S, 23 + step);
    auto got = train::forward_backward(host, *host_policy, batch, 1.0, loss_chunk, nullptr, c.chunk);
    auto res = train::forward_backward(resident, *resident_policy, batch, 1.0, loss_chunk, nullptr, c.chunk);
    auto want = train::forward_backward(whole, *whole_policy, batch, 1.0, loss_chunk);
    EXPECT_NEAR(got.total(), want.total(), 1e-10 * std::max(1.0, std::abs(want.total())));
    EXPECT_NEAR(got.total(), res.total(), 1e-10 * std::max(1.0, std::abs(res.total())));
    EXPECT_LE(gradient_gap(host, whole), 1e-10);
    EXPECT_LE(gradient_gap(host, resident), 1e-10);
    EXPECT_GT(host_policy->kv_stream()->to_device_bytes(), 0);
    EXPECT_EQ(host_policy->kv_stream()->host_bytes(), 0);  // every layer's blocks released
    sgd_step(host);
    sgd_step(resident);
    sgd_step(whole);
  }
}

std::vector<KvCase> kv_cases() {
  std::vector<KvCase> out;
  for (const auto& [policy, alpha] : std::vector<std::pair<const char*, double>>{
           {"keep", 0}, {"recompute", 0}, {"offload", 1}, {"memo", 0.0}, {"memo", 0.37}, {"memo", 1.0}}) {
    out.push_back({policy, alpha, 4, 1, 2});  // 3 chunks of 4
    out.push_back({policy, alpha, 5, 3, 2});  // 5, 5, 2
    out.push_back({policy, alpha, 7, 2, 3});  // 7, 5; batch 3
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Policies, KvOnHostSteps, ::testing::ValuesIn(kv_cases()),
                         [](const auto& info) { return case_name(info.param); });

// The plan's inputs for the test's model shape and step.
plan::PlanInputs plan_of(const model::ModelConfig& cfg, int64_t B, int64_t S) {
  plan::PlanInputs in;
  in.model = model::to_plan_shape(cfg);
  in.seq_len = S;
  in.batch = B;
  in.compute_bytes = 8;  // float64 (statistics float64 too)
  in.hardware = plan::hardware_preset("h200-141gb");  // chunk_memory validates it; the bytes do not depend on it
  return in;
}

// One step's link bytes, counted by the stream, equal the plan's formula
// exactly (keep and recompute, chunks dividing the sequence and not); the
// most host bytes the stream held equal the plan's host bytes.
TEST(KvOnHost, LinkAndHostBytesEqualThePlan) {
  for (const char* name : {"keep", "recompute", "offload", "memo"}) {
    for (int64_t chunk : {4, 5}) {
      SCOPED_TRACE(std::string(name) + " chunk " + std::to_string(chunk));
      const int64_t B = 2, S = 12;
      const auto cfg = testing::small_config(4, 2, 4, 20, 2, 31);
      auto model = float64_model(cfg);
      auto policy = prepared(name, 0, chunk, true, model, B, S);
      (void)train::forward_backward(model, *policy, batch_of(cfg.vocab_size, B, S, 3), 1.0, 7, nullptr, chunk);
      const auto* stream = policy->kv_stream();
      const auto want = plan::kv_on_host_cost(plan_of(cfg, B, S), name, chunk);
      EXPECT_EQ(static_cast<double>(stream->to_host_bytes()), want.link_to_host_bytes);
      EXPECT_EQ(static_cast<double>(stream->to_device_bytes()), want.link_to_device_bytes);
      EXPECT_EQ(static_cast<double>(stream->peak_host_bytes()), want.host_bytes);
      // memo rebuilt K, V into the blocks from its chunks' inputs, copied back as the plan says.
      EXPECT_EQ(static_cast<double>(policy->rebuild_h2d_bytes()),
                plan::chunk_memory(plan_of(cfg, B, S), name, chunk).rebuild_h2d_bytes);
      if (std::string(name) == "memo") EXPECT_GT(policy->rebuild_h2d_bytes(), 0);
    }
  }
}

// With K, V on the host a step's device peak is lower than with them
// resident by at least the whole-sequence K, V of a layer (keep: every
// layer's K, V) less the stream's staging blocks, and by more, up to the dK,
// dV accumulators too, where those are live at the resident run's peak
// (measured: keep 667 KB against 786 KB of K, V and accumulators with one
// intra-op thread, 782 KB with two; the peak's moment moves with the CPU
// kernels' scratch).
TEST(KvOnHost, DevicePeakDropsByTheWholeSequenceKvLessStaging) {
  memory::install_cpu_memory_meter();
  // Wide K, V (no GQA, head dim 16) against a narrow MLP: attention's
  // whole-sequence tensors dominate the step.
  const auto cfg = testing::small_config(4, 4, 16, 8, 2, 31);
  const int64_t B = 1, S = 256, chunk = 32;
  const double c = 8, s = 8, kv = 2.0 * cfg.kv_heads * cfg.head_dim;
  for (const char* name : {"keep", "recompute"}) {
    SCOPED_TRACE(name);
    auto peak = [&](bool on_host) {
      auto model = float64_model(cfg);
      const auto base = memory::memory_stats(at::Device(at::kCPU)).allocated;
      auto policy = prepared(name, 0, chunk, on_host, model, B, S);
      const auto batch = batch_of(cfg.vocab_size, B, S, 3);
      (void)step_peak(model, *policy, batch, chunk, base);  // warm-up
      return step_peak(model, *policy, batch, chunk, base);
    };
    const int64_t resident = peak(false), host = peak(true);
    const double layers_kv = std::string(name) == "keep" ? static_cast<double>(cfg.layers) : 1.0;
    const double whole = B * S * kv * layers_kv * c;
    const double staging = plan::kv_on_host_cost(plan_of(cfg, B, S), name, chunk).staging_bytes;
    std::printf("%s: step peak resident %lld, K and V on the host %lld bytes; bound on the drop %.0f bytes\n", name,
                (long long)resident, (long long)host, whole - staging);
    EXPECT_GE(static_cast<double>(resident - host), whole - staging);
  }
}

// Against the chunk plan's split: the parts --kv-on-host moves off the device
// are, per token, keep's every layer's K, V and the dK, dV accumulators
// (n kv c + kv s), the other policies' layer K, V and accumulators
// (kv c + kv s); the device bytes lose them and gain the staging.
TEST(KvOnHost, PlanMovesTheWholeSequenceKvPartsOffTheDevice) {
  const auto cfg = testing::small_config(4, 2, 4, 20, 3, 31);
  const int64_t B = 2, S = 4096, C = 256;
  auto in = plan_of(cfg, B, S);
  in.compute_bytes = 2;
  in.hardware = plan::hardware_preset("h200-141gb");
  const double c = 2, s = 4, kv = 2.0 * cfg.kv_heads * cfg.head_dim, tokens = B * S;
  for (const char* name : {"keep", "recompute", "offload", "memo"}) {
    SCOPED_TRACE(name);
    const auto m = plan::chunk_memory(in, name, C);
    const auto cost = plan::kv_on_host_cost(in, m);
    const double layers_kv = std::string(name) == "keep" ? static_cast<double>(cfg.layers) : 1.0;
    EXPECT_DOUBLE_EQ(cost.removed_bytes, tokens * kv * (layers_kv * c + s));
    EXPECT_DOUBLE_EQ(cost.device_bytes, m.device_bytes - cost.removed_bytes + cost.staging_bytes);
    EXPECT_LT(cost.device_bytes, m.device_bytes);
  }
}


// `--chunk-tokens auto` with --kv-on-host: the chunk it picks fits the device
// once K, V and the accumulators are in host blocks and the staging added,
// the next unit up does not (or is the whole shard), and it is never below
// the chunk picked with K, V on the device; for keep, whose every layer's
// K, V leave, it is strictly above it on a device the resident plan fills.
TEST(KvOnHost, AutoChunkCountsTheHostBlocks) {
  const auto cfg = model::resolve_model("llama3.2-1b");
  const int64_t B = 1, S = 262144, unit = 1024;
  auto in = plan_of(cfg, B, S);
  in.compute_bytes = 2;
  in.hardware = plan::hardware_preset("h200-141gb");
  for (const char* name : {"keep", "recompute", "offload", "memo"}) {
    SCOPED_TRACE(name);
    // A device between the plans at 8K and 16K tokens: unchunked does not fit.
    in.hardware.device_bytes = std::min(0.5 * (plan::chunk_memory(in, name, 8192).device_bytes +
                                               plan::chunk_memory(in, name, 16384).device_bytes),
                                        0.99 * plan::chunk_memory(in, name, 0).device_bytes);
    ASSERT_FALSE(plan::chunk_memory(in, name, 0).fits_device);
    const int64_t with_kv = plan::auto_chunk_tokens(in, name, unit);
    const int64_t chunk = plan::auto_chunk_tokens_kv_on_host(in, name, unit);
    ASSERT_GT(chunk, 0);
    EXPECT_EQ(chunk % unit, 0);
    auto device = [&](int64_t c) { return plan::kv_on_host_cost(in, plan::chunk_memory(in, name, c)).device_bytes; };
    EXPECT_LE(device(chunk), in.hardware.device_bytes);
    if (chunk + unit < S) EXPECT_GT(device(chunk + unit), in.hardware.device_bytes);
    EXPECT_GE(chunk, with_kv);
    if (std::string(name) == "keep") EXPECT_GT(chunk, with_kv);
  }
  in.hardware.device_bytes = 1e15;  // fits unchunked: the whole shard, K, V with the layer
  EXPECT_EQ(plan::auto_chunk_tokens_kv_on_host(in, "memo", unit), S);
}

// The run's reports under --kv-on-host: the header's whole-sequence list and
// the measured peak split leave out K, V and dK, dV (in host blocks), so a
// recompute run's whole-sequence part is the resident run's less exactly
// B S kv (c + s), what the policy held (every layer's input) unchanged.
TEST(KvOnHost, ReportsLeaveTheHostBlocksOutOfTheWholeSequenceTensors) {
  const auto cfg = model::resolve_model("tiny");
  const auto listed = train::describe_whole_sequence(cfg, at::kFloat, 1, true);
  EXPECT_EQ(listed.find("K and V of the layer"), std::string::npos) << listed;
  EXPECT_EQ(listed.find("dK and dV"), std::string::npos) << listed;
  EXPECT_NE(train::describe_whole_sequence(cfg, at::kFloat).find("K and V of the layer"), std::string::npos);

  auto whole_sequence = [&](bool on_host) {
    train::TrainOptions o;
    o.model = "tiny";
    o.layers = 2;
    o.seq_len = 256;
    o.batch = 1;
    o.steps = 1;
    o.warmup = 0;
    o.device = "cpu";
    o.dtype = "float32";
    o.policy = "recompute";
    o.chunk_tokens = "64";
    o.kv_on_host = on_host;
    o.memory_check = false;
    train::Trainer trainer(o);
    return trainer.run([](const train::StepRecord&) {}).peak_split.whole_sequence_bytes;
  };
  const int64_t kv = 2 * cfg.kv_heads * cfg.head_dim;
  EXPECT_EQ(whole_sequence(false) - whole_sequence(true), 256 * kv * (4 + 4));
}

}  // namespace
}  // namespace memo
