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
#include "train/chunking.h"
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

// Each step below checks or builds one thing; the order matters: every check
// of user input before anything is allocated, memory planning before the
// model, the optimizer state before the policy measures free memory.
Trainer::Trainer(const TrainOptions& options) : options_(options) {
  resolve_model_and_device();
  make_policy_and_check_fit();
  open_data();
  install_memory_planning();
  build_model();
  build_optimizer_and_prepare_policy();
  load_starting_weights();
  allocated_before_steps_ = memory::memory_stats(device_).allocated;  // the static part of the peak split
}

// The model's shape, the device, the compute dtype and the attention kernel
// from the options.
void Trainer::resolve_model_and_device() {
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
}

// Everything that can fail on user input is checked before the model is
// built: the policy and its host budget, a --model directory's weights, the
// run's memory estimate against the machine's.
void Trainer::make_policy_and_check_fit() {
  trace_ = std::make_unique<runtime::TraceRecorder>(device_);
  runtime::PolicyOptions po;
  if (options_.alpha >= 0) po.alpha = options_.alpha;
  host_budget_ = memory::host_budget(options_.host_memory_gib);
  po.host_memory_bytes = host_budget_.bytes;
  po.trace = trace_.get();
  // --chunk-tokens: auto from the memory model for this device's memory (train/chunking.h).
  const auto chunking = parse_one_chunk_setting(options_.chunk_tokens);
  ChunkContext cc{config_, options_.batch, options_.seq_len, options_.policy, device_, compute_dtype_, options_.sp};
  if (chunking.automatic) cc.device_bytes = measure_memory(fit_request(options_, config_, device_, compute_dtype_)).device;
  chunk_tokens_ = resolve_chunk_tokens(chunking, cc);
  po.chunk_tokens = chunk_tokens_;
  policy_ = runtime::make_policy(options_.policy, po);
  // A directory given as --model must hold weights; then the run's memory
  // estimate against the machine's, before anything is allocated (fit_check.h).
  if (options_.resume.empty()) model::require_hf_weights_in_directory(options_.model);
  if (options_.memory_check) {
    auto request = fit_request(options_, config_, device_, compute_dtype_);
    request.chunk_tokens = chunk_tokens_;
    check_fit(request);
  }
}

// The synthetic task, or a token file.
void Trainer::open_data() {
  if (options_.data.empty()) {
    data_ = make_synthetic_source({config_.vocab_size, 0, options_.seed}, options_.seq_len);
  } else {
    data_ = make_file_source(options_.data, options_.data_dtype, config_.vocab_size,
                             options_.seq_len, options_.seed);
  }
}

// Memory planning replaces the device's allocator, so it comes before the
// model (on CUDA: before the first CUDA allocation).
void Trainer::install_memory_planning() {
  if (device_.is_cpu()) memory::install_cpu_memory_meter();
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
}

// The model's weights from the seed, and the loss chunk.
void Trainer::build_model() {
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
}

// The optimizer state first: memo reads the device memory left for resident
// tokens in prepare, and that must not count the moments as free. Then the
// policy's buffers, host pool and swap split, before the first step.
void Trainer::build_optimizer_and_prepare_policy() {
  std::vector<at::Tensor*> params;
  for (auto& [name, t] : model_->master().named()) params.push_back(t);
  for (auto& [name, t] : model_->grads().named()) grads_.push_back(t);
  optimizer_ = std::make_unique<AdamW>(
      params, grads_,
      AdamWOptions{options_.beta1, options_.beta2, 1e-8, options_.weight_decay});
  policy_->prepare(*model_, options_.batch, options_.seq_len);
}

