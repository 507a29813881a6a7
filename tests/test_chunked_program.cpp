// The per-layer program over token chunks (train/chunk_program.cpp,
// docs/chunks.md): in float64 a chunked step gives the unchunked step's loss
// and gradients within 1e-10, step after step, under every policy that runs
// chunked, for chunks that do and do not divide the sequence, GQA, batch > 1
// and 1 to 3 layers; a chunk of at least the sequence is the unchunked step
// bit for bit; and the device peak at 4x the sequence grows only by the
// whole-sequence tensors with chunks (about 4x without), under recompute,
// offload and memo. Evaluation (forward_loss, `memo eval --chunk-tokens`)
// runs its layers in chunks too: the same loss within 1e-10, a lower peak.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <ostream>
#include <cmath>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "memory/device_memory.h"
#include "model/config.h"
#include "model/llama.h"
#include "plan/chunk_plan.h"
#include "plan/hardware.h"
#include "float64_steps.h"
#include "reference.h"
#include "runtime/policy.h"
#include "train/loss.h"
#include "train/step.h"

namespace memo {
namespace {

using testing::batch_of;
using testing::float64_model;
using testing::sgd_step;
using testing::step_peak;

std::unique_ptr<runtime::ActivationPolicy> prepared(const std::string& name, double alpha, int64_t chunk,
                                                    model::LlamaModel& model, int64_t B, int64_t S,
                                                    bool tier = false) {
  runtime::PolicyOptions opts;
  opts.host_memory_bytes = 1 << 30;
  opts.chunk_tokens = chunk;
  if (name == "memo") opts.alpha = alpha;
  if (tier) {
    // memo's device tier: a host one byte over half the swapped units' x, o,
    // lse, so that the other half (at least one unit) holds them on the device.
    opts.host_memory_bytes = testing::tier_host_budget(model.config(), B, S, chunk) + 1;
    opts.device_spare_bytes = 1 << 30;
  }
  auto policy = runtime::make_policy(name, opts);
  policy->prepare(model, B, S);
  return policy;
}

// A policy that passes everything to another and records the units it was
// given, so that a test knows the layers really ran in chunks, and whether
// the K and V each layer got back for its backward are bitwise the ones its
// forward gave (recompute and memo rebuild them, runtime/kv_rebuild.h).
class UnitRecorder final : public runtime::ActivationPolicy {
 public:
  explicit UnitRecorder(std::unique_ptr<runtime::ActivationPolicy> inner) : inner_(std::move(inner)) {}
  std::set<runtime::Unit> saved, restored;
  std::set<int64_t> kv_saved, kv_restored;
  std::set<int64_t> kv_differs;  // layers whose restored K, V are not bitwise the forward's

  std::string name() const override { return inner_->name(); }
  void begin_step(const runtime::StepShape& shape) override { inner_->begin_step(shape); }
  const model::LayerActivations* forward_storage(runtime::Unit u) override { return inner_->forward_storage(u); }
  void save(runtime::Unit u, model::LayerActivations&& acts) override {
    saved.insert(u);
    inner_->save(u, std::move(acts));
  }
  model::LayerActivations restore(runtime::Unit u, const runtime::LayerContext& ctx) override {
    restored.insert(u);
    return inner_->restore(u, ctx);
  }
  void save_kv(int64_t layer, at::Tensor kv) override {
    kv_saved.insert(layer);
    forward_kv_[layer] = kv.clone();
    inner_->save_kv(layer, std::move(kv));
  }
  at::Tensor restore_kv(int64_t layer, const runtime::LayerContext& ctx) override {
    kv_restored.insert(layer);
    auto kv = inner_->restore_kv(layer, ctx);
    if (!at::equal(kv, forward_kv_.at(layer))) kv_differs.insert(layer);
    forward_kv_.erase(layer);
    return kv;
  }
  int64_t rebuild_h2d_bytes() const override { return inner_->rebuild_h2d_bytes(); }
  void end_step() override { inner_->end_step(); }
  runtime::HeldBytes held() const override { return inner_->held(); }

