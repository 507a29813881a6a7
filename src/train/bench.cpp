// The policy benchmark: one model per policy from the same seed, the same
// batch, timed forward+backward, gradients compared with keep's; on many
// ranks, memo train's step on the mesh per row with its bytes moved.
#include "train/bench.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <chrono>
#include <new>

#include "core/error.h"
#include "core/units.h"
#include "dist/context.h"
#include "memory/device_memory.h"
#include "memory/host_pool.h"
#include "memory/planned_allocator.h"
#include "model/llama.h"
#include "runtime/policy.h"
#include "runtime/trace.h"
#include "train/chunking.h"
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

// A model's gradients copied to host memory outside the device's allocator:
// on CPU that allocator is the "device" (the memory meter), and keep's
// gradients, held for the later rows' comparison, would count in their peaks.
struct HostGrads {
  memory::HostPool pool;
  std::vector<at::Tensor> grads;  // float32 views of the pool, one per parameter
};

HostGrads copy_grads(model::LlamaModel& model) {
  int64_t bytes = 0;
  for (auto& [n, t] : model.grads().named()) bytes += t->numel() * 4;
  HostGrads h{memory::HostPool(bytes, at::kCPU), {}};
  int64_t offset = 0;
  for (auto& [n, t] : model.grads().named()) {
    auto view = h.pool.tensor().narrow(0, offset, t->numel() * 4).view(at::kFloat).view(t->sizes());
    view.copy_(*t);
    h.grads.push_back(view);
    offset += t->numel() * 4;
  }
  return h;
}

// What every row shares.
struct BenchContext {
  const BenchOptions& options;
  const model::ModelConfig& cfg;
  const Execution& ex;
  const MicroBatch& batch;
  double flops = 0;
  double host_budget_bytes = 0;
  std::optional<HostGrads>& keep_grads;
  const std::function<void(const std::string&)>& progress;
};

// The untimed first step: warm-up, the row's loss, and its gradients
// compared with keep's (keep's kept for the later rows).
void first_step(const BenchContext& c, model::LlamaModel& model, runtime::ActivationPolicy& policy, BenchRow& row) {
  row.loss = forward_backward(model, policy, c.batch, 1.0, c.options.run.loss_chunk, nullptr, row.chunk_tokens).mean();
  memory::synchronize(c.ex.device);
  auto grads = copy_grads(model);
  if (c.keep_grads) {
    row.max_grad_rel_diff = max_rel_diff(grads.grads, c.keep_grads->grads);
  } else if (row.policy == "keep") {
    c.keep_grads = std::move(grads);
    row.max_grad_rel_diff = 0.0;
  }
}

// Planned memory: one step profiled and planned, the arena armed for the
// timed steps; nullptr without --planned-memory.
memory::PlannedAllocator* arm_planned_memory(const BenchContext& c, model::LlamaModel& model,
                                             runtime::ActivationPolicy& policy, BenchRow& row) {
  if (!c.options.planned_memory) return nullptr;
  auto* planner = memory::PlannedAllocator::instance();
  planner->start_recording();
  planner->begin_step();
  forward_backward(model, policy, c.batch, 1.0, c.options.run.loss_chunk, nullptr, row.chunk_tokens);
  model.zero_grads();
  planner->end_step();
  auto p = plan_profiled_step(planner->stop_recording(), planner->alignment());
  planner->arm(p);
  planner->reset_counters();
  row.arena_bytes = p.arena_bytes;
  row.plan_fallbacks = 0;
  return planner;
}

// PREFIX.POLICY[.cC].json: a row's Chrome trace.
std::string trace_path(const std::string& prefix, const BenchRow& row) {
  return prefix + "." + row.policy + (row.chunk_tokens > 0 ? ".c" + std::to_string(row.chunk_tokens) : "") + ".json";
}

