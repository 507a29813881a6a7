// `offload` and `memo`: layers write their skeletal set into one of two
// device rounding buffers; a side stream copies the kept part to a pinned
// host pool while the next layer computes; in backward the next layer's part
// is prefetched one layer ahead and memo's dropped tokens are recomputed
// token-wise into the buffer, without attention (DESIGN.md section 4).
//   offload: every layer, every tensor, all tokens to host.
//   memo:    x, o, lse whole; the first alpha*s tokens of the others; the
//            rest recomputed; the last two layers never leave their buffer.
#include <ATen/ATen.h>

#include <chrono>
#include <map>
#include <set>

#include "core/error.h"
#include "core/units.h"
#include "memory/device_memory.h"
#include "memory/host_pool.h"
#include "model/llama.h"
#include "plan/swap_split.h"
#include "runtime/policy.h"
#include "runtime/swap_engine.h"
#include "runtime/trace.h"

namespace memo::runtime {

namespace {

constexpr int64_t kHostAlign = 16;
int64_t align_up(int64_t v) { return (v + kHostAlign - 1) / kHostAlign * kHostAlign; }

class SwapPolicy final : public ActivationPolicy {
 public:
  SwapPolicy(bool memo, PolicyOptions options) : memo_(memo), options_(options) {}

  std::string name() const override { return memo_ ? "memo" : "offload"; }
  std::optional<double> alpha() const override { return split_.alpha; }
  HostPinning host_pinning() const override { return {pool_.pinned_bytes(), pool_.pin_seconds()}; }

  void prepare(model::LlamaModel& model, int64_t batch, int64_t seq_len) override {
    const auto& cfg = model.config();
    device_ = model.options().device;
    batch_ = batch;
    seq_len_ = seq_len;
    specs_ = model::skeletal_specs(cfg, batch, seq_len, model.options().compute_dtype);
    plan::SplitInputs in;
    in.layers = cfg.layers;
    in.seq_len = seq_len;
    for (const auto& s : specs_) (s.always_offloaded ? in.fixed_bytes : in.rest_bytes) += static_cast<double>(s.bytes());
    in.swap_last_two = !memo_;
    in.alpha = memo_ ? options_.alpha : std::optional<double>(1.0);
    in.host_bytes = options_.host_memory_bytes > 0 ? options_.host_memory_bytes : memory::host_budget(0).bytes;
    if (memo_ && !options_.alpha) measure(model, in);
    in.device_spare_bytes = options_.device_spare_bytes >= 0 ? options_.device_spare_bytes : spare_device(model, in);
    split_ = choose_split(in);
    // An explicit alpha with an explicit device share keeps that share resident.
    if (memo_ && options_.alpha && options_.device_spare_bytes > 0) add_resident(in);
    inputs_ = in;

    // Rounding buffers and the host pool, each allocated once.
    for (auto& b : buffers_)
      b = model::allocate_skeletal(cfg, batch, seq_len, model.options().compute_dtype, device_);
    buffer_bytes_ = buffers_[0].bytes();
    layout_host_pool(cfg.layers, in.host_bytes);
    engine_ = std::make_unique<SwapEngine>(device_, options_.trace);
  }

