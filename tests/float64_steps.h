// Helpers of the float64 chunked-step tests (test_chunked_program.cpp,
// test_kv_on_host.cpp): a float64 model, a random micro-batch, a plain SGD
// step on the master weights, and one step's peak device bytes (the CPU
// memory meter).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>

#include "memory/device_memory.h"
#include "model/llama.h"
#include "model/skeletal.h"
#include "runtime/policy.h"
#include "train/loss.h"
#include "train/step.h"

namespace memo::testing {

inline model::LlamaModel float64_model(const model::ModelConfig& cfg) {
  model::ModelOptions mo;
  mo.master_dtype = at::kDouble;
  mo.compute_dtype = at::kDouble;
  mo.seed = 17;
  return model::LlamaModel(cfg, mo);
}

// tokens and targets [B, S], one target ignored.
inline train::MicroBatch batch_of(int64_t vocab, int64_t B, int64_t S, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto tokens = at::randint(vocab, {B, S}, gen, at::kLong);
  auto targets = at::randint(vocab, {B, S}, gen, at::kLong);
  targets.index_put_({0, 1}, train::kIgnoreTarget);
  return {tokens, targets};
}

// A plain SGD step on the master weights, so that the next step runs on new
// weights (the same update in both runs).
inline void sgd_step(model::LlamaModel& model) {
  auto master = model.master().named();
  auto grads = model.grads().named();
  for (size_t i = 0; i < master.size(); ++i) master[i].second->sub_(*grads[i].second, 0.05);
  model.refresh_compute();
  model.zero_grads();
}

// memo's host budget (the LP's, unaligned) that holds x, o and lse of all
// but half (at least one) of its swapped units of chunk tokens (0 or at
// least S: whole layers): the rest go to the device tier.
inline double tier_host_budget(const model::ModelConfig& cfg, int64_t B, int64_t S, int64_t chunk) {
  const int64_t unit = chunk > 0 && chunk < S ? chunk : S;
  const int64_t units = cfg.layers * ((S + unit - 1) / unit);
  double fixed = 0;  // one full unit's
  for (const auto& s : model::skeletal_specs(cfg, B, unit, at::kDouble))
    if (s.always_offloaded) fixed += static_cast<double>(s.bytes());
  const int64_t swapped = std::max<int64_t>(0, units - 2);
  return fixed * static_cast<double>(swapped - std::max<int64_t>(1, swapped / 2));
}

// Peak device bytes of one step (the CPU memory meter) above `base`.
inline int64_t step_peak(model::LlamaModel& model, runtime::ActivationPolicy& policy, const train::MicroBatch& batch,
                         int64_t chunk, int64_t base) {
  const at::Device cpu(at::kCPU);
  memory::reset_peak_memory(cpu);
  (void)train::forward_backward(model, policy, batch, 1.0, 64, nullptr, chunk);
  const auto peak = memory::memory_stats(cpu).peak_allocated - base;
  model.zero_grads();
  return peak;
}

}  // namespace memo::testing
