// The fit check under --kv-on-host: K, V and dK, dV leave the device for
// host blocks, so the estimate moves them from the device side (the layer's
// whole-sequence K, V and accumulators, keep's every layer's) to the pinned
// host side, adds the stream's device staging, and names the blocks when the
// host budget is what is short. Checked against a run's measured peak and its
// stream's measured host blocks, and against the same estimate without it.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>

#include "model/config.h"
#include "plan/chunk_plan.h"
#include "plan/kv_on_host_plan.h"
#include "train/fit_check.h"
#include "train/trainer.h"

namespace memo {
namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

train::TrainOptions chunked_options(const std::string& policy, bool kv_on_host) {
  train::TrainOptions o;
  o.seq_len = 512;
  o.batch = 2;
  o.layers = 3;
  o.steps = 2;
  o.warmup = 0;
  o.policy = policy;
  o.alpha = 0.5;
  o.host_memory_gib = 1;
  o.device = "cpu";
  o.dtype = "float32";
  o.chunk_tokens = "64";
  o.kv_on_host = kv_on_host;
  return o;
}

train::FitRequest request_of(const train::TrainOptions& o) {
  auto cfg = model::resolve_model(o.model);
  cfg.layers = o.layers;
  auto r = train::fit_request(o, cfg, c10::Device(c10::DeviceType::CPU), c10::ScalarType::Float);
  r.chunk_tokens = std::stoll(o.chunk_tokens);
  return r;
}

const train::MemoryAvailable kLots{64 * kGiB, "test", 64 * kGiB, "test", 1 * kGiB, "test"};

class KvOnHostFit : public ::testing::TestWithParam<std::string> {};

// A run with --kv-on-host: the estimate's device side bounds the measured
// peak from above within a factor of two, and its K, V host blocks are the
// bytes the stream held at most (the plan's formula, exact).
TEST_P(KvOnHostFit, EstimateBoundsTheMeasuredPeakAndCountsTheHostBlocks) {
  const auto o = chunked_options(GetParam(), true);
  train::Trainer t(o);
  const auto s = t.run([](const train::StepRecord&) {});
  const auto e = train::estimate_fit(request_of(o), kLots);
  // On CPU device_need holds the pool too (the same RAM); the meter counts
  // device allocations only.
  const double estimate = e.device_need - e.reserve - e.pool;
  const double measured = static_cast<double>(s.peak_device_bytes);
  std::printf("%-10s estimate %.2f MiB, measured peak %.2f MiB (ratio %.3f); K, V host blocks %lld measured, %.0f estimated\n",
              GetParam().c_str(), estimate / (1 << 20), measured / (1 << 20), estimate / measured,
              (long long)s.kv_host_bytes, e.kv_host);
  EXPECT_GE(estimate, measured);
  EXPECT_LE(estimate, 2.0 * measured);
  EXPECT_GT(s.kv_host_bytes, 0);
  EXPECT_EQ(e.kv_host, static_cast<double>(s.kv_host_bytes));
  // The policy's own pool (offload, memo) is the rest of the estimate's pool,
  // to the slots' alignment (16 bytes per slot, 11 per unit).
  const double slack = 16.0 * 11.0 * static_cast<double>(o.layers * (o.seq_len / 64));
  EXPECT_NEAR(e.pool - e.kv_host, static_cast<double>(s.host_bytes), slack);
}

// The same request without --kv-on-host: the device side is larger (by at
// least the layer's K, V and accumulators less the staging), and the pool
// smaller by the host blocks less offload's per-layer K, V slots they
// replace.
TEST_P(KvOnHostFit, MovesKvFromTheDeviceSideToTheHostSide) {
  const auto on = train::estimate_fit(request_of(chunked_options(GetParam(), true)), kLots);
  const auto off = train::estimate_fit(request_of(chunked_options(GetParam(), false)), kLots);
  const auto r = request_of(chunked_options(GetParam(), true));
  const double B = 2, S = 512, kv = 2.0 * r.config.kv_heads * r.config.head_dim, c = 4, s = 4;
  const double layers_kv = GetParam() == "keep" ? static_cast<double>(r.config.layers) : 1.0;
  const double staging = B * 64 * kv * std::max(2 * c, c + 2 * s);
  EXPECT_EQ(off.kv_host, 0.0);
  // recompute and memo let a layer's blocks go after its forward and rebuild
  // them: one layer's blocks; keep and offload every layer's.
  const bool rebuilds = GetParam() == "recompute" || GetParam() == "memo";
  EXPECT_DOUBLE_EQ(on.kv_host, B * S * kv * ((rebuilds ? 1.0 : r.config.layers) * c + s));
  EXPECT_GE((off.device_need - off.pool) - (on.device_need - on.pool), B * S * kv * layers_kv * c - staging);
  // Offload's per-layer K, V slots, which the blocks replace (memo has none).
  const double slots = GetParam() == "offload" ? B * S * kv * c * static_cast<double>(r.config.layers) : 0.0;
  EXPECT_NEAR(on.pool - off.pool, on.kv_host - slots, 1.0);
}

INSTANTIATE_TEST_SUITE_P(Policies, KvOnHostFit, ::testing::Values("keep", "recompute", "offload", "memo"));

// A host budget below the blocks: the run does not fit, and the message says
// the blocks are --kv-on-host's.
TEST(KvOnHostFit, AHostBudgetBelowTheBlocksIsNamed) {
  const auto r = request_of(chunked_options("recompute", true));
  const auto e = train::estimate_fit(r, kLots);
  ASSERT_GT(e.kv_host, 0.0);
  train::MemoryAvailable small = kLots;
  small.pool_budget = e.kv_host / 2;
  small.pool_what = "--host-memory-gib 0.0001";
  EXPECT_FALSE(train::estimate_fit(r, small).fits);
  const auto msg = train::fit_problem(r, small);
  EXPECT_NE(msg.find("K, V host blocks of --kv-on-host"), std::string::npos) << msg;
  EXPECT_NE(msg.find("--host-memory-gib 0.0001"), std::string::npos) << msg;
}

// A chunked keep run that does not fit with every layer's K, V on the device
// but does with them on the host: the check suggests --kv-on-host.
TEST(KvOnHostFit, TheCheckSuggestsItWhereItFits) {
  const auto off = request_of(chunked_options("keep", false));
  auto on = off;
  on.kv_on_host = true;
  const double resident = train::estimate_fit(off, kLots).device_need;
  const double streamed = train::estimate_fit(on, kLots).device_need;
  ASSERT_LT(streamed, resident);
  const double room = (resident + streamed) / 2;
  train::MemoryAvailable have{room, "test RAM", room, "test RAM", 1 * kGiB, "test pool"};
  const auto msg = train::fit_problem(off, have);
  EXPECT_NE(msg.find("--kv-on-host fits"), std::string::npos) << msg;
  EXPECT_TRUE(train::estimate_fit(on, have).fits);
  EXPECT_TRUE(train::fit_problem(on, have).empty());
}

}  // namespace
}  // namespace memo