  std::vector<std::pair<std::string, std::string>> describe() const override {
    auto pct = [](double f) { return strf("%.1f%%", 100.0 * f); };
    int64_t swapped = 0;
    for (const auto& l : split_.layers) swapped += l.swapped;
    std::vector<std::pair<std::string, std::string>> out = {
        {"split", strf("x, o, lse to host; other tensors: %s offloaded, %s resident, %s recomputed "
                       "(alpha %.3f, %s)",
                       pct(split_.alpha).c_str(), pct(split_.resident).c_str(),
                       pct(1.0 - split_.alpha - split_.resident).c_str(), split_.alpha,
                       split_.limited_by.c_str())},
        {"layers", strf("%lld of %lld swapped%s", (long long)swapped, (long long)split_.layers.size(),
                        memo_ ? " (the last two stay in their rounding buffers)" : "")},
        {"memory", strf("2 rounding buffers of %s on the device; host pool %s of a %s budget (%s)",
                        format_bytes(static_cast<double>(buffer_bytes_)).c_str(),
                        format_bytes(static_cast<double>(host_bytes_)).c_str(),
                        format_bytes(inputs_.host_bytes).c_str(),
                        pool_.pinned_bytes() > 0
                            ? strf("%s pinned in %s", format_bytes(static_cast<double>(pool_.pinned_bytes())).c_str(),
                                   format_seconds(pool_.pin_seconds()).c_str())
                                  .c_str()
                            : device_.is_cpu() ? "not pinned: CPU run" : "not pinned: built without MEMO_CUDA")},
    };
    if (inputs_.forward_s > 0)
      out.push_back({"overlap", strf("per layer: copy-out %s vs forward %s, prefetch %s vs backward %s "
                                     "(+ recompute %s); predicted exposed copy %s per step",
                                     format_seconds(split_.copy_out_s).c_str(),
                                     format_seconds(inputs_.forward_s).c_str(),
                                     format_seconds(split_.copy_in_s).c_str(),
                                     format_seconds(inputs_.backward_s).c_str(),
                                     format_seconds(split_.recompute_s).c_str(),
                                     format_seconds(split_.exposed_copy_s).c_str())});
    return out;
  }

  void begin_step(const StepShape& shape) override {
    ActivationPolicy::begin_step(shape);
    require_input(shape.batch == batch_ && shape.seq_len == seq_len_, name(),
                  ": prepared for batch ", batch_, " x seq_len ", seq_len_, ", got ", shape.batch,
                  " x ", shape.seq_len);
    owner_[0] = owner_[1] = -1;
    valid_[0] = valid_[1] = false;
    x_hold_.clear();
    x_in_.clear();
    resident_.clear();
    prefetched_.clear();
  }

  const model::LayerActivations* forward_storage(int64_t index) override {
    const int b = static_cast<int>(index % 2);
    if (owner_[b] >= 0) {
      engine_->wait_copy_out(owner_[b]);  // layer index-2's copy must be done
      x_hold_.erase(owner_[b]);
    }
    owner_[b] = index;
    valid_[b] = true;
    return &buffers_[b];
  }

  void save(int64_t index, model::LayerActivations&& acts) override {
    const auto& split = split_.layers[static_cast<size_t>(index)];
    x_hold_[index] = acts.x;
    if (split.swapped) {
      engine_->copy_out(index, host_pairs(index, acts, /*to_host=*/true));
      if (split.resident_tokens > 0) {
        // The resident tokens of every recomputable tensor, by skeletal position.
        std::vector<at::Tensor> res;
        size_t k = 0;
        acts.for_each([&](const char*, at::Tensor& t) {
          const auto& s = specs_[k++];
          res.push_back(s.always_offloaded
                            ? at::Tensor()
                            : t.narrow(s.token_dim, split.offload_tokens, split.resident_tokens).clone());
        });
        resident_[index] = std::move(res);
      }
    }
    note_held();
  }

