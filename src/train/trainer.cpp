// Trainer: option resolution and the step loop.
#include "train/trainer.h"

#include <ATen/ATen.h>

#include <chrono>
#include <cstdlib>
#include <cmath>

#include "core/error.h"
#include "core/json.h"
#include "core/units.h"
#include "memory/device_memory.h"
#include "model/hf_checkpoint.h"
#include "train/checkpoint.h"
#include "train/fit_check.h"
#include "memory/planned_allocator.h"
#include "train/flops.h"
#include "train/loss.h"
#include "train/step.h"

namespace memo::train {

namespace {

const char* dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kBFloat16: return "bfloat16";
    case at::kDouble: return "float64";
    case at::kHalf: return "float16";
    default: return "?";
  }
}

}  // namespace

Execution resolve_execution(const TrainOptions& o) {
  Execution e;
  const bool has_cuda = memory::cuda_available();
  if (o.device == "cuda")
    require_input(has_cuda, "device cuda was requested but no CUDA device is available",
                  " (this libtorch build or machine has none); use --device cpu or auto");
  e.device = (o.device == "cuda" || (o.device == "auto" && has_cuda)) ? at::Device(at::kCUDA, 0)
                                                                      : at::Device(at::kCPU);
  if (o.dtype == "auto")
    e.compute_dtype = e.device.is_cuda() ? at::kBFloat16 : at::kFloat;
  else
    e.compute_dtype = o.dtype == "bfloat16" ? at::kBFloat16 : at::kFloat;
  e.peak_flops = o.peak_tflops > 0 ? o.peak_tflops * 1e12 : (e.device.is_cuda() ? kDefaultPeakFlops : 0.0);
  return e;
}

const char* dtype_name_of(at::ScalarType t) { return dtype_name(t); }

Trainer::Trainer(const TrainOptions& options) : options_(options) {
  options_.validate();
  config_ = model::resolve_model(options_.model);
  if (options_.layers > 0) config_.layers = options_.layers;
  config_.validate(options_.model);

  const auto ex = resolve_execution(options_);
  device_ = ex.device;
  compute_dtype_ = ex.compute_dtype;
  peak_flops_ = ex.peak_flops;
  // An attention kernel that cannot take this dtype on this device (float64 on
  // CUDA, cudnn or flash with float32) is bad input: refused before anything is built.
  (void)model::pick_attention_kernel(device_, compute_dtype_, options_.attention);
  log_every_ = options_.log_every > 0 ? options_.log_every
                                      : std::max<int64_t>(1, options_.steps / 20);

  // Everything that can fail on user input is checked before the model is built.
  trace_ = std::make_unique<runtime::TraceRecorder>(device_);
  runtime::PolicyOptions po;
  if (options_.alpha >= 0) po.alpha = options_.alpha;
  host_budget_ = memory::host_budget(options_.host_memory_gib);
  po.host_memory_bytes = host_budget_.bytes;
  po.trace = trace_.get();
  policy_ = runtime::make_policy(options_.policy, po);
  // A directory given as --model must hold weights; then the run's memory
  // estimate against the machine's, before anything is allocated (fit_check.h).
  if (options_.resume.empty()) model::require_hf_weights_in_directory(options_.model);
  if (options_.memory_check) check_fit(fit_request(options_, config_, device_, compute_dtype_));
  if (options_.data.empty()) {
    data_ = make_synthetic_source({config_.vocab_size, 0, options_.seed}, options_.seq_len);
  } else {
    data_ = make_file_source(options_.data, options_.data_dtype, config_.vocab_size,
                             options_.seq_len, options_.seed);
  }

  if (device_.is_cpu()) memory::install_cpu_memory_meter();
  // Memory planning replaces the device's allocator, so it comes before the
  // model (on CUDA: before the first CUDA allocation).
  MemoryPlanningOptions mp;
  mp.device = device_;
  mp.planned = options_.planned_memory;
  mp.timeline_path = options_.memory_timeline;
  mp.export_dir = options_.export_dsa;
  mp.cache_dir = options_.plan_cache;
  if (mp.cache_dir.empty() && mp.planned) {
    const char* home = std::getenv("HOME");
    mp.cache_dir = !options_.out.empty() ? options_.out + "/plans"
                                         : std::string(home ? home : ".") + "/.cache/memo/plans";
  }
  mp.key = plan_cache_key(options_, config_, device_.str(), dtype_name(compute_dtype_));
  planning_ = std::make_unique<MemoryPlanning>(mp);
  at::manual_seed(options_.seed);
  model::ModelOptions mo;
  mo.device = device_;
  mo.master_dtype = at::kFloat;
  mo.compute_dtype = compute_dtype_;
  mo.attention = options_.attention;
  mo.seed = options_.seed;
  model_ = std::make_unique<model::LlamaModel>(config_, mo);
  loss_chunk_ = options_.loss_chunk > 0
                    ? options_.loss_chunk
                    : default_loss_chunk(config_.vocab_size, compute_dtype_, default_loss_budget(device_));

  std::vector<at::Tensor*> params;
  for (auto& [name, t] : model_->master().named()) params.push_back(t);
  for (auto& [name, t] : model_->grads().named()) grads_.push_back(t);
  // The optimizer state first: memo reads the device memory left for
  // resident tokens in prepare, and that must not count the moments as free.
  optimizer_ = std::make_unique<AdamW>(
      params, grads_,
      AdamWOptions{options_.beta1, options_.beta2, 1e-8, options_.weight_decay});
  // Buffers, host pool and the swap split, before the first step.
  policy_->prepare(*model_, options_.batch, options_.seq_len);

  // Starting weights: a checkpoint to resume, or a Hugging Face directory's weights.
  if (!options_.resume.empty()) {
    resumed_from_ = find_checkpoint(options_.resume);
    start_step_ = load_checkpoint(resumed_from_, *model_, *optimizer_, *data_, resolved_config());
    require_input(start_step_ < options_.steps, "--resume ", resumed_from_, ": the checkpoint is at step ",
                  start_step_, ", not before --steps ", options_.steps, "; nothing to do");
  } else if (model::has_hf_weights(options_.model)) {
    model::load_hf_weights(options_.model, config_, model_->master());
    model_->refresh_compute();
    weights_from_ = options_.model;
  }
}