// Starting weights: a checkpoint to resume, or a Hugging Face directory's
// weights; else the seeded initialisation stays.
void Trainer::load_starting_weights() {
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
  r.chunk_tokens = chunk_tokens_;
  r.whole_sequence = describe_whole_sequence(config_, compute_dtype_);
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

// What run() adds up over the steps for the summary.
struct Trainer::RunTotals {
  TrainSummary summary;
  std::vector<double> losses;
  double timed_seconds = 0.0;  // without the first (warm-up) step when there are more
  int64_t timed_steps = 0;
};

TrainSummary Trainer::run(const std::function<void(const StepRecord&)>& on_step) {
  RunTotals totals;
  totals.summary.no_context_loss = data_->no_context_loss();
  for (int64_t step = start_step_; step < options_.steps; ++step) {
    const StepRecord r = train_step(step, totals.summary);
    add_step(step, r, totals);
    on_step(r);
    checkpoint_if_due(step, r);
  }
  return summarize(totals);
}

int64_t Trainer::tokens_per_step() const {
  return options_.batch * options_.seq_len * options_.grad_accum;
}

double Trainer::flops_per_step() const {
  return model_flops_per_step(config_, options_.batch * options_.grad_accum, options_.seq_len);
}

// One optimizer step: the micro-batches' gradients, the update, and the
// step's time and device peak; the last step is traced when asked.
StepRecord Trainer::train_step(int64_t step, TrainSummary& summary) {
  using Clock = std::chrono::steady_clock;
  planning_->before_step(step);
  memory::reset_peak_memory(device_);
  const auto t0 = Clock::now();
  const bool tracing = !options_.trace.empty() && step == options_.steps - 1;  // the last step
  trace_->set_enabled(tracing);
  LossSum total = accumulate_gradients(tracing, summary);
  StepRecord r = update_weights(step, total);
  memory::synchronize(device_);
  planning_->after_step(step);
  if (tracing) write_trace();
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();

  r.seconds = secs;
  r.tokens_per_s = static_cast<double>(tokens_per_step()) / secs;
  if (peak_flops_ > 0 && device_.is_cuda()) r.mfu = flops_per_step() / (secs * peak_flops_);
  r.peak_device_bytes = memory::memory_stats(device_).peak_allocated;
  return r;
}

// Forward and backward of every micro-batch of the step, the gradients
// summed into the model's; the policy's holdings noted in the summary.
LossSum Trainer::accumulate_gradients(bool tracing, TrainSummary& summary) {
  const auto& o = options_;
  LossSum total;
  for (int64_t m = 0; m < o.grad_accum; ++m) {
    // Targets are counted on the host before the batch moves; from here to
    // the optimizer nothing waits for the device.
    auto batch = to_device(data_->next(o.batch, o.seq_len), device_);
    total.add(forward_backward(*model_, *policy_, batch, 1.0 / static_cast<double>(o.grad_accum),
                               loss_chunk_, tracing ? trace_.get() : nullptr, chunk_tokens_));
    summary.peak_activation_bytes =
        std::max(summary.peak_activation_bytes, policy_->peak_held().device);
    summary.host_bytes = std::max(summary.host_bytes, policy_->peak_held().host);
  }
  return total;
}

// The step's loss and gradient norm, clipping, and the AdamW update.
StepRecord Trainer::update_weights(int64_t step, LossSum& total) {
  const auto& o = options_;
  StepRecord r;
  r.step = step + 1;
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
  return r;
}

void Trainer::write_trace() {
  trace_->flush();
  trace_->write(options_.trace);
  trace_->set_enabled(false);
}

void Trainer::add_step(int64_t step, const StepRecord& r, RunTotals& totals) const {
  totals.losses.push_back(r.loss);
  totals.summary.seconds += r.seconds;
  if (step > start_step_ || options_.steps - start_step_ == 1) {
    totals.timed_seconds += r.seconds;
    ++totals.timed_steps;
  }
  totals.summary.peak_device_bytes = std::max(totals.summary.peak_device_bytes, r.peak_device_bytes);
}

// save_checkpoint refuses non-finite weights, and rotation keeps the newest finite checkpoint.
void Trainer::checkpoint_if_due(int64_t step, const StepRecord& r) {
  const auto& o = options_;
  if (o.checkpoint_every > 0 && ((step + 1) % o.checkpoint_every == 0 || step + 1 == o.steps))
    save_checkpoint(o.out, step + 1, *model_, *optimizer_, *data_, resolved_config(), o.keep_checkpoints, r.loss);
}

TrainSummary Trainer::summarize(RunTotals& totals) const {
  auto& summary = totals.summary;
  const auto& losses = totals.losses;
  summary.memory_plan = planning_->report();
  summary.steps = options_.steps - start_step_;
  summary.tokens = tokens_per_step() * summary.steps;
  summary.first_loss = losses.front();
  // final_loss: the mean over the last tenth of the steps.
  const size_t tail = std::max<size_t>(1, losses.size() / 10);
  double acc = 0.0;
  for (size_t i = losses.size() - tail; i < losses.size(); ++i) acc += losses[i];
  summary.final_loss = acc / static_cast<double>(tail);
  summary.tokens_per_s = static_cast<double>(tokens_per_step() * totals.timed_steps) / totals.timed_seconds;
  MemorySplitInputs split;
  split.peak_bytes = summary.peak_device_bytes;
  split.allocated_before_step = allocated_before_steps_;
  split.buffer_bytes = policy_->buffer_bytes();
  split.policy_peak_bytes = summary.peak_activation_bytes;
  split.tokens = options_.batch * options_.seq_len;
  split.chunked = chunk_tokens_ > 0;
  summary.peak_split = split_peak(split, config_, compute_dtype_);
  if (peak_flops_ > 0 && device_.is_cuda())
    summary.mfu = flops_per_step() * static_cast<double>(totals.timed_steps) / (totals.timed_seconds * peak_flops_);
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
          {"peak_split", to_json(s.peak_split)},
          {"no_context_loss", json_or_null(s.no_context_loss)},
          {"memory_plan", to_json(s.memory_plan)}};
}

}  // namespace memo::train
