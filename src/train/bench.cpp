// The policy benchmark: one model per policy from the same seed, the same
// batch, timed forward+backward, gradients compared with keep's.
#include "train/bench.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <chrono>

#include "core/error.h"
#include "core/units.h"
#include "memory/device_memory.h"
#include "memory/planned_allocator.h"
#include "model/llama.h"
#include "runtime/policy.h"
#include "runtime/trace.h"
#include "train/data.h"
#include "train/fit_check.h"
#include "train/flops.h"
#include "train/memory_planning.h"
#include "train/step.h"
#include "train/trainer.h"

namespace memo::train {

namespace {

double max_rel_diff(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& ref) {
  double worst = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double scale = ref[i].abs().max().item<double>();
    const double diff = (a[i] - ref[i]).abs().max().item<double>();
    worst = std::max(worst, scale > 0 ? diff / scale : diff);
  }
  return worst;
}

}  // namespace

std::vector<BenchRow> run_bench(const BenchOptions& options,
                                const std::function<void(const std::string&)>& progress) {
  const auto& o = options.run;
  o.validate();
  require_input(options.steps > 0, "bench steps must be positive, got ", options.steps);
  require_input(!options.policies.empty(), "bench: no policies given");
  for (const auto& p : options.policies) runtime::make_policy(p);  // unknown names fail here
  auto cfg = model::resolve_model(o.model);
  if (o.layers > 0) cfg.layers = o.layers;
  cfg.validate(o.model);
  const auto ex = resolve_execution(o);
  if (o.memory_check) check_bench_fit(o, options.policies, cfg, ex.device, ex.compute_dtype);  // before allocating
  if (ex.device.is_cpu()) memory::install_cpu_memory_meter();
  // Before anything is allocated on the device (CUDA: the pluggable allocator).
  if (options.planned_memory) memory::PlannedAllocator::install(ex.device);

  auto batch = make_synthetic_source({cfg.vocab_size, 0, o.seed}, o.seq_len)->next(o.batch, o.seq_len);
  batch.tokens = batch.tokens.to(ex.device);
  batch.targets = batch.targets.to(ex.device);
  const double flops = model_flops_per_step(cfg, o.batch, o.seq_len);

  std::vector<BenchRow> rows;
  std::optional<std::vector<at::Tensor>> keep_grads;
  std::optional<double> keep_time;
  for (const auto& name : options.policies) {
    BenchRow row;
    row.policy = name;
    progress(name + ": building the model and the policy");
    try {
      model::ModelOptions mo;
      mo.device = ex.device;
      mo.compute_dtype = ex.compute_dtype;
      mo.attention = o.attention;
      mo.seed = o.seed;
      model::LlamaModel model(cfg, mo);
      runtime::TraceRecorder trace(ex.device);
      runtime::PolicyOptions po;
      if (o.alpha >= 0) po.alpha = o.alpha;
      po.host_memory_bytes = o.host_memory_gib * static_cast<double>(1ll << 30);
      po.trace = &trace;
      auto policy = runtime::make_policy(name, po);
      policy->prepare(model, o.batch, o.seq_len);
      row.alpha = policy->alpha();

      // Untimed first step: warm-up, and the gradients to compare.
      forward_backward(model, *policy, batch, 1.0, o.loss_chunk);
      memory::synchronize(ex.device);
      std::vector<at::Tensor> grads;
      for (auto& [n, t] : model.grads().named()) grads.push_back(t->to(at::kCPU, at::kFloat));
      if (name == "keep") keep_grads = grads;
      if (keep_grads) row.max_grad_rel_diff = max_rel_diff(grads, *keep_grads);
      grads.clear();

      // Planned memory: profile one step, plan it, serve the timed steps from the arena.
      memory::PlannedAllocator* planner = nullptr;
      if (options.planned_memory) {
        planner = memory::PlannedAllocator::instance();
        planner->start_recording();
        planner->begin_step();
        forward_backward(model, *policy, batch, 1.0, o.loss_chunk);
        model.zero_grads();
        planner->end_step();
        auto p = plan_profiled_step(planner->stop_recording(), planner->alignment());
        planner->arm(p);
        planner->reset_counters();
        row.arena_bytes = p.arena_bytes;
        row.plan_fallbacks = 0;
      }
      std::vector<double> times;
      memory::reset_peak_memory(ex.device);
      for (int64_t s = 0; s < options.steps; ++s) {
        const bool tracing = !options.trace.empty() && s == options.steps - 1;
        trace.set_enabled(tracing);
        model.zero_grads();
        memory::synchronize(ex.device);
        if (planner) planner->begin_step();
        const auto before = memory::memory_stats(ex.device);
        const auto t0 = std::chrono::steady_clock::now();
        forward_backward(model, *policy, batch, 1.0, o.loss_chunk, tracing ? &trace : nullptr);
        memory::synchronize(ex.device);
        const auto after = memory::memory_stats(ex.device);
        row.device_mallocs_per_step = after.device_mallocs - before.device_mallocs;
        if (planner) {
          planner->end_step();
          *row.plan_fallbacks += planner->stats().fallback;
          planner->reset_counters();
        }
        times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        progress(strf("%s: step %lld/%lld %s", name.c_str(), (long long)s + 1, (long long)options.steps,
                      format_seconds(times.back()).c_str()));
      }
      if (!options.trace.empty()) {
        trace.flush();
        trace.write(options.trace + "." + name + ".json");
      }
      std::sort(times.begin(), times.end());
      row.step_s = times[times.size() / 2];
      const auto mem = memory::memory_stats(ex.device);
      row.peak_allocated_bytes = mem.peak_allocated;
      row.peak_reserved_bytes = mem.peak_reserved;
      row.host_bytes = policy->peak_held().host;
      if (ex.peak_flops > 0) row.mfu = flops / (row.step_s * ex.peak_flops);
      if (name == "keep") keep_time = row.step_s;
      if (planner) planner->disarm();
    } catch (const c10::OutOfMemoryError&) {
      // Out of device memory is a result of this row, not a failure of the
      // bench; reserved minus allocated at that point tells a fragmentation
      // failure from a real shortage.
      row.status = "oom";
      const auto mem = memory::memory_stats(ex.device);
      row.peak_allocated_bytes = mem.peak_allocated;
      row.peak_reserved_bytes = mem.peak_reserved;
      progress(name + ": out of memory");
    }
    rows.push_back(row);
  }
  for (auto& r : rows)
    if (keep_time && r.status == "ok") r.ratio_to_keep = r.step_s / *keep_time;
  return rows;
}

}  // namespace memo::train
