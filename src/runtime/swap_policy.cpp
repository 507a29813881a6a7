// `offload` and `memo`: which tokens of each layer's skeletal set go where,
// and when (docs/design.md section 5). The activation store (activation_store.h)
// keeps them: layers write into one of two device rounding buffers; a side
// stream copies the kept part to a pinned host pool while the next layer
// computes; in backward the next layer's part is prefetched one layer ahead
// and memo's dropped tokens are recomputed token-wise into the buffer,
// without attention.
//   offload: every layer, every tensor, all tokens to host.
//   memo:    x, o, lse whole; the first alpha*s tokens of the others; the
//            rest recomputed; the last two layers never leave their buffer.
//            Host short: the device tier holds the latest units' x, o, lse;
//            where it cannot, units keep only x and backward runs their
//            attention again (runtime/unit_recompute.h).
// With chunked layers offload also sends each layer's K and V to the host;
// memo drops them after the layer's forward and rebuilds them in its
// backward from the chunks' inputs (which it has on the host anyway):
// runtime/kv_rebuild.h, ActivationStore::for_each_input.
// The start-up measurement that feeds memo's split is startup_measurement.h.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "core/error.h"
#include "core/units.h"
#include "memory/host_pool.h"
#include "model/llama.h"
#include "model/ops.h"
#include "plan/swap_split.h"
#include "runtime/activation_store.h"
#include "runtime/kv_rebuild.h"
#include "runtime/kv_stream.h"
#include "runtime/policy.h"
#include "runtime/startup_measurement.h"
#include "runtime/trace.h"
#include "runtime/unit_recompute.h"

namespace memo::runtime {

namespace {

// The two swapping policies differ only in what they let the LP choose.
enum class SwapKind { Offload, Memo };

class SwapPolicy final : public ActivationPolicy {
 public:
  SwapPolicy(SwapKind kind, PolicyOptions options) : memo_(kind == SwapKind::Memo), options_(options) {}

  std::string name() const override { return memo_ ? "memo" : "offload"; }
  std::optional<double> alpha() const override { return split_.alpha; }
  std::optional<SplitReport> split_report() const override {
    SplitReport r;
    r.alpha = split_.alpha;
    r.resident = split_.resident;
    r.units = static_cast<int64_t>(split_.layers.size());
    for (const auto& l : split_.layers) r.swapped_units += l.swapped;
    r.fixed_on_device_units = split_.fixed_on_device_units;
    r.fixed_on_device_bytes = split_.fixed_on_device_bytes;
    r.attention_recomputed_units = split_.attention_recomputed_units;
    r.attention_recomputed_bytes = split_.attention_recomputed_bytes;
    return r;
  }
  int64_t buffer_bytes() const override { return store_ ? 2 * store_->buffer_bytes() : 0; }
  HostPinning host_pinning() const override {
    if (!store_) return {};
    return {store_->host_pool().pinned_bytes() + store_->kv_host_pool().pinned_bytes(),
            store_->host_pool().pin_seconds() + store_->kv_host_pool().pin_seconds()};
  }

