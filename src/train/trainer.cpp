// Trainer: option resolution and the step loop.
#include "train/trainer.h"

#include <ATen/ATen.h>

#include <chrono>
#include <cstdlib>
#include <cmath>

#include "core/error.h"
#include "core/json.h"
#include "core/units.h"
#include "dist/context.h"
#include "runtime/kv_stream.h"
#include "runtime/stage_exchange.h"
#include "runtime/ulysses_exchange.h"
#include "memory/device_memory.h"
#include "model/hf_checkpoint.h"
#include "train/checkpoint.h"
#include "train/chunking.h"
#include "train/fit_check.h"
#include "memory/planned_allocator.h"
#include "train/flops.h"
#include "train/loss.h"
#include "train/model_state.h"
#include "train/step.h"
#include "train/zero_checkpoint.h"
#include "train/zero_optimizer.h"
#include "runtime/sharded_weights.h"

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
    e.compute_dtype = o.dtype == "bfloat16" ? at::kBFloat16 : o.dtype == "float64" ? at::kDouble : at::kFloat;
  e.peak_flops = o.peak_tflops > 0 ? o.peak_tflops * 1e12 : (e.device.is_cuda() ? kDefaultPeakFlops : 0.0);
  return e;
}

const char* dtype_name_of(at::ScalarType t) { return dtype_name(t); }