Trainer::~Trainer() = default;

// What the options resolved into, for the option table's JSON forms and header lines.
ResolvedRun Trainer::resolved_run() const {
  ResolvedRun r;
  r.model = config_;
  r.device = device_.str();
  r.compute_dtype = dtype_name(compute_dtype_);
  r.policy = policy_->name();
  r.alpha = policy_->alpha();
  r.host_budget_bytes = host_budget_.bytes;
  r.host_budget_source = host_budget_.source;
  r.attention_kernel = model::attention_kernel_name(model_->layer().kernel());
  r.data = data_->describe();
  r.loss_chunk = loss_chunk_;
  r.loss_budget_bytes = default_loss_budget(device_);
  r.peak_flops = peak_flops_;
  r.weights_from = weights_from_;
  r.resumed_from = resumed_from_;
  r.start_step = start_step_;
  return r;
}

nlohmann::json Trainer::resolved_config() const { return resolved_config_json(options_, resolved_run()); }

std::vector<std::pair<std::string, std::string>> Trainer::describe() const {
  return header_lines(options_, resolved_run());
}

std::vector<std::pair<std::string, std::string>> Trainer::describe_policy() const {
  return policy_->describe();
}

TrainSummary Trainer::run(const std::function<void(const StepRecord&)>& on_step) {
  const auto& o = options_;
  const int64_t tokens_per_step = o.batch * o.seq_len * o.grad_accum;
  const double flops_per_step = model_flops_per_step(config_, o.batch * o.grad_accum, o.seq_len);
  TrainSummary summary;
  summary.no_context_loss = data_->no_context_loss();
  std::vector<double> losses;
  double timed_seconds = 0.0;
  int64_t timed_steps = 0;
  using Clock = std::chrono::steady_clock;

  for (int64_t step = start_step_; step < o.steps; ++step) {
    planning_->before_step(step);
    memory::reset_peak_memory(device_);
    const auto t0 = Clock::now();
    LossSum total;
    const bool tracing = !o.trace.empty() && step == o.steps - 1;  // the last step
    trace_->set_enabled(tracing);
    for (int64_t m = 0; m < o.grad_accum; ++m) {
      // Targets are counted on the host before the batch moves; from here to
      // the optimizer nothing waits for the device.
      auto batch = to_device(data_->next(o.batch, o.seq_len), device_);
      total.add(forward_backward(*model_, *policy_, batch, 1.0 / static_cast<double>(o.grad_accum),
                                 loss_chunk_, tracing ? trace_.get() : nullptr));
      summary.peak_activation_bytes =
          std::max(summary.peak_activation_bytes, policy_->peak_held().device);
      summary.host_bytes = std::max(summary.host_bytes, policy_->peak_held().host);
    }
    StepRecord r;
    r.step = step + 1;
    {
      memory::RegionScope region("optimizer");
      // The step's one wait for the device: its loss and gradient norm, read
      // together and checked before the update, so a diverged step never
      // changes the weights (nor, after it, a checkpoint).
      auto norm = grad_norm(grads_);  // [] float64
      auto host = at::stack({total.sum.to(at::kDouble), norm}).cpu();  // [2]
      r.loss = total.count ? host.data_ptr<double>()[0] / static_cast<double>(total.count) : 0.0;
      r.grad_norm = host.data_ptr<double>()[1];
      total.sum.reset();  // memory of the step ends with the step (planned memory)
      if (!std::isfinite(r.loss))
        throw Error(cat("step ", r.step, ": the loss is ", r.loss,
                        "; stopping before the update (try a lower --lr or check the data)"));
      if (!std::isfinite(r.grad_norm))
        throw Error(cat("step ", r.step, ": the gradient norm is ", r.grad_norm,
                        "; stopping before the update (try a lower --lr or check the data)"));
      const double factor = clip_factor(r.grad_norm, o.clip);
      if (factor != 1.0) scale_grads(grads_, factor);
      r.lr = lr_at(step, o.steps, o.warmup, o.lr, o.min_lr_ratio);
      optimizer_->step(r.lr);
      model_->refresh_compute();
      model_->zero_grads();
    }
    memory::synchronize(device_);
    planning_->after_step(step);
    if (tracing) {
      trace_->flush();
      trace_->write(o.trace);
      trace_->set_enabled(false);
    }
    const double secs = std::chrono::duration<double>(Clock::now() - t0).count();

    r.seconds = secs;
    r.tokens_per_s = static_cast<double>(tokens_per_step) / secs;
    if (peak_flops_ > 0 && device_.is_cuda()) r.mfu = flops_per_step / (secs * peak_flops_);
    r.peak_device_bytes = memory::memory_stats(device_).peak_allocated;
    losses.push_back(r.loss);
    summary.seconds += secs;
    if (step > start_step_ || o.steps - start_step_ == 1) {
      timed_seconds += secs;
      ++timed_steps;
    }
    summary.peak_device_bytes = std::max(summary.peak_device_bytes, r.peak_device_bytes);
    on_step(r);
    // save_checkpoint refuses non-finite weights, and rotation keeps the newest finite checkpoint.
    if (o.checkpoint_every > 0 && ((step + 1) % o.checkpoint_every == 0 || step + 1 == o.steps))
      save_checkpoint(o.out, step + 1, *model_, *optimizer_, *data_, resolved_config(), o.keep_checkpoints, r.loss);
  }

  summary.memory_plan = planning_->report();
  summary.steps = o.steps - start_step_;
  summary.tokens = tokens_per_step * summary.steps;
  summary.first_loss = losses.front();
  const size_t tail = std::max<size_t>(1, losses.size() / 10);
  double acc = 0.0;
  for (size_t i = losses.size() - tail; i < losses.size(); ++i) acc += losses[i];
  summary.final_loss = acc / static_cast<double>(tail);
  summary.tokens_per_s = static_cast<double>(tokens_per_step * timed_steps) / timed_seconds;
  if (peak_flops_ > 0 && device_.is_cuda())
    summary.mfu = flops_per_step * static_cast<double>(timed_steps) / (timed_seconds * peak_flops_);
  return summary;
}

nlohmann::json to_json(const StepRecord& r) {
  return {{"step", r.step},
          {"loss", r.loss},
          {"lr", r.lr},
          {"grad_norm", r.grad_norm},
          {"seconds", r.seconds},
          {"tokens_per_s", r.tokens_per_s},
          {"mfu", json_or_null(r.mfu)},
          {"peak_device_bytes", r.peak_device_bytes}};
}

nlohmann::json to_json(const TrainSummary& s) {
  return {{"steps", s.steps},
          {"tokens", s.tokens},
          {"seconds", s.seconds},
          {"first_loss", s.first_loss},
          {"final_loss", s.final_loss},
          {"tokens_per_s", s.tokens_per_s},
          {"mfu", json_or_null(s.mfu)},
          {"peak_device_bytes", s.peak_device_bytes},
          {"peak_activation_bytes", s.peak_activation_bytes},
          {"host_bytes", s.host_bytes},
          {"no_context_loss", json_or_null(s.no_context_loss)},
          {"memory_plan", to_json(s.memory_plan)}};
}

}  // namespace memo::train
