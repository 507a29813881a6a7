// The swapping policies: gradients equal keep's in float64 for every alpha,
// layer count and shape; the bytes held between forward and backward; the
// host pool to the byte; a clear error when the host cannot hold the pool;
// the Chrome trace.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <set>

#include "core/error.h"
#include "memory/device_memory.h"
#include "memory/host_pool.h"
#include "model/llama.h"
#include "reference.h"
#include "runtime/policy.h"
#include "runtime/trace.h"
#include "train/step.h"

namespace memo {
namespace {

struct Case {
  int64_t layers;
  double alpha;
  int64_t batch, seq;
  int64_t heads, kv_heads;
};

std::string case_name(const Case& c) {
  return "L" + std::to_string(c.layers) + "_a" + std::to_string(static_cast<int>(c.alpha * 100)) + "_B" +
         std::to_string(c.batch) + "_S" + std::to_string(c.seq) + "_h" + std::to_string(c.heads) + "kv" +
         std::to_string(c.kv_heads);
}

model::LlamaModel make_model(const Case& c) {
  auto cfg = testing::small_config(c.heads, c.kv_heads, 4, 20, c.layers, 29);
  model::ModelOptions mo;
  mo.master_dtype = at::kDouble;
  mo.compute_dtype = at::kDouble;
  mo.seed = 3;
  return model::LlamaModel(cfg, mo);
}

train::MicroBatch batch_for(const Case& c) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(77);
  return {at::randint(29, {c.batch, c.seq}, gen, at::kLong), at::randint(29, {c.batch, c.seq}, gen, at::kLong)};
}

std::vector<at::Tensor> grads_with(const Case& c, const std::string& policy_name,
                                   runtime::PolicyOptions opts = {}) {
  auto model = make_model(c);
  opts.host_memory_bytes = 1 << 30;
  if (policy_name == "memo" && !opts.alpha) opts.alpha = c.alpha;
  auto policy = runtime::make_policy(policy_name, opts);
  policy->prepare(model, c.batch, c.seq);
  auto b = batch_for(c);
  train::forward_backward(model, *policy, b, 1.0);
  std::vector<at::Tensor> out;
  for (auto& [n, t] : model.grads().named()) out.push_back(t->clone());
  return out;
}

double max_diff(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b) {
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, testing::max_rel_error(a[i], b[i]));
  return worst;
}

class SwapGradients : public ::testing::TestWithParam<Case> {};

TEST_P(SwapGradients, MemoEqualsKeepInFloat64) {
  const auto c = GetParam();
  EXPECT_LE(max_diff(grads_with(c, "memo"), grads_with(c, "keep")), 1e-10);
}

class OffloadGradients : public ::testing::TestWithParam<Case> {};

TEST_P(OffloadGradients, OffloadEqualsKeepInFloat64) {
  const auto c = GetParam();
  EXPECT_LE(max_diff(grads_with(c, "offload"), grads_with(c, "keep")), 1e-10);
}

INSTANTIATE_TEST_SUITE_P(Cases, OffloadGradients,
                         ::testing::Values(Case{1, 1.0, 2, 9, 4, 2}, Case{2, 1.0, 2, 9, 4, 2},
                                           Case{3, 1.0, 1, 13, 4, 1}, Case{6, 1.0, 3, 7, 2, 2}),
                         [](const auto& info) { return case_name(info.param); });

std::vector<Case> cases() {
  std::vector<Case> out;
  for (int64_t layers : {1, 2, 3, 6})
    for (double alpha : {0.0, 0.37, 1.0}) out.push_back({layers, alpha, 2, 9, 4, 2});
  out.push_back({3, 0.37, 1, 13, 4, 1});  // MQA, batch 1
  out.push_back({6, 0.5, 3, 7, 2, 2});    // MHA, batch 3
  return out;
}

INSTANTIATE_TEST_SUITE_P(Cases, SwapGradients, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return case_name(info.param); });