  void prepare(model::LlamaModel& model, int64_t batch, int64_t seq_len) override {
    const auto& cfg = model.config();
    const auto compute = model.options().compute_dtype;
    device_ = model.options().device;
    batch_ = batch;
    seq_len_ = seq_len;
    // Units: whole layers, or chunks of chunk_tokens (docs/chunks.md); the LP
    // splits each unit as it split each layer, with a unit's bytes and times.
    const bool chunked = options_.chunk_tokens > 0 && options_.chunk_tokens < seq_len;
    rebuilds_kv_ = memo_ && chunked;
    unit_tokens_ = chunked ? options_.chunk_tokens : seq_len;
    chunks_ = (seq_len + unit_tokens_ - 1) / unit_tokens_;
    plan::SplitInputs in;
    in.layers = cfg.layers * chunks_;
    in.seq_len = unit_tokens_;
    for (const auto& s : model::skeletal_specs(cfg, batch, unit_tokens_, compute)) {
      (s.always_offloaded ? in.fixed_bytes : in.rest_bytes) += static_cast<double>(s.bytes());
      // o and lse: what a unit keeping only x leaves off the host (memo).
      if (memo_ && options_.attention_recompute && s.always_offloaded && !s.layer_input)
        in.attention_bytes += static_cast<double>(s.bytes());
    }
    in.chunks_per_layer = chunks_;
    // Chunked offload: each layer's K and V go to the host too, a chunk's
    // share per unit. Chunked memo rebuilds them instead: per unit, its input
    // comes back once more (h c per token) for a norm and QKV projection.
    const double kv_per_token =
        static_cast<double>(2 * cfg.kv_heads * cfg.head_dim * static_cast<int64_t>(c10::elementSize(compute)));
    if (chunked && !rebuilds_kv_) in.fixed_bytes += kv_per_token * static_cast<double>(batch * unit_tokens_);
    if (rebuilds_kv_)
      in.rebuild_h2d_bytes =
          static_cast<double>(batch * unit_tokens_ * cfg.hidden * static_cast<int64_t>(c10::elementSize(compute)));
    in.swap_last_two = !memo_;
    in.alpha = memo_ ? options_.alpha : std::optional<double>(1.0);
    in.host_bytes = options_.host_memory_bytes > 0 ? options_.host_memory_bytes : memory::host_budget(0).bytes;
    if (chunked && !rebuilds_kv_) {
      // Every layer's K and V are on the host, the last units' included: what
      // the LP's per-unit share leaves out comes off the budget.
      const int64_t swapped_units = memo_ ? std::max<int64_t>(0, in.layers - 2) : in.layers;
      const double kv_host = kv_per_token * static_cast<double>(batch * seq_len * cfg.layers);
      in.host_bytes -= std::max(0.0, kv_host - kv_per_token * static_cast<double>(batch * unit_tokens_ * swapped_units));
    }
    if (rebuilds_kv_ && options_.kv_on_host) {
      // --kv-on-host: memo's K, V blocks and dK, dV accumulators, one layer's
      // at a time (the stream's pools, beside the store's), off its budget.
      const int64_t kv_width = 2 * cfg.kv_heads * cfg.head_dim;
      const int64_t bytes = static_cast<int64_t>(c10::elementSize(compute)) +
                            static_cast<int64_t>(c10::elementSize(model::stat_dtype(compute)));
      in.host_bytes -= static_cast<double>(batch * seq_len * kv_width * bytes);
    }
    if (memo_ && !options_.alpha) {
      const auto t = measure_startup_times(model, batch, unit_tokens_, in.fixed_bytes + in.rest_bytes);
      in.d2h_bytes_per_s = t.d2h_bytes_per_s;
      in.h2d_bytes_per_s = t.h2d_bytes_per_s;
      in.forward_s = t.forward_s;
      in.backward_s = t.backward_s;
      in.recompute_s = t.recompute_s;
      if (rebuilds_kv_) in.rebuild_s = t.pre_attention_s;
    }
    // Chunked: the whole-sequence tensors a unit's figures leave out (the
    // hidden state in and out, K, V and their accumulators: 2 h c + kv (c + s)
    // per token) are not spare.
    const double whole_sequence =
        chunked ? static_cast<double>(batch * seq_len) *
                      (2.0 * static_cast<double>(cfg.hidden * static_cast<int64_t>(c10::elementSize(compute))) +
                       kv_per_token * (1.0 + static_cast<double>(c10::elementSize(model::stat_dtype(compute))) /
                                                 static_cast<double>(c10::elementSize(compute))))
                : 0.0;
    in.device_spare_bytes =
        options_.device_spare_bytes >= 0
            ? options_.device_spare_bytes
            : measure_spare_device(model, batch, unit_tokens_, in.fixed_bytes + in.rest_bytes, whole_sequence);
    split_ = choose_split(in);
    if (memo_ && !options_.alpha && options_.agree_alpha) {
      // Many ranks: the alpha every rank agrees on (each measured its own).
      const double agreed = options_.agree_alpha(split_.alpha);
      if (agreed != split_.alpha) {
        in.alpha = agreed;
        split_ = choose_split(in);
      }
    }
    if (memo_ && options_.agree_units && in.attention_bytes > 0) {
      // Many ranks: the same units keep only x everywhere (the most any needs).
      const int64_t agreed = options_.agree_units(split_.attention_recomputed_units);
      if (agreed != split_.attention_recomputed_units) {
        in.min_attention_recomputed_units = agreed;
        split_ = choose_split(in);
      }
    }
    // An explicit alpha with an explicit device share keeps that share resident.
    if (memo_ && options_.alpha && options_.device_spare_bytes > 0) add_resident(in);
    inputs_ = in;

    // The store: rounding buffers and the host pool, each allocated once.
    store_.reset();  // a second prepare: the old buffers and pool go first
    std::map<Unit, UnitPlacement> placement;
    for (int64_t i = 0; i < cfg.layers; ++i)
      for (int64_t c = 0; c < chunks_; ++c) {
        const auto& l = split_.layers[static_cast<size_t>(i * chunks_ + c)];
        const int64_t n = std::min(unit_tokens_, seq_len - c * unit_tokens_);  // a shorter last chunk
        const int64_t host = std::min(l.offload_tokens, n);
        placement[Unit{i, c}] = {l.swapped, host, std::min(l.resident_tokens, n - host), n, l.fixed_on_device,
                                 l.attention_recomputed};
      }
    KvPlacement kv;
    // Offload's K and V; memo rebuilds its, and with --kv-on-host they live in the KvStream.
    if (chunked && !options_.kv_on_host && !rebuilds_kv_) kv = {cfg.layers, seq_len};
    store_ = std::make_unique<ActivationStore>(cfg, batch, unit_tokens_, compute, device_, std::move(placement),
                                               in.host_bytes, options_.trace, chunks_, kv);
  }