  model::LayerActivations restore(int64_t index, const LayerContext& ctx) override {
    for (int b = 0; b < 2; ++b)
      if (owner_[b] > index) owner_[b] = -1, valid_[b] = false;  // their backward is queued
    const int b = static_cast<int>(index % 2);
    const auto& split = split_.layers[static_cast<size_t>(index)];
    model::LayerActivations acts = buffers_[b];
    if (owner_[b] == index && valid_[b]) {
      // Still in its rounding buffer from forward (the last layers).
      auto it = x_hold_.find(index);
      if (it == x_hold_.end()) throw Error(cat(name(), ": input of layer ", index, " was not kept"));
      acts.x = it->second;
    } else {
      if (!split.swapped) throw Error(cat(name(), ": layer ", index, " lost its rounding buffer"));
      if (!prefetched_.count(index)) prefetch(index);
      engine_->wait_copy_in(index);
      auto x = x_in_.find(index);
      if (x == x_in_.end()) throw Error(cat(name(), ": input of layer ", index, " was not prefetched"));
      acts.x = std::move(x->second);
      x_in_.erase(x);
      const int64_t kept = split.offload_tokens + split.resident_tokens;
      if (split.resident_tokens > 0) restore_resident(index, acts, split);
      if (kept < seq_len_) {
        TraceSpan span(options_.trace, Lane::Compute, "recompute ", index, 0, engine_->compute_stream());
        ctx.layer.recompute_tokens(ctx.weights, ctx.rope, acts, kept);
      }
    }
    x_hold_.erase(index);
    // Prefetch the next swapped layer below into its buffer, if that is free.
    for (int64_t j = index - 1; j >= 0; --j) {
      if (!split_.layers[static_cast<size_t>(j)].swapped || prefetched_.count(j)) continue;
      if (owner_[j % 2] == j && valid_[j % 2]) continue;  // still in its buffer
      if (owner_[j % 2] < 0) prefetch(j);
      break;
    }
    return acts;
  }

  void end_step() override {
    engine_->drain();
    x_hold_.clear();
    x_in_.clear();
    resident_.clear();
  }

  HeldBytes held() const override {
    HeldBytes h;
    h.device = 2 * buffer_bytes_;
    for (const auto& [i, x] : x_hold_) h.device += static_cast<int64_t>(x.nbytes());
    for (const auto& [i, x] : x_in_) h.device += static_cast<int64_t>(x.nbytes());
    for (const auto& [i, tensors] : resident_)
      for (const auto& t : tensors)
        if (t.defined()) h.device += static_cast<int64_t>(t.nbytes());
    h.host = host_bytes_;
    return h;
  }

 private:
  // The LP's choice, or a HostMemoryError with the bytes needed and the
  // budget when even the smallest split this policy allows does not fit.
  plan::SplitChoice choose_split(const plan::SplitInputs& in) const {
    try {
      return plan::choose_split(in);
    } catch (const InputError& e) {
      const int64_t swapped = memo_ ? std::max<int64_t>(0, in.layers - 2) : in.layers;
      const double alpha = in.alpha ? *in.alpha : 0.0;  // the LP can go down to 0
      const double need = static_cast<double>(swapped) * (in.fixed_bytes + alpha * in.rest_bytes);
      if (alpha >= 0.0 && alpha <= 1.0 && in.host_bytes > 0 && need > in.host_bytes)
        throw memory::HostMemoryError(e.what(), need, in.host_bytes);
      throw;
    }
  }

  // Host views: per swapped layer, per tensor, the kept tokens; one host pool
  // of exactly their bytes (pinned on CUDA), outside c10's allocators.
  void layout_host_pool(int64_t layers, double budget) {
    host_views_.assign(static_cast<size_t>(layers), {});
    int64_t offset = 0;
    std::vector<std::vector<std::pair<int64_t, std::vector<int64_t>>>> places(static_cast<size_t>(layers));
    for (int64_t i = 0; i < layers; ++i) {
      const auto& split = split_.layers[static_cast<size_t>(i)];
      if (!split.swapped) continue;
      for (const auto& s : specs_) {
        auto shape = s.shape;
        shape[static_cast<size_t>(s.token_dim)] = s.always_offloaded ? seq_len_ : split.offload_tokens;
        int64_t bytes = static_cast<int64_t>(c10::elementSize(s.dtype));
        for (auto d : shape) bytes *= d;
        places[static_cast<size_t>(i)].push_back({offset, shape});
        offset += align_up(bytes);
      }
    }
    host_bytes_ = offset;
    try {
      pool_ = memory::HostPool(host_bytes_, device_);
    } catch (const memory::HostMemoryError& e) {
      throw memory::HostMemoryError(e.what(), static_cast<double>(host_bytes_), budget);
    }
    const auto& pool = pool_.tensor();  // [mapped bytes] uint8
    for (int64_t i = 0; i < layers; ++i) {
      size_t k = 0;
      for (const auto& [off, shape] : places[static_cast<size_t>(i)]) {
        const auto& s = specs_[k++];
        int64_t bytes = static_cast<int64_t>(c10::elementSize(s.dtype));
        for (auto d : shape) bytes *= d;
        host_views_[static_cast<size_t>(i)].push_back(pool.narrow(0, off, bytes).view(s.dtype).view(shape));
      }
    }
  }