TEST(SwapGradients, ResidentShareEqualsKeep) {
  Case c{6, 0.25, 2, 11, 4, 2};
  runtime::PolicyOptions opts;
  opts.alpha = 0.25;
  opts.device_spare_bytes = 1e9;  // room for every remaining token
  EXPECT_LE(max_diff(grads_with(c, "memo", opts), grads_with(c, "keep")), 1e-10);
}

TEST(SwapMemory, MemoHoldsAtMostRecomputePlusTwoRoundingBuffers) {
  Case c{6, 0.37, 2, 9, 4, 2};
  auto run = [&](const std::string& name) {
    auto model = make_model(c);
    runtime::PolicyOptions opts;
    opts.alpha = c.alpha;
    opts.host_memory_bytes = 1 << 30;
    auto p = runtime::make_policy(name, opts);
    p->prepare(model, c.batch, c.seq);
    train::forward_backward(model, *p, batch_for(c), 1.0);
    return p->peak_held();
  };
  auto memo = run("memo");
  auto rec = run("recompute");
  auto cfg = make_model(c).config();
  int64_t set_bytes = 0;
  for (const auto& s : model::skeletal_specs(cfg, c.batch, c.seq, at::kDouble)) set_bytes += s.bytes();
  EXPECT_LE(memo.device, rec.device + 2 * set_bytes);
  EXPECT_GT(memo.host, 0);
}

TEST(SwapMemory, HostPoolEqualsThePlanToTheByte) {
  Case c{6, 0.37, 2, 9, 4, 2};
  auto model = make_model(c);
  runtime::PolicyOptions opts;
  opts.alpha = c.alpha;
  opts.host_memory_bytes = 1 << 30;
  auto p = runtime::make_policy("memo", opts);
  p->prepare(model, c.batch, c.seq);
  // By hand: 4 swapped layers (the last two stay); per layer x, o, lse whole
  // and floor(0.37 * 9) = 3 tokens of the other eight tensors, each slot
  // rounded up to 16 bytes; float64 everywhere.
  const int64_t B = 2, S = 9, h = 16, qkv = (4 + 2 * 2) * 4, f = 20, nh = 4, t = 3;
  auto a16 = [](int64_t b) { return (b + 15) / 16 * 16; };
  const int64_t per_layer = a16(B * S * h * 8) + a16(B * t * h * 8) + a16(B * t * 8) + a16(B * t * qkv * 8) +
                            a16(B * S * h * 8) + a16(B * nh * S * 8) + a16(B * t * h * 8) + a16(B * t * h * 8) +
                            a16(B * t * 8) + a16(B * t * 2 * f * 8) + a16(B * t * f * 8);
  EXPECT_EQ(p->held().host, 4 * per_layer);
  EXPECT_NEAR(*p->alpha(), 3.0 / 9.0, 1e-12);
}

// Many ranks: memo asks for agreement on the alpha it measured (once, in
// prepare) and uses the agreed one; an explicit --alpha asks nothing.
TEST(SwapSplit, MemoUsesTheAlphaTheRanksAgreeOn) {
  Case c{6, 0.37, 2, 9, 4, 2};
  for (double agreed : {2.0 / 9.0, 5.0 / 9.0}) {
    auto model = make_model(c);
    runtime::PolicyOptions opts;
    opts.host_memory_bytes = 1 << 30;
    std::vector<double> asked;
    opts.agree_alpha = [&](double mine) {
      asked.push_back(mine);
      return agreed;
    };
    auto p = runtime::make_policy("memo", opts);
    p->prepare(model, c.batch, c.seq);
    ASSERT_EQ(asked.size(), 1u);
    EXPECT_GE(asked[0], 0.0);
    EXPECT_NEAR(*p->alpha(), agreed, 1e-12);
  }
  auto model = make_model(c);
  runtime::PolicyOptions opts;
  opts.host_memory_bytes = 1 << 30;
  opts.alpha = c.alpha;
  int asked = 0;
  opts.agree_alpha = [&](double mine) { return ++asked, mine; };
  runtime::make_policy("memo", opts)->prepare(model, c.batch, c.seq);
  EXPECT_EQ(asked, 0);
}