// Each step below checks or builds one thing; the order matters: every check
// of user input before anything is allocated, memory planning before the
// model, the optimizer state before the policy measures free memory.
Trainer::Trainer(const TrainOptions& options, dist::Context* context) : options_(options), dist_(context) {
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
  // This rank's part of every micro-batch (the mesh was checked before the
  // process groups came up: dist::check_mesh).
  local_batch_ = options_.batch;
  local_seq_ = options_.seq_len;
  if (dist_) {
    const auto& mesh = dist_->mesh();
    const auto coords = dist_->coords();
    local_batch_ = options_.batch / mesh.dp;
    local_seq_ = options_.seq_len / mesh.sp;
    first_token_ = coords.sp_index * local_seq_;
    require_input(!options_.planned_memory, "--planned-memory is not built for many ranks yet");
  }
  zero_stage_ = dist_ ? static_cast<int>(options_.zero < 0 ? 3 : options_.zero) : 0;  // the default: 3
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
  TrainOptions local = options_;  // this rank's share of the activations
  local.batch = local_batch_;
  local.seq_len = local_seq_;
  // --chunk-tokens: auto from the memory model for this device's memory (train/chunking.h).
  const auto chunking = parse_one_chunk_setting(options_.chunk_tokens);
  ChunkContext cc{config_, local_batch_, local_seq_, options_.policy, device_, compute_dtype_, options_.sp};
  cc.dp = dist_ ? dist_->mesh().dp : 1;
  cc.zero = zero_stage_;
  cc.kv_on_host = options_.kv_on_host;
  cc.host_budget_bytes = host_budget_.bytes;
  if (chunking.automatic) cc.device_bytes = measure_memory(fit_request(local, config_, device_, compute_dtype_)).device;
  chunk_tokens_ = resolve_chunk_tokens(chunking, cc);
  po.chunk_tokens = chunk_tokens_;
  po.kv_on_host = options_.kv_on_host;
  if (dist_) {
    // memo's alpha: the smallest any rank chose, so every rank swaps and
    // recomputes the same tokens and none waits for a slower one.
    // The largest of every rank's value.
    auto world_max = [this](double v) {
      auto t = at::full({1}, v, at::TensorOptions().dtype(at::kDouble).device(device_));  // [1]
      dist_->world().all_reduce(t, dist::ReduceOp::Max).wait();
      return t.item<double>();
    };
    po.agree_alpha = [world_max](double alpha) { return -world_max(-alpha); };
    // memo's units keeping only x: the most any rank needs, on every rank.
    po.agree_units = [world_max](int64_t units) {
      return static_cast<int64_t>(world_max(static_cast<double>(units)));
    };
  }
  policy_ = runtime::make_policy(options_.policy, po);
  // A directory given as --model must hold weights; then the run's memory
  // estimate against the machine's, before anything is allocated (fit_check.h).
  if (options_.resume.empty()) model::require_hf_weights_in_directory(options_.model);
  if (options_.memory_check) {
    auto request = fit_request(local, config_, device_, compute_dtype_);
    request.chunk_tokens = chunk_tokens_;
    request.zero = zero_stage_;  // this rank's shards of the model state
    request.zero_world = dist_ ? dist_->world_size() : 1;
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
  // Many ranks: only rank 0 writes.
  mp.timeline_path = is_root() ? options_.memory_timeline : "";
  mp.export_dir = is_root() ? options_.export_dsa : "";
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
  mo.master_dtype = compute_dtype_ == at::kDouble ? at::kDouble : at::kFloat;
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
// Many ranks at ZeRO 1-3: the sharded optimizer (this rank's shard of the
// master weights and moments) in place of AdamW; stage 3 also shards the
// layers' compute weights (the per-layer program gathers them). One process
// has nothing to shard: --zero changes nothing there.
void Trainer::build_optimizer_and_prepare_policy() {
  for (auto& [name, t] : model_->grads().named()) grads_.push_back(t);
  const AdamWOptions adamw{options_.beta1, options_.beta2, 1e-8, options_.weight_decay};
  if (zero_stage_ > 0) {
    zero_ = std::make_unique<ZeroOptimizer>(dist_->world(), model_->master(), zero_stage_, adamw);
    if (zero_stage_ == 3)
      sharded_layers_ = std::make_unique<runtime::ShardedLayerWeights>(dist_->world(), model_->compute().layers);
    // What the shards replace goes before memo measures the free memory
    // (docs/dist.md, "ZeRO"): the whole master weights (the compute copies
    // stay: forward reads them; when the dtypes agree they are the same
    // tensors and stay whole at stages 1-2); stages 2-3 the whole gradients
    // (each backward allocates a layer's, reduce-scatters and releases them);
    // stage 3 every compute layer but the first, which the start-up
    // measurement runs (released after prepare).
    model_->release_master();
    if (zero_stage_ >= 2) model_->release_grads();
    if (zero_stage_ == 3) model_->release_compute_layers(1);
  } else {
    std::vector<at::Tensor*> params;
    for (auto& [name, t] : model_->master().named()) params.push_back(t);
    optimizer_ = std::make_unique<AdamW>(params, grads_, adamw);
  }
  policy_->prepare(*model_, local_batch_, local_seq_);
  if (zero_stage_ == 3) model_->release_compute_layers(0);  // ShardedLayerWeights serves every layer
  if (dist_ && dist_->mesh().sp > 1) exchange_ = std::make_unique<runtime::UlyssesExchange>(dist_->sp(), config_);
}

// Starting weights: a checkpoint to resume, or a Hugging Face directory's
// weights; else the seeded initialisation stays.
void Trainer::load_starting_weights() {
  if (!options_.resume.empty()) {
    resumed_from_ = find_checkpoint(options_.resume);
    start_step_ = zero_ ? load_into_shards(resumed_from_, *model_, *zero_, *data_, resolved_config(),
                                           sharded_layers_.get())
                        : load_checkpoint(resumed_from_, *model_, *optimizer_, *data_, resolved_config());
    require_input(start_step_ < options_.steps, "--resume ", resumed_from_, ": the checkpoint is at step ",
                  start_step_, ", not before --steps ", options_.steps, "; nothing to do");
  } else if (model::has_hf_weights(options_.model)) {
    if (zero_) {
      // The model's whole master is released: the weights are read into
      // whole temporaries, this rank keeps its shards (moments at zero) and
      // publishes them where forward reads them.
      auto whole = zero_->empty_whole(device_);
      model::load_hf_weights(options_.model, config_, whole);
      std::vector<at::Tensor> m, v;
      for (auto& [name, t] : whole.named()) {
        m.push_back(at::zeros_like(*t));
        v.push_back(at::zeros_like(*t));
      }
      zero_->load_whole(whole, m, v, 0);
      zero_->publish(model_->compute(), sharded_layers_.get());
    } else {
      model::load_hf_weights(options_.model, config_, model_->master());
      model_->refresh_compute();
    }
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
  r.split = policy_->split_report();
  r.chunk_tokens = chunk_tokens_;
  r.whole_sequence = describe_whole_sequence(config_, compute_dtype_, dist_ ? dist_->mesh().sp : 1,
                                             options_.kv_on_host);
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

// The whole job's (every rank's) model FLOPs; MFU divides by the world's peak.
double Trainer::flops_per_step() const {
  return model_flops_per_step(config_, options_.batch * options_.grad_accum, options_.seq_len);
}

bool Trainer::is_root() const { return !dist_ || dist_->is_root(); }

dist::CollectiveBytes CommRecord::total() const {
  dist::CollectiveBytes t;
  for (const auto& k : by_kind) {
    t.calls += k.calls;
    t.bytes_sent += k.bytes_sent;
    t.bytes_received += k.bytes_received;
  }
  return t;
}

// One optimizer step: the micro-batches' gradients, the update, and the
// step's time and device peak; the last step is traced when asked.
StepRecord Trainer::train_step(int64_t step, TrainSummary& summary) {
  using Clock = std::chrono::steady_clock;
  planning_->before_step(step);
  memory::reset_peak_memory(device_);
  const auto t0 = Clock::now();
  // The last step, on rank 0 (the only rank that writes).
  const bool tracing = !options_.trace.empty() && step == options_.steps - 1 && is_root();
  trace_->set_enabled(tracing);
  if (dist_) {
    dist_->stats().reset();
    dist_->stats().set_tracing(tracing);
  }
  LossSum total = accumulate_gradients(tracing, summary);
  StepRecord r = update_weights(step, total);
  if (dist_) {
    CommRecord c;
    for (int k = 0; k < dist::kCollectiveKinds; ++k) c.by_kind[k] = dist_->stats().get(static_cast<dist::Collective>(k));
    r.comm = c;
    if (tracing)
      for (auto& span : dist_->stats().take_spans())
        trace_->add_host_span(runtime::Lane::Comm, cat(dist::collective_name(span.kind), " ", span.group), span.bytes,
                              span.issued, span.completed);
  }
  memory::synchronize(device_);
  planning_->after_step(step);
  if (tracing) write_trace();
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();

  r.seconds = secs;
  r.tokens_per_s = static_cast<double>(tokens_per_step()) / secs;
  const double world = dist_ ? dist_->world_size() : 1;
  if (peak_flops_ > 0 && device_.is_cuda()) r.mfu = flops_per_step() / (secs * peak_flops_ * world);
  r.peak_device_bytes = memory::memory_stats(device_).peak_allocated;
  return r;
}

// This rank's part of a global micro-batch [batch, seq_len]: its dp replica's
// sequences, its sp rank's tokens [first, first + seq_len / sp) and their
// targets (the last token's target is the next shard's first token: the
// targets are already shifted). global_count: the whole micro-batch's
// supervised tokens, which every rank divides by.
MicroBatch Trainer::shard_of(MicroBatch global, int64_t& global_count) const {
  global_count = supervised_of(global);
  if (!dist_) return global;
  const int64_t row = dist_->coords().dp_index * local_batch_;
  MicroBatch b;
  b.tokens = global.tokens.narrow(0, row, local_batch_).narrow(1, first_token_, local_seq_).contiguous();    // [B/dp, S/sp]
  b.targets = global.targets.narrow(0, row, local_batch_).narrow(1, first_token_, local_seq_).contiguous();  // [B/dp, S/sp]
  b.supervised = supervised_of(b);
  return b;
}

// Every gradient summed over the world (each rank's is already divided by
// the whole micro-batch's token count, so the sum is the global mean's),
// started per layer as its gradients complete so the transfer overlaps the
// layers below; waited before the norm. ZeRO 0: all-reduced in place;
// stages 2-3: reduce-scattered into the optimizer's gradient shards; stage
// 1: every unit reduce-scattered once, after the backward.
void Trainer::start_gradient_reduction(int64_t layer, model::LayerWeights& layer_grads) {
  if (zero_) {
    // Stages 2-3, every micro-batch: the shards add up what each is given,
    // and the layer's whole gradients go (reduce_layer took its staging copy).
    if (zero_stage_ >= 2) {
      zero_->reduce_layer(layer, layer_grads);
      model_->release_layer_grads(layer);
    }
    return;
  }
  for (auto& [name, t] : layer_grads.named()) reductions_.push_back(dist_->world().all_reduce(*t));
}

void Trainer::finish_gradient_reduction() {
  if (zero_) {
    if (zero_stage_ == 1) zero_->reduce_all(model_->grads());  // stages 2-3 reduced every micro-batch's
    zero_->finish_gradients();
    return;
  }
  auto& g = model_->grads();
  for (at::Tensor* t : {&g.embed, &g.final_norm, &g.lm_head})
    if (t->defined()) reductions_.push_back(dist_->world().all_reduce(*t));
  for (auto& w : reductions_) w.wait();
  reductions_.clear();
}

// Forward and backward of every micro-batch of the step, the gradients
// summed into the model's; the policy's holdings noted in the summary.
LossSum Trainer::accumulate_gradients(bool tracing, TrainSummary& summary) {
  const auto& o = options_;
  LossSum total;
  for (int64_t m = 0; m < o.grad_accum; ++m) {
    // Targets are counted on the host before the batch moves; from here to
    // the optimizer nothing waits for the device.
    int64_t global_count = 0;
    auto batch = to_device(shard_of(data_->next(o.batch, o.seq_len), global_count), device_);
    SequenceShard shard;
    shard.exchange = exchange_.get();
    shard.first = first_token_;
    shard.count = global_count;
    shard.weights = sharded_layers_.get();
    shard.measured = &measured_parts_;
    // The last micro-batch completes each layer's gradients; ZeRO 2-3
    // reduce-scatter every micro-batch's (its whole gradients are not kept).
    if (dist_ && (m + 1 == o.grad_accum || zero_stage_ >= 2))
      shard.on_layer_gradients = [this](int64_t l, model::LayerWeights& g) { start_gradient_reduction(l, g); };
    total.add(forward_backward(*model_, *policy_, batch, 1.0 / static_cast<double>(o.grad_accum),
                               loss_chunk_, tracing ? trace_.get() : nullptr, chunk_tokens_,
                               dist_ ? &shard : nullptr));
    if (zero_stage_ >= 2) {  // the embedding's, final norm's and head's, likewise
      zero_->reduce_rest(model_->grads());
      model_->release_rest_grads();
    }
    summary.peak_activation_bytes =
        std::max(summary.peak_activation_bytes, policy_->peak_held().device);
    summary.host_bytes = std::max(summary.host_bytes, policy_->peak_held().host);
    if (const auto* stream = policy_->kv_stream()) summary.kv_host_bytes = stream->peak_host_bytes();
  }
  if (dist_) {
    finish_gradient_reduction();
    // The loss: every rank's sum and token count, summed over the world.
    auto both = at::stack({total.sum.defined() ? total.sum.to(at::kDouble) : at::zeros({}, at::kDouble).to(device_),
                           at::full({}, static_cast<double>(total.count), at::TensorOptions().dtype(at::kDouble).device(device_))});  // [2]
    dist_->world().all_reduce(both).wait();
    total.sum = both[0];
    total.count = static_cast<int64_t>(std::llround(both[1].item<double>()));
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
  auto norm = zero_ ? zero_->grad_norm() : grad_norm(grads_);  // [] float64
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
  r.lr = lr_at(step, o.steps, o.warmup, o.lr, o.min_lr_ratio);
  if (zero_) {
    if (factor != 1.0) zero_->scale_grads(factor);
    zero_->step(r.lr);
    zero_->publish(model_->compute(), sharded_layers_.get());  // the updated shards where forward reads them
  } else {
    if (factor != 1.0) scale_grads(grads_, factor);
    optimizer_->step(r.lr);
    model_->refresh_compute();
  }
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
  if (r.comm) totals.summary.comm = r.comm;
}

// save_checkpoint refuses non-finite weights, and rotation keeps the newest finite checkpoint.
void Trainer::checkpoint_if_due(int64_t step, const StepRecord& r) {
  const auto& o = options_;
  if (o.checkpoint_every <= 0 || ((step + 1) % o.checkpoint_every != 0 && step + 1 != o.steps)) return;
  // ZeRO 1-3: every rank gathers its shards toward rank 0, which writes (the
  // single-process format: it resumes on any number of ranks).
  if (zero_) {
    save_sharded_checkpoint(dist_->world(), o.out, step + 1, *model_, *zero_, *data_, resolved_config(),
                            o.keep_checkpoints, r.loss);
    return;
  }
  // Many ranks at ZeRO 0: every rank holds the whole state; rank 0 writes it.
  if (is_root())
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
  split.tokens = local_batch_ * local_seq_;
  split.chunked = chunk_tokens_ > 0 && chunk_tokens_ < local_seq_;
  split.policy_holds_layer_kv = options_.policy == "keep";
  split.unit_tokens = local_batch_ * (split.chunked ? chunk_tokens_ : local_seq_);
  split.sp = dist_ ? dist_->mesh().sp : 1;
  split.kv_on_host = options_.kv_on_host && split.chunked;
  split.measured_parts = measured_parts_.bytes;
  summary.peak_split = split_peak(split, config_, compute_dtype_);
  summary.model_state = held_model_state(*model_, optimizer_.get(), zero_.get(), sharded_layers_.get());
  const double world = dist_ ? dist_->world_size() : 1;
  if (peak_flops_ > 0 && device_.is_cuda())
    summary.mfu = flops_per_step() * static_cast<double>(totals.timed_steps) / (totals.timed_seconds * peak_flops_ * world);
  if (dist_) {
    summary.world = dist_->world_size();
    summary.dp = dist_->mesh().dp;
    summary.sp = dist_->mesh().sp;
  }
  return summary;
}

nlohmann::json to_json(const CommRecord& c) {
  auto one = [](const dist::CollectiveBytes& b) {
    return nlohmann::json{{"calls", b.calls}, {"bytes_sent", b.bytes_sent}, {"bytes_received", b.bytes_received}};
  };
  nlohmann::json j;
  for (int k = 0; k < dist::kCollectiveKinds; ++k)
    j[dist::collective_name(static_cast<dist::Collective>(k))] = one(c.by_kind[static_cast<size_t>(k)]);
  j["total"] = one(c.total());
  return j;
}

nlohmann::json to_json(const StepRecord& r) {
  auto j = to_json_fields(r);
  if (r.comm) j["comm"] = to_json(*r.comm);
  return j;
}

nlohmann::json to_json_fields(const StepRecord& r) {
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
  auto j = to_json_fields(s);
  if (s.comm) {
    j["comm_per_step"] = to_json(*s.comm);
    j["mesh"] = {{"world", s.world}, {"dp", s.dp}, {"sp", s.sp}};
  }
  return j;
}

nlohmann::json to_json_fields(const TrainSummary& s) {
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
          {"kv_host_bytes", s.kv_host_bytes},
          {"peak_split", to_json(s.peak_split)},
          {"model_state_bytes", {{"weights", s.model_state.weights},
                                 {"master", s.model_state.master},
                                 {"grads", s.model_state.grads},
                                 {"moments", s.model_state.moments},
                                 {"total", s.model_state.total()}}},
          {"no_context_loss", json_or_null(s.no_context_loss)},
          {"memory_plan", to_json(s.memory_plan)}};
}

}  // namespace memo::train