  std::vector<CopyPair> host_pairs(int64_t index, const model::LayerActivations& acts, bool to_host) {
    std::vector<CopyPair> pairs;
    const auto& views = host_views_[static_cast<size_t>(index)];
    size_t k = 0;
    acts.for_each([&](const char*, const at::Tensor& t) {
      const auto& s = specs_[k];
      const auto& host = views[k++];
      const int64_t n = host.size(s.token_dim);
      if (n == 0) return;
      auto dev = t.narrow(s.token_dim, 0, n);
      if (to_host)
        pairs.push_back({host, dev});
      else
        pairs.push_back({dev, host});
    });
    return pairs;
  }

  void prefetch(int64_t index) {
    const int b = static_cast<int>(index % 2);
    owner_[b] = index;
    valid_[b] = false;
    prefetched_.insert(index);
    // The rounding buffers have no x slot (forward never writes one): the
    // input comes back into a tensor of its own, kept here until restore hands
    // it to the layer (and by the engine until the copy is waited on).
    model::LayerActivations dst = buffers_[b];
    const auto& xs = x_spec();
    dst.x = at::empty(xs.shape, at::TensorOptions().dtype(xs.dtype).device(device_));  // [B, S, h]
    x_in_[index] = dst.x;
    engine_->copy_in(index, host_pairs(index, dst, /*to_host=*/false));
  }

  const model::SkeletalSpec& x_spec() const {
    for (const auto& s : specs_)
      if (std::string(s.name) == "x") return s;
    throw Error("skeletal set without x");
  }

  void restore_resident(int64_t index, model::LayerActivations& acts, const plan::LayerSplit& split) {
    auto it = resident_.find(index);
    if (it == resident_.end()) return;
    size_t k = 0;
    acts.for_each([&](const char*, at::Tensor& t) {
      const auto& s = specs_[k];
      const auto& r = it->second[k++];
      if (r.defined()) t.narrow(s.token_dim, split.offload_tokens, split.resident_tokens).copy_(r);
    });
    resident_.erase(it);
  }

  // Host link each way and one layer's forward, backward and recompute time
  // at the run's shape (a few seconds at most).
  void measure(model::LlamaModel& model, plan::SplitInputs& in) {
    using Clock = std::chrono::steady_clock;
    auto seconds = [&](auto&& fn) {
      fn();  // warm-up
      memory::synchronize(device_);
      auto t0 = Clock::now();
      fn();
      memory::synchronize(device_);
      return std::chrono::duration<double>(Clock::now() - t0).count();
    };
    const int64_t probe = std::min<int64_t>(256ll << 20, static_cast<int64_t>(in.fixed_bytes + in.rest_bytes));
    auto dev = at::empty({probe}, at::TensorOptions().dtype(at::kByte).device(device_));  // [probe]
    // Host memory like the pool's: pinned on CUDA, and given back after (PyTorch's
    // pinned cache would keep it for the whole process); outside the CPU meter.
    auto host = memory::HostPool(probe, device_).tensor().narrow(0, 0, probe);  // [probe]
    in.d2h_bytes_per_s = static_cast<double>(probe) / seconds([&] { host.copy_(dev); });
    in.h2d_bytes_per_s = static_cast<double>(probe) / seconds([&] { dev.copy_(host); });
    dev.reset();
    host.reset();

    const auto& cfg = model.config();
    const auto& w = model.compute().layers.front();
    auto rope = model.rope(seq_len_);
    auto x = at::randn({batch_, seq_len_, cfg.hidden},
                       at::TensorOptions().dtype(model.options().compute_dtype).device(device_));
    model::LayerWeights scratch = w;
    for (auto& [n, t] : scratch.named()) *t = at::zeros_like(*t);
    model::LayerActivations acts;
    at::Tensor y;
    in.forward_s = seconds([&] { acts = {}; y = model.layer().forward(w, rope, x, acts); });
    in.backward_s = seconds([&] { model.layer().backward(w, scratch, rope, acts, y); });
    in.recompute_s = seconds([&] { model.layer().recompute_tokens(w, rope, acts, 0); });
  }