  std::vector<std::pair<std::string, std::string>> describe() const override {
    auto pct = [](double f) { return strf("%.1f%%", 100.0 * f); };
    int64_t swapped = 0;
    for (const auto& l : split_.layers) swapped += l.swapped;
    const int64_t buffer_bytes = store_ ? store_->buffer_bytes() : 0;
    const int64_t host_bytes = store_ ? store_->host_bytes() : 0;
    const int64_t pinned = host_pinning().bytes;
    const double pin_s = host_pinning().seconds;
    std::vector<std::pair<std::string, std::string>> out = {
        {"split", strf("x, o, lse to host%s%s; other tensors: %s offloaded, %s resident, %s recomputed "
                       "(alpha %.3f, %s)",
                       split_.fixed_on_device_units > 0
                           ? strf(" (on the device for the latest %lld units, %s: the host is short)",
                                  (long long)split_.fixed_on_device_units,
                                  format_bytes(split_.fixed_on_device_bytes).c_str())
                                 .c_str()
                           : "",
                       split_.attention_recomputed_units > 0
                           ? strf("; only x for %lld units, the earliest chunks, their attention recomputed in "
                                  "backward (%s of o, lse kept nowhere: host and device short)",
                                  (long long)split_.attention_recomputed_units,
                                  format_bytes(split_.attention_recomputed_bytes).c_str())
                                 .c_str()
                           : "",
                       pct(split_.alpha).c_str(), pct(split_.resident).c_str(),
                       pct(1.0 - split_.alpha - split_.resident).c_str(), split_.alpha,
                       split_.limited_by.c_str())},
        {"layers", chunks_ > 1
                       ? strf("%lld of %lld units swapped (%lld chunks of %lld tokens per layer; %s)%s",
                              (long long)swapped, (long long)split_.layers.size(), (long long)chunks_,
                              (long long)unit_tokens_,
                              rebuilds_kv_ ? "K and V of each layer rebuilt in its backward from its chunks' inputs"
                                           : "K and V of every layer to the host",
                              memo_ ? "; the last two units stay in their rounding buffers" : "")
                       : strf("%lld of %lld swapped%s", (long long)swapped, (long long)split_.layers.size(),
                              memo_ ? " (the last two stay in their rounding buffers)" : "")},
        {"memory", strf("2 rounding buffers of %s on the device; host pool %s of a %s budget (%s)",
                        format_bytes(static_cast<double>(buffer_bytes)).c_str(),
                        format_bytes(static_cast<double>(host_bytes)).c_str(),
                        format_bytes(inputs_.host_bytes).c_str(),
                        pinned > 0
                            ? strf("%s pinned in %s", format_bytes(static_cast<double>(pinned)).c_str(),
                                   format_seconds(pin_s).c_str())
                                  .c_str()
                            : device_.is_cpu() ? "not pinned: CPU run" : "not pinned: built without MEMO_CUDA")},
    };
    if (inputs_.forward_s > 0)
      out.push_back({"overlap", strf("per %s: copy-out %s vs forward %s, prefetch %s vs backward %s "
                                     "(+ recompute %s); predicted exposed copy %s per step",
                                     chunks_ > 1 ? "unit (one chunk)" : "layer",
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
    store().begin_step();
  }

  const model::LayerActivations* forward_storage(Unit u) override { return store().forward_storage(u); }

  void save(Unit u, model::LayerActivations&& acts) override {
    store().save(u, acts);
    note_held();
  }

  model::LayerActivations restore(Unit u, const LayerContext& ctx) override {
    auto& store = this->store();
    const Unit unit = u;
    store.backward_reached(unit);
    model::LayerActivations acts;
    if (store.in_buffer(unit)) {
      // Still in its rounding buffer from forward (the last units).
      acts = store.take_from_buffer(unit);
    } else {
      if (!store.placement(unit).swapped)
        throw Error(cat(name(), ": unit ", to_string(unit), " lost its rounding buffer"));
      if (!store.prefetched(unit)) store.prefetch(unit);
      acts = store.take_copied_in(unit);
      // The dropped tokens, recomputed into the buffer (no attention), at the
      // unit's positions; a unit that kept only x, wholly (attention again).
      const int64_t kept = store.kept_tokens(unit);
      if (store.placement(unit).attention_recomputed) {
        TraceSpan span(options_.trace, Lane::Compute, "recompute with attention ", unit, 0,
                       store.engine().compute_stream());
        recompute_unit(ctx, unit, acts);
      } else if (kept < store.unit_tokens(unit)) {
        TraceSpan span(options_.trace, Lane::Compute, "recompute ", unit, 0, store.engine().compute_stream());
        ctx.layer.recompute_tokens(ctx.weights, ctx.rope, acts, kept, ctx.t0);
      }
    }
    // Prefetch the next swapped unit below into its buffer, if that is free.
    for (Unit below = previous(unit); below.layer >= 0; below = previous(below)) {
      if (!store.placement(below).swapped || store.prefetched(below)) continue;
      if (store.in_buffer(below)) continue;  // still in its buffer
      if (store.buffer_free_for(below)) store.prefetch(below);
      break;
    }
    // Chunked: the layer below's K and V come back while this layer's first chunk runs.
    if (chunks_ > 1 && !options_.kv_on_host && !rebuilds_kv_ && unit.chunk == 0 && unit.layer > 0 &&
        !store.kv_prefetched(unit.layer - 1))
      store.prefetch_kv(unit.layer - 1);
    return acts;
  }

  void save_kv(int64_t layer, at::Tensor kv) override {
    if (chunks_ < 2) ActivationPolicy::save_kv(layer, std::move(kv));  // throws: not chunked
    if (rebuilds_kv_) return;  // memo: dropped here, rebuilt in restore_kv
    store().save_kv(layer, kv);
    note_held();
  }

  at::Tensor restore_kv(int64_t layer, const LayerContext& ctx) override {
    if (chunks_ < 2) return ActivationPolicy::restore_kv(layer, ctx);  // throws: not chunked
    if (rebuilds_kv_) return rebuild_layer_kv(ctx, seq_len_, forward_storage_tokens(ctx), layer_inputs(layer), name(), layer);
    return store().take_kv(layer);
  }

  // `--kv-on-host`: memo lets the layer's blocks go after its forward and
  // rewrites them before its backward; offload keeps them.
  void kv_forward_done(int64_t layer) override {
    if (rebuilds_kv_) kv_stream()->release(layer);
  }
  void restore_kv_on_host(int64_t layer, const LayerContext& ctx) override {
    if (!rebuilds_kv_) return ActivationPolicy::restore_kv_on_host(layer, ctx);  // checks the blocks are there
    rebuild_layer_kv_blocks(*kv_stream(), ctx, seq_len_, forward_storage_tokens(ctx), layer_inputs(layer), name(), layer);
  }

  // Bytes the K, V rebuild copied back to the device (every swapped unit's input once more).
  int64_t rebuild_h2d_bytes() const override { return store_ ? store_->rebuild_h2d_bytes() : 0; }

  void forward_done() override { store().forward_done(); }
  void end_step() override { store().end_step(); }

  HeldBytes held() const override {
    if (!store_) return {};
    return {store_->device_bytes(), store_->host_bytes()};
  }

 private:
  ActivationStore& store() {
    if (!store_) throw Error(cat(name(), ": used before prepare"));
    return *store_;
  }

  // The tokens of the storage the forward's pre-attention wrote into: the
  // rounding buffers' (a unit's), or fresh tensors (0).
  int64_t forward_storage_tokens(const LayerContext& ctx) const { return ctx.pre_attention_in_storage ? unit_tokens_ : 0; }

  // The layer's chunk inputs, held or back from the host (ActivationStore::for_each_input).
  ChunkInputs layer_inputs(int64_t layer) {
    return [this, layer](const ChunkInputFn& fn) {
      TraceSpan span(options_.trace, Lane::Compute, "rebuild kv ", Unit{layer, 0}, 0, store().engine().compute_stream());
      store().for_each_input(layer, fn);
    };
  }

  // The unit before u in forward order (layer -1 after the first).
  Unit previous(Unit u) const { return u.chunk > 0 ? Unit{u.layer, u.chunk - 1} : Unit{u.layer - 1, chunks_ - 1}; }

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

  void add_resident(const plan::SplitInputs& in) {
    // Explicit alpha plus explicit device share (tests, experiments).
    const int64_t swapped = memo_ ? std::max<int64_t>(0, in.layers - 2) : in.layers;
    if (swapped == 0) return;
    const double spare = in.device_spare_bytes - split_.fixed_on_device_bytes;  // less the device tier's
    double frac = std::min(1.0 - split_.alpha, std::max(0.0, spare) / (static_cast<double>(swapped) * in.rest_bytes));
    auto res = static_cast<int64_t>(std::floor(frac * static_cast<double>(unit_tokens_)));
    for (auto& l : split_.layers)  // units keeping only x recompute every token: none resident
      if (l.swapped && !l.attention_recomputed) l.resident_tokens = std::min(res, unit_tokens_ - l.offload_tokens);
    split_.resident = static_cast<double>(res) / static_cast<double>(unit_tokens_);
  }

  bool memo_;
  bool rebuilds_kv_ = false;  // chunked memo: K and V dropped after forward, rebuilt in backward
  PolicyOptions options_;
  c10::Device device_ = c10::Device(c10::DeviceType::CPU);
  int64_t batch_ = 0, seq_len_ = 0;
  int64_t unit_tokens_ = 0;  // tokens of a unit: seq_len_, or a chunk's
  int64_t chunks_ = 1;       // units per layer
  plan::SplitInputs inputs_;
  plan::SplitChoice split_;
  std::unique_ptr<ActivationStore> store_;
};

}  // namespace

std::unique_ptr<ActivationPolicy> make_offload_policy(const PolicyOptions& options) {
  return std::make_unique<SwapPolicy>(SwapKind::Offload, options);
}

std::unique_ptr<ActivationPolicy> make_memo_policy(const PolicyOptions& options) {
  return std::make_unique<SwapPolicy>(SwapKind::Memo, options);
}

}  // namespace memo::runtime