// The timed steps (the last one traced with --trace): their median time,
// device mallocs and plan fallbacks.
void timed_steps(const BenchContext& c, model::LlamaModel& model, runtime::ActivationPolicy& policy,
                 runtime::TraceRecorder& trace, memory::PlannedAllocator* planner, BenchRow& row) {
  std::vector<double> times;
  memory::reset_peak_memory(c.ex.device);
  for (int64_t s = 0; s < c.options.steps; ++s) {
    const bool tracing = !c.options.trace.empty() && s == c.options.steps - 1;
    trace.set_enabled(tracing);
    model.zero_grads();
    memory::synchronize(c.ex.device);
    if (planner) planner->begin_step();
    const auto before = memory::memory_stats(c.ex.device);
    const auto t0 = std::chrono::steady_clock::now();
    forward_backward(model, policy, c.batch, 1.0, c.options.run.loss_chunk, tracing ? &trace : nullptr,
                     row.chunk_tokens);
    memory::synchronize(c.ex.device);
    const auto after = memory::memory_stats(c.ex.device);
    row.device_mallocs_per_step = after.device_mallocs - before.device_mallocs;
    if (planner) {
      planner->end_step();
      *row.plan_fallbacks += planner->stats().fallback;
      planner->reset_counters();
    }
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    c.progress(strf("%s: step %lld/%lld %s", row.policy.c_str(), (long long)s + 1, (long long)c.options.steps,
                    format_seconds(times.back()).c_str()));
  }
  if (!c.options.trace.empty()) {
    trace.flush();
    trace.write(trace_path(c.options.trace, row));
  }
  std::sort(times.begin(), times.end());
  row.step_s = times[times.size() / 2];
}

// One policy's row: builds its model and policy (both gone when this
// returns or throws), runs the untimed and the timed steps, fills `row`.
void run_row(const BenchContext& c, BenchRow& row) {
  const auto& o = c.options.run;
  c.progress(row.policy + ": building the model and the policy");
  model::ModelOptions mo;
  mo.device = c.ex.device;
  mo.compute_dtype = c.ex.compute_dtype;
  mo.attention = o.attention;
  mo.seed = o.seed;
  model::LlamaModel model(c.cfg, mo);
  runtime::TraceRecorder trace(c.ex.device);
  runtime::PolicyOptions po;
  if (o.alpha >= 0) po.alpha = o.alpha;
  po.host_memory_bytes = c.host_budget_bytes;
  po.trace = &trace;
  po.chunk_tokens = row.chunk_tokens;
  po.kv_on_host = o.kv_on_host;
  auto policy = runtime::make_policy(row.policy, po);
  policy->prepare(model, o.batch, o.seq_len);
  const int64_t allocated_before_steps = memory::memory_stats(c.ex.device).allocated;
  row.alpha = policy->alpha();
  row.split = policy->split_report();
  row.host_pinned_bytes = policy->host_pinning().bytes;
  row.pin_seconds = policy->host_pinning().seconds;

  first_step(c, model, *policy, row);
  memory::PlannedAllocator* planner = arm_planned_memory(c, model, *policy, row);
  timed_steps(c, model, *policy, trace, planner, row);
  const auto mem = memory::memory_stats(c.ex.device);
  row.peak_allocated_bytes = mem.peak_allocated;
  row.peak_reserved_bytes = mem.peak_reserved;
  row.host_bytes = policy->peak_held().host;
  MemorySplitInputs split;
  split.peak_bytes = row.peak_allocated_bytes;
  split.allocated_before_step = allocated_before_steps;
  split.buffer_bytes = policy->buffer_bytes();
  split.policy_peak_bytes = policy->peak_held().device;
  split.tokens = o.batch * o.seq_len;
  split.chunked = row.chunk_tokens > 0 && row.chunk_tokens < c.options.run.seq_len;
  split.policy_holds_layer_kv = row.policy == "keep";
  split.unit_tokens = o.batch * (split.chunked ? row.chunk_tokens : o.seq_len);
  split.kv_on_host = o.kv_on_host && split.chunked;
  row.peak_split = split_peak(split, c.cfg, c.ex.compute_dtype);
  if (c.ex.peak_flops > 0) row.mfu = c.flops / (row.step_s * c.ex.peak_flops);
  if (planner) planner->disarm();
}