  // Device memory for resident tokens, read now: after the model, its
  // gradients and the optimizer state exist (the trainer creates the
  // optimizer first) and after the measurement's blocks are given back.
  double spare_device(const model::LlamaModel& model, const plan::SplitInputs& in) {
    if (device_.is_cpu()) return 0.0;  // the device is the host: nothing to keep resident apart
    memory::release_cached_memory(device_);
    const auto info = memory::device_memory_info(device_);
    const auto stats = memory::memory_stats(device_);
    const double set = in.fixed_bytes + in.rest_bytes;
    const double x_bytes = static_cast<double>(batch_ * seq_len_ * model.config().hidden *  // [B, S, h]
                                               static_cast<int64_t>(c10::elementSize(model.options().compute_dtype)));
    double layer_weights = 0;
    for (const auto& [n, t] : model.compute().layers.front().named())
      layer_weights += static_cast<double>(t->nbytes());
    // What prepare and the steps allocate beyond this point: two rounding
    // buffers; one layer's backward working set (the gradients of its
    // skeletal set and a half more for matmul outputs, dy, dx and the x held
    // for the copies, its weight gradients in the compute dtype); the loss
    // chunk's logits and their gradient (about 2 x 256 MiB).
    const double planned = 2.0 * set + 1.5 * set + 4.0 * x_bytes + layer_weights + 512.0 * (1ll << 20);
    return memory::spare_device_bytes({static_cast<double>(info.free), static_cast<double>(info.total),
                                       static_cast<double>(stats.allocated), static_cast<double>(stats.reserved)},
                                      planned, 2.0 * (1ll << 30));
  }

  void add_resident(const plan::SplitInputs& in) {
    // Explicit alpha plus explicit device share (tests, experiments).
    const int64_t swapped = memo_ ? std::max<int64_t>(0, in.layers - 2) : in.layers;
    if (swapped == 0) return;
    double frac = std::min(1.0 - split_.alpha, in.device_spare_bytes / (static_cast<double>(swapped) * in.rest_bytes));
    auto res = static_cast<int64_t>(std::floor(frac * static_cast<double>(seq_len_)));
    for (auto& l : split_.layers)
      if (l.swapped) l.resident_tokens = std::min(res, seq_len_ - l.offload_tokens);
    split_.resident = static_cast<double>(res) / static_cast<double>(seq_len_);
  }

  bool memo_;
  PolicyOptions options_;
  c10::Device device_ = c10::Device(c10::DeviceType::CPU);
  int64_t batch_ = 0, seq_len_ = 0;
  std::vector<model::SkeletalSpec> specs_;
  plan::SplitInputs inputs_;
  plan::SplitChoice split_;
  model::LayerActivations buffers_[2];
  int64_t buffer_bytes_ = 0;
  memory::HostPool pool_;  // its tensor's views below keep the memory alive
  int64_t host_bytes_ = 0;
  std::vector<std::vector<at::Tensor>> host_views_;
  std::unique_ptr<SwapEngine> engine_;
  int64_t owner_[2] = {-1, -1};
  bool valid_[2] = {false, false};
  std::map<int64_t, at::Tensor> x_hold_;  // layer inputs from forward, until copied out or used
  std::map<int64_t, at::Tensor> x_in_;    // layer inputs prefetched for backward
  std::map<int64_t, std::vector<at::Tensor>> resident_;  // per layer, by skeletal position
  std::set<int64_t> prefetched_;
};

}  // namespace

std::unique_ptr<ActivationPolicy> make_swap_policy(bool memo, const PolicyOptions& options) {
  return std::make_unique<SwapPolicy>(memo, options);
}

}  // namespace memo::runtime