 private:
  std::unique_ptr<runtime::ActivationPolicy> inner_;
  std::map<int64_t, at::Tensor> forward_kv_;  // per layer, a copy of what its forward saved
};

struct ChunkCase {
  const char* policy;
  double alpha;  // memo only
  int64_t chunk;
  int64_t layers;
  int64_t batch;
  bool tier = false;  // memo at alpha 0 with a host short of half its units' x, o, lse
};

std::string case_name(const ChunkCase& c) {
  return std::string(c.policy) + "_a" + std::to_string(static_cast<int>(c.alpha * 100)) + "_c" +
         std::to_string(c.chunk) + "_l" + std::to_string(c.layers) + "_b" + std::to_string(c.batch) +
         (c.tier ? "_tier" : "");
}

void PrintTo(const ChunkCase& c, std::ostream* os) { *os << case_name(c); }

class ChunkedSteps : public ::testing::TestWithParam<ChunkCase> {};

// Three steps of the chunked program against three of the unchunked one under
// keep: each step's loss and every gradient within 1e-10 (relative to the
// gradient's largest entry), on a GQA model (4 query heads over 2 kv heads),
// a sequence of 12 tokens.
TEST_P(ChunkedSteps, EqualTheUnchunkedStepsWithin1e10InFloat64) {
  const auto c = GetParam();
  const int64_t S = 12, loss_chunk = 7;
  const auto cfg = testing::small_config(4, 2, 4, 20, c.layers, 31);
  auto chunked = float64_model(cfg);
  auto whole = float64_model(cfg);
  UnitRecorder chunked_policy(prepared(c.policy, c.alpha, c.chunk, chunked, c.batch, S, c.tier));
  auto whole_policy = prepared("keep", 0, 0, whole, c.batch, S);
  for (int step = 0; step < 3; ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
    const auto batch = batch_of(cfg.vocab_size, c.batch, S, 23 + step);
    auto got = train::forward_backward(chunked, chunked_policy, batch, 1.0, loss_chunk, nullptr, c.chunk);
    auto want = train::forward_backward(whole, *whole_policy, batch, 1.0, loss_chunk);
    EXPECT_EQ(got.count, want.count);
    EXPECT_NEAR(got.total(), want.total(), 1e-10 * std::max(1.0, std::abs(want.total())));
    auto a = chunked.grads().named();
    auto b = whole.grads().named();
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      const double scale = b[i].second->abs().max().item<double>();
      ASSERT_GT(scale, 0.0) << b[i].first;  // a real gradient
      EXPECT_LE((*a[i].second - *b[i].second).abs().max().item<double>(), 1e-10 * std::max(1.0, scale))
          << "gradient of " << a[i].first;
    }
    sgd_step(chunked);
    sgd_step(whole);
  }
  // Every chunk of every layer was its own unit, forward and backward, and
  // every layer's K and V went through the policy.
  std::set<runtime::Unit> units;
  std::set<int64_t> layers;
  for (int64_t l = 0; l < c.layers; ++l) {
    layers.insert(l);
    for (int64_t k = 0; k * c.chunk < S; ++k) units.insert(runtime::Unit{l, k});
  }
  EXPECT_EQ(chunked_policy.saved, units);
  EXPECT_EQ(chunked_policy.restored, units);
  EXPECT_EQ(chunked_policy.kv_saved, layers);
  EXPECT_EQ(chunked_policy.kv_restored, layers);
  // Kept, copied back or rebuilt (recompute, memo), bit for bit the forward's.
  EXPECT_TRUE(chunked_policy.kv_differs.empty()) << *chunked_policy.kv_differs.begin();
}

std::vector<ChunkCase> chunk_cases() {
  std::vector<ChunkCase> out;
  for (const auto& [policy, alpha] : std::vector<std::pair<const char*, double>>{
           {"keep", 0}, {"recompute", 0}, {"offload", 1}, {"memo", 0.0}, {"memo", 0.37}, {"memo", 1.0}}) {
    out.push_back({policy, alpha, 4, 1, 2});  // 3 chunks of 4
    out.push_back({policy, alpha, 5, 3, 2});  // 5, 5, 2
    out.push_back({policy, alpha, 1, 2, 1});  // one token per chunk
    out.push_back({policy, alpha, 7, 2, 3});  // 7, 5; batch 3
  }
  // memo's device tier: some units' x, o, lse on the device, not the host.
  out.push_back({"memo", 0.0, 4, 3, 2, true});  // 9 units, 3 of 7 swapped on the device
  out.push_back({"memo", 0.0, 5, 2, 2, true});  // 5, 5, 2: the last chunk's unit among them
  return out;
}

INSTANTIATE_TEST_SUITE_P(Policies, ChunkedSteps, ::testing::ValuesIn(chunk_cases()),
                         [](const auto& info) { return case_name(info.param); });

// Chunked memo in bfloat16 (the GPU's compute dtype, float32 master
// weights), where a rebuild that rounded differently from the forward would
// show: every layer's K and V rebuilt in backward are bitwise the forward's,
// at alpha 0, 0.37 and 1, chunks of 5 over 12 tokens (5, 5, 2), batch 2, 3
// layers; and the rebuild copied back exactly the plan's rebuild_h2d_bytes
// per step (every swapped chunk's input, h c per token; the last two units'
// inputs are still on the device).
TEST(ChunkedProgram, MemoRebuildsKvBitwiseInBfloat16WithThePlansCopies) {
  const int64_t S = 12, B = 2, chunk = 5, steps = 2;
  const auto cfg = testing::small_config(4, 2, 4, 20, 3, 31);
  for (double alpha : {0.0, 0.37, 1.0}) {
    SCOPED_TRACE("alpha " + std::to_string(alpha));
    model::ModelOptions mo;
    mo.master_dtype = at::kFloat;
    mo.compute_dtype = at::kBFloat16;
    mo.seed = 17;
    model::LlamaModel model(cfg, mo);
    UnitRecorder policy(prepared("memo", alpha, chunk, model, B, S));
    for (int step = 0; step < steps; ++step) {
      (void)train::forward_backward(model, policy, batch_of(cfg.vocab_size, B, S, 5 + step), 1.0, 7, nullptr, chunk);
      model.zero_grads();
    }
    EXPECT_EQ(policy.kv_restored, (std::set<int64_t>{0, 1, 2}));
    EXPECT_TRUE(policy.kv_differs.empty()) << "layer " << *policy.kv_differs.begin();
    plan::PlanInputs in;
    in.model = model::to_plan_shape(cfg);
    in.seq_len = S;
    in.batch = B;
    in.compute_bytes = 2;
    in.hardware = plan::hardware_preset("h200-141gb");  // validated; the bytes do not depend on it
    const double planned = plan::chunk_memory(in, "memo", chunk, alpha).rebuild_h2d_bytes;
    // 3 layers x 3 chunks, the last two units held: 7 inputs of 5, 5, 2 tokens.
    EXPECT_EQ(planned, static_cast<double>(B * (5 + 5 + 2 + 5 + 5 + 2 + 5) * cfg.hidden * 2));
    EXPECT_EQ(static_cast<double>(policy.rebuild_h2d_bytes()), steps * planned);
  }
}

// A chunk of at least the sequence is one chunk: the unchunked program, the
// same doubles.
TEST(ChunkedProgram, AChunkOfTheWholeSequenceIsTheUnchunkedStepBitForBit) {
  const int64_t B = 2, S = 9;
  const auto cfg = testing::small_config(4, 2, 4, 20, 2, 31);
  for (const char* name : {"keep", "recompute", "offload", "memo"}) {
    auto a = float64_model(cfg);
    auto b = float64_model(cfg);
    auto pa = prepared(name, 0, S, a, B, S);
    auto pb = prepared(name, 0, 0, b, B, S);
    const auto batch = batch_of(cfg.vocab_size, B, S, 5);
    EXPECT_EQ(train::forward_backward(a, *pa, batch, 1.0, 4, nullptr, S + 3).total(),
              train::forward_backward(b, *pb, batch, 1.0, 4).total());
    auto ga = a.grads().named();
    auto gb = b.grads().named();
    for (size_t i = 0; i < ga.size(); ++i) EXPECT_TRUE(at::equal(*ga[i].second, *gb[i].second)) << ga[i].first;
  }
}

class ChunkedPeak : public ::testing::TestWithParam<const char*> {};

// At 4x the sequence with a fixed chunk, a step's device peak (above what
// was allocated before the policy was prepared, so that its rounding buffers
// count) grows by no more than the tensors that span the whole sequence: the
// hidden state across a layer boundary and around the loss (x, y, dy, dx,
// the final norm's output, the loss gradient), K and V of a layer and their
// float accumulators, the RoPE rows and the loss's per-token vectors, and
// what the policy holds over the sequence (recompute: every layer's input;
// offload, memo: the inputs of the two units in flight, each a view of its
// layer's input, and a second layer's K and V while one is copied out or
// prefetched), plus a small slack. Without chunks a layer's whole skeletal
// set (in a buffer or recomputed) and its backward transients ([S x ffn]
// wide) span the sequence, and the peak grows about 4x.
TEST_P(ChunkedPeak, GrowsOnlyByTheWholeSequenceTensors) {
  memory::install_cpu_memory_meter();
  const std::string name = GetParam();
  // A wide MLP (ffn 32x hidden) makes the per-token skeletal set large
  // against the whole-sequence tensors.
  const auto cfg = testing::small_config(2, 1, 4, 256, 2, 31);
  const int64_t B = 1, S = 256, chunk = 32;
  const int64_t c = 8, s = 8;  // float64 compute and statistics bytes
  const int64_t h = cfg.hidden, kv = 2 * cfg.kv_heads * cfg.head_dim;
  const int64_t policy_per_token = name == "recompute" ? cfg.layers * h * c : 2 * h * c + kv * c;
  const int64_t whole_per_token = policy_per_token
                                  + 6 * h * c           // x, y / dy, dx; final norm output; loss gradient
                                  + kv * c + kv * s     // K, V and dK, dV of one layer
                                  + cfg.head_dim * c    // RoPE cos and sin rows
                                  + 2 * s + 64;         // norm statistics; the loss's per-token vectors
  const int64_t slack = 64 * 1024;

  auto peaks = [&](int64_t chunk_tokens) {
    std::vector<int64_t> out;
    for (int64_t len : {S, 4 * S}) {
      auto model = float64_model(cfg);
      const auto base = memory::memory_stats(at::Device(at::kCPU)).allocated;
      auto policy = prepared(name, 0.0, chunk_tokens, model, B, len);
      const auto batch = batch_of(cfg.vocab_size, B, len, 3);
      (void)step_peak(model, *policy, batch, chunk_tokens, base);  // warm-up (lazy one-offs)
      out.push_back(step_peak(model, *policy, batch, chunk_tokens, base));
    }
    return out;
  };
  const auto chunked = peaks(chunk);
  const auto whole = peaks(0);
  const int64_t bound = 3 * S * B * whole_per_token + slack;
  std::printf("%s: peak above the start: chunked %lld -> %lld bytes, unchunked %lld -> %lld bytes; bound on the "
              "chunked growth %lld bytes\n",
              name.c_str(), (long long)chunked[0], (long long)chunked[1], (long long)whole[0], (long long)whole[1],
              (long long)bound);
  EXPECT_LE(chunked[1] - chunked[0], bound) << "chunked peaks " << chunked[0] << " -> " << chunked[1] << " bytes";
  // Without chunks: about 4x, and far beyond the bound.
  EXPECT_GE(static_cast<double>(whole[1]), 3.5 * static_cast<double>(whole[0]))
      << "unchunked peaks " << whole[0] << " -> " << whole[1];
  EXPECT_GT(whole[1] - whole[0], 2 * bound);
}

INSTANTIATE_TEST_SUITE_P(Policies, ChunkedPeak, ::testing::Values("recompute", "offload", "memo"),
                         [](const auto& info) { return std::string(info.param); });

// Evaluation's forward (forward_loss: `memo eval`) runs each layer in
// chunks when asked, as training's forward does: in float64 the loss equals
// whole layers' within 1e-10, for chunks that do and do not divide the
// sequence, with GQA and batch > 1, and the token count is the same.
TEST(ChunkedEvaluation, LossEqualsWholeLayersWithin1e10InFloat64) {
  const auto cfg = testing::small_config(4, 2, 4, 20, 3, 31);
  auto model = float64_model(cfg);
  const int64_t B = 2, S = 24;
  const auto batch = batch_of(cfg.vocab_size, B, S, 11);
  const auto whole = train::forward_loss(model, batch, 7);
  for (int64_t chunk : {1, 5, 8, 23}) {
    const auto chunked = train::forward_loss(model, batch, 7, chunk);
    EXPECT_EQ(chunked.count, whole.count) << "chunk " << chunk;
    EXPECT_NEAR(chunked.total(), whole.total(), 1e-10 * std::abs(whole.total())) << "chunk " << chunk;
  }
}

// The peak of one evaluation forward (the CPU memory meter) above what is
// allocated before it.
int64_t eval_peak(model::LlamaModel& model, const train::MicroBatch& batch, int64_t chunk) {
  const at::Device cpu(at::kCPU);
  const auto base = memory::memory_stats(cpu).allocated;
  memory::reset_peak_memory(cpu);
  (void)train::forward_loss(model, batch, 64, chunk).total();
  return memory::memory_stats(cpu).peak_allocated - base;
}

// At a long sequence a chunked evaluation's peak is a fraction of whole
// layers': with a wide MLP (ffn 32x hidden) a whole layer's transients (the
// MLP's [S x ffn] gate, up and activation) span the sequence; in chunks they
// span 32 tokens, and what spans the sequence is the hidden state, one
// layer's K and V, the final norm's output and the loss's per-token vectors.
TEST(ChunkedEvaluation, PeakIsLowerAtALongSequence) {
  memory::install_cpu_memory_meter();
  const auto cfg = testing::small_config(2, 1, 4, 256, 2, 31);
  auto model = float64_model(cfg);
  const auto batch = batch_of(cfg.vocab_size, 1, 1024, 3);
  (void)eval_peak(model, batch, 0);  // warm-up (lazy one-offs)
  const auto whole = eval_peak(model, batch, 0);
  const auto chunked = eval_peak(model, batch, 32);
  std::printf("evaluation peak above the start at 1024 tokens: whole layers %lld bytes, chunks of 32 %lld bytes\n",
              (long long)whole, (long long)chunked);
  EXPECT_LT(chunked, whole / 3) << "whole " << whole << ", chunked " << chunked;
}

}  // namespace
}  // namespace memo