// One row on many ranks: memo train's step (forward, backward, the
// gradients reduced, the optimizer; ZeRO's collectives included) on every
// rank at once, one untimed step and c.options.steps timed ones; the bytes
// this rank moved in the last step by collective kind. Only rank 0 traces.
void run_row_on_ranks(const BenchContext& c, dist::Context& ranks, BenchRow& row) {
  TrainOptions o = c.options.run;
  o.policy = row.policy;
  o.chunk_tokens = std::to_string(row.chunk_tokens);  // resolved for this rank's shard (run_bench)
  o.steps = 1 + c.options.steps;
  o.warmup = 0;
  o.memory_check = false;  // every row was checked before the first (check_bench_fit)
  o.json.clear();
  o.out.clear();
  o.checkpoint_every = 0;
  o.memory_timeline.clear();
  o.export_dsa.clear();
  o.trace = c.options.trace.empty() ? "" : trace_path(c.options.trace, row);
  c.progress(row.policy + ": building the model, the optimizer and the policy on " + ranks.mesh().describe());
  Trainer trainer(o, &ranks);
  row.alpha = trainer.alpha();
  row.split = trainer.split_report();
  std::vector<double> times;
  const auto summary = trainer.run([&](const StepRecord& r) {
    if (r.step == 1) {
      row.loss = r.loss;
      return;
    }
    times.push_back(r.seconds);
    row.comm = r.comm;
    c.progress(strf("%s: step %lld/%lld %s", row.policy.c_str(), (long long)times.size(), (long long)c.options.steps,
                    format_seconds(r.seconds).c_str()));
  });
  std::sort(times.begin(), times.end());
  row.step_s = times[times.size() / 2];
  row.peak_allocated_bytes = summary.peak_device_bytes;
  row.peak_reserved_bytes = memory::memory_stats(c.ex.device).peak_reserved;
  row.host_bytes = summary.host_bytes;
  row.peak_split = summary.peak_split;
  row.mfu = summary.mfu;
}

// The first line of a c10 message (the rest is a C++ backtrace).
std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

// Bad options stop the command (exit 2) before any row runs.
void check_bench_options(const BenchOptions& options) {
  options.run.validate();
  require_input(options.steps > 0, "bench steps must be positive, got ", options.steps);
  require_input(!options.policies.empty(), "bench: no policies given");
  for (const auto& p : options.policies) runtime::make_policy(p);  // unknown names fail here
}

// A row the fit check predicts cannot run: its status, nothing allocated.
void predicted_status(const PolicyFit& fit, BenchRow& row) {
  row.status = fit.status;
  row.message = (fit.status == "host-memory" ? "host memory too small: " : "device memory too small: ") + fit.problem;
  if (fit.status == "host-memory") {
    row.host_needed_bytes = fit.pool_bytes;
    row.host_budget_bytes = fit.pool_budget;
  }
}

// Runs one row; a failure of the row is its status and message, not the bench's.
void run_row_or_status(const BenchContext& c, const PolicyFit* fit, BenchRow& row) {
  try {
    if (fit && !fit->problem.empty())
      predicted_status(*fit, row);
    else
      run_row(c, row);
  } catch (const memory::HostMemoryError& e) {
    row.status = "host-memory";
    row.message = e.what();
    if (e.needed_bytes > 0) row.host_needed_bytes = e.needed_bytes;
    if (e.budget_bytes > 0) row.host_budget_bytes = e.budget_bytes;
  } catch (const c10::OutOfMemoryError& e) {
    // Out of device memory is a result of this row, not a failure of the
    // bench; reserved minus allocated at that point tells a fragmentation
    // failure from a real shortage.
    row.status = "oom";
    row.message = first_line(e.what_without_backtrace());
  } catch (const std::bad_alloc&) {
    row.status = "host-memory";
    row.message = "a host allocation failed (std::bad_alloc)";
  } catch (const c10::Error& e) {
    row.status = "error";
    row.message = first_line(e.what_without_backtrace());
  } catch (const Error& e) {
    row.status = "error";
    row.message = e.what();
  }
}

// A row that is not ok: the peaks since it started (how far it got), no time.
void record_stopped_row(const BenchContext& c, BenchRow& row) {
  const auto mem = memory::memory_stats(c.ex.device);
  row.peak_allocated_bytes = mem.peak_allocated;
  row.peak_reserved_bytes = mem.peak_reserved;
  row.step_s = 0;
  row.mfu.reset();
  c.progress(row.policy + ": " + row.status + ": " + row.message);
}

// A row that stopped half-way may leave the planner recording or armed.
void reset_planner(const BenchOptions& options) {
  if (!options.planned_memory) return;
  auto* planner = memory::PlannedAllocator::instance();
  planner->end_step();
  planner->stop_recording();
  if (planner->armed()) planner->disarm();
}

}  // namespace