TEST(SwapMemory, TooSmallHostPoolFailsBeforeTrainingWithWhatWouldFit) {
  Case c{6, 0.37, 2, 9, 4, 2};
  auto model = make_model(c);
  runtime::PolicyOptions opts;
  opts.alpha = 1.0;
  opts.host_memory_bytes = 20000;  // x, o, lse of 4 layers need 4 * 5472 bytes
  auto p = runtime::make_policy("memo", opts);
  try {
    p->prepare(model, c.batch, c.seq);
    FAIL() << "expected a HostMemoryError";
  } catch (const memory::HostMemoryError& e) {  // an InputError: `memo train` exits 2
    std::string msg = e.what();
    EXPECT_NE(msg.find("host memory too small"), std::string::npos) << msg;
    EXPECT_NE(msg.find("recompute"), std::string::npos) << msg;
    // The figures `memo bench` puts in the row: alpha 1 moves every skeletal
    // tensor of the 4 swapped layers.
    int64_t set_bytes = 0;
    for (const auto& s : model::skeletal_specs(model.config(), c.batch, c.seq, at::kDouble)) set_bytes += s.bytes();
    EXPECT_DOUBLE_EQ(e.needed_bytes, 4.0 * static_cast<double>(set_bytes));
    EXPECT_DOUBLE_EQ(e.budget_bytes, 20000.0);
  }
}

// The host pool is host memory: on a CPU run the device figures (the CPU
// meter) do not count it, and it goes back to the system with the policy.
TEST(SwapMemory, HostPoolIsNotDeviceMemoryAndGoesWithThePolicy) {
  memory::install_cpu_memory_meter();
  Case c{6, 0.37, 2, 9, 4, 2};
  for (const char* name : {"offload", "memo"}) {
    SCOPED_TRACE(name);
    auto model = make_model(c);
    runtime::PolicyOptions opts;
    opts.alpha = c.alpha;
    opts.host_memory_bytes = 1 << 30;
    const auto device_before = memory::memory_stats(at::kCPU).allocated;
    const auto host_before = memory::HostPool::live_bytes();
    {
      auto p = runtime::make_policy(name, opts);
      p->prepare(model, c.batch, c.seq);
      const auto held = p->held();
      ASSERT_GT(held.host, 0);
      // On the device: the two rounding buffers, nothing else.
      EXPECT_EQ(memory::memory_stats(at::kCPU).allocated - device_before, held.device);
      // On the host: the pool, to the page.
      const int64_t pool = memory::HostPool::live_bytes() - host_before;
      EXPECT_GE(pool, held.host);
      EXPECT_LT(pool, held.host + ::sysconf(_SC_PAGESIZE));
      EXPECT_EQ(p->host_pinning().bytes, 0);  // CPU: not pinned
      train::forward_backward(model, *p, batch_for(c), 1.0);
    }
    EXPECT_EQ(memory::HostPool::live_bytes(), host_before);
  }
}

TEST(SwapTrace, ChromeTraceHasSpansOnAllThreeStreams) {
  Case c{4, 0.5, 1, 8, 2, 2};
  auto model = make_model(c);
  runtime::TraceRecorder trace(at::kCPU);
  trace.set_enabled(true);
  runtime::PolicyOptions opts;
  opts.alpha = c.alpha;
  opts.host_memory_bytes = 1 << 30;
  opts.trace = &trace;
  auto p = runtime::make_policy("memo", opts);
  p->prepare(model, c.batch, c.seq);
  train::forward_backward(model, *p, batch_for(c), 1.0, 0, &trace);
  trace.flush();
  auto j = nlohmann::json::parse(trace.chrome_json());
  std::set<std::string> lanes;
  for (const auto& e : j["traceEvents"])
    if (e["ph"] == "X") {
      lanes.insert(e["cat"].get<std::string>());
      EXPECT_GE(e["dur"].get<double>(), 0.0);
    }
  EXPECT_EQ(lanes, (std::set<std::string>{"compute", "device-to-host", "host-to-device"}));
}

}  // namespace
}  // namespace memo