std::vector<BenchRow> run_bench(const BenchOptions& options,
                                const std::function<void(const std::string&)>& progress,
                                dist::Context* ranks) {
  const auto& o = options.run;
  check_bench_options(options);  // from here on a row's failure is that row's result
  require_input(!ranks || !options.planned_memory, "memo bench --planned-memory is not built for many ranks yet");
  auto cfg = model::resolve_model(o.model);
  if (o.layers > 0) cfg.layers = o.layers;
  cfg.validate(o.model);
  const auto ex = resolve_execution(o);
  const auto budget = options.host_budget ? *options.host_budget : memory::host_budget(o.host_memory_gib);
  // This rank's share of each step (many ranks: its dp replica's sequences
  // and its sp shard of their tokens), as memo train's Trainer takes it.
  TrainOptions local = o;
  if (ranks) {
    local.batch = o.batch / ranks->mesh().dp;
    local.seq_len = o.seq_len / ranks->mesh().sp;
  }
  // --chunk-tokens: every setting under every policy, a policy's rows side by
  // side; each row's chunk resolved (auto: from the plan) before any check.
  const auto settings = parse_chunk_tokens(o.chunk_tokens);
  ChunkContext chunk_context{cfg, local.batch, local.seq_len, "keep", ex.device, ex.compute_dtype, o.sp};
  chunk_context.kv_on_host = o.kv_on_host;
  chunk_context.host_budget_bytes = budget.bytes;
  if (ranks) {  // each row's Trainer: the mesh's dp, ZeRO stage 3 by default
    chunk_context.dp = ranks->mesh().dp;
    chunk_context.zero = static_cast<int>(o.zero < 0 ? 3 : o.zero);
  }
  if (std::any_of(settings.begin(), settings.end(), [](const ChunkSetting& s) { return s.automatic; }))
    chunk_context.device_bytes = measure_memory(fit_request(local, cfg, ex.device, ex.compute_dtype)).device;
  std::vector<BenchRowSpec> specs;
  std::vector<std::string> setting_texts;
  for (const auto& name : options.policies)
    for (const auto& setting : settings) {
      chunk_context.policy = name;
      specs.push_back({name, resolve_chunk_tokens(setting, chunk_context)});
      setting_texts.push_back(setting.text());
    }

  // Before allocating: a row that cannot fit is that row's result (on many
  // ranks the same on every rank: the same options, the same estimate).
  std::vector<PolicyFit> fits;
  if (o.memory_check) fits = check_bench_fit(local, specs, cfg, ex.device, ex.compute_dtype);
  if (ex.device.is_cpu()) memory::install_cpu_memory_meter();
  // Before anything is allocated on the device (CUDA: the pluggable allocator).
  if (options.planned_memory) memory::PlannedAllocator::install(ex.device);

  // One process: the batch every row runs (many ranks: each row's Trainer draws its own).
  MicroBatch batch;
  if (!ranks) {
    batch = make_synthetic_source({cfg.vocab_size, 0, o.seed}, o.seq_len)->next(o.batch, o.seq_len);
    batch.tokens = batch.tokens.to(ex.device);
    batch.targets = batch.targets.to(ex.device);
  }
  std::optional<HostGrads> keep_grads;
  const BenchContext context{options, cfg, ex, batch, model_flops_per_step(cfg, o.batch, o.seq_len),
                             budget.bytes, keep_grads, progress};

  std::vector<BenchRow> rows;
  std::optional<double> keep_time;
  for (size_t i = 0; i < specs.size(); ++i) {
    BenchRow row;
    row.policy = specs[i].policy;
    row.chunk_setting = setting_texts[i];
    row.chunk_tokens = specs[i].chunk_tokens;
    // Rows do not see each other: the last row's model and policy are gone
    // (they lived in run_row), its cached blocks go back to the device and
    // the peaks restart from what is live now (the batch, nothing else).
    memory::release_cached_memory(ex.device);
    memory::reset_peak_memory(ex.device);
    const PolicyFit* fit = fits.empty() ? nullptr : &fits[i];
    if (ranks && (!fit || fit->problem.empty()))
      run_row_on_ranks(context, *ranks, row);  // a failure here stops the bench (bench.h)
    else
      run_row_or_status(context, fit, row);
    if (row.status != "ok")
      record_stopped_row(context, row);
    else if (row.policy == "keep" && !keep_time)
      keep_time = row.step_s;
    reset_planner(options);
    rows.push_back(row);
  }
  for (auto& r : rows)
    if (keep_time && r.status == "ok") r.ratio_to_keep = r.step_s / *keep_time;
  return rows;
}

}  // namespace memo::train
