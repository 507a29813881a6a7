// `keep`: every skeletal tensor stays on the device (plain PyTorch).
// `recompute`: only the layer input stays; backward re-runs the whole layer's
// forward, attention included (Megatron full recompute).
// Both per unit: with chunked layers (docs/chunks.md) keep holds every
// chunk's set and each layer's K and V; recompute holds each chunk's input
// (together the layer's input), rebuilds the layer's K and V from it chunk by
// chunk in restore_kv and then each chunk's set against them.
#include <ATen/ATen.h>

#include <map>

#include "core/error.h"
#include "core/units.h"
#include "runtime/kv_rebuild.h"
#include "runtime/kv_stream.h"
#include "runtime/policy.h"
#include "runtime/unit_recompute.h"

namespace memo::runtime {

namespace {

class KeepPolicy final : public ActivationPolicy {
 public:
  std::string name() const override { return "keep"; }
  void begin_step(const StepShape& shape) override {
    ActivationPolicy::begin_step(shape);
    saved_.clear();
  }
  void save(Unit u, model::LayerActivations&& acts) override {
    saved_[u] = std::move(acts);
    note_held();
  }
  model::LayerActivations restore(Unit u, const LayerContext&) override {
    auto it = saved_.find(u);
    if (it == saved_.end()) throw Error(cat("keep: unit ", to_string(u), " was not saved"));
    auto acts = std::move(it->second);
    saved_.erase(it);
    return acts;
  }
  void save_kv(int64_t layer, at::Tensor kv) override {
    kv_[layer] = std::move(kv);
    note_held();
  }
  at::Tensor restore_kv(int64_t layer, const LayerContext&) override {
    auto it = kv_.find(layer);
    if (it == kv_.end()) throw Error(cat("keep: K and V of layer ", layer, " were not saved"));
    auto kv = std::move(it->second);
    kv_.erase(it);
    return kv;
  }
  HeldBytes held() const override {
    HeldBytes h;
    for (const auto& [u, acts] : saved_) h.device += acts.bytes();
    for (const auto& [i, kv] : kv_) h.device += static_cast<int64_t>(kv.nbytes());
    return h;
  }

 private:
  std::map<Unit, model::LayerActivations> saved_;
  std::map<int64_t, at::Tensor> kv_;  // [B, S, 2 nkv d] per chunked layer
};

class RecomputePolicy final : public ActivationPolicy {
 public:
  std::string name() const override { return "recompute"; }
  void begin_step(const StepShape& shape) override {
    ActivationPolicy::begin_step(shape);
    seq_len_ = shape.seq_len;
    inputs_.clear();
  }
  void save(Unit u, model::LayerActivations&& acts) override {
    inputs_[u] = acts.x;  // everything else is dropped here
    note_held();
  }
  // K and V are dropped in forward (save_kv's default would throw) and
  // rebuilt here from the chunks' inputs.
  void save_kv(int64_t, at::Tensor) override {}
  // `--kv-on-host`: the same, into the stream's host blocks, chunk by chunk.
  void kv_forward_done(int64_t layer) override { kv_stream()->release(layer); }
  void restore_kv_on_host(int64_t layer, const LayerContext& ctx) override {
    rebuild_layer_kv_blocks(*kv_stream(), ctx, seq_len_, 0, layer_inputs(layer), name(), layer);  // no buffers
  }
  at::Tensor restore_kv(int64_t layer, const LayerContext& ctx) override {
    return rebuild_layer_kv(ctx, seq_len_, 0, layer_inputs(layer), name(), layer);  // no buffers
  }
  model::LayerActivations restore(Unit u, const LayerContext& ctx) override {
    auto it = inputs_.find(u);
    if (it == inputs_.end()) throw Error(cat("recompute: unit ", to_string(u), " was not saved"));
    model::LayerActivations acts;
    acts.x = it->second;
    recompute_unit(ctx, u, acts);
    inputs_.erase(it);
    return acts;
  }
  HeldBytes held() const override {
    HeldBytes h;
    for (const auto& [u, x] : inputs_) h.device += static_cast<int64_t>(x.nbytes());
    return h;
  }

 private:
  // The layer's chunk inputs, kept on the device, in chunk order.
  ChunkInputs layer_inputs(int64_t layer) const {
    return [this, layer](const ChunkInputFn& fn) {
      for (auto it = inputs_.lower_bound(Unit{layer, 0}); it != inputs_.end() && it->first.layer == layer; ++it)
        fn(it->first.chunk, it->second);
    };
  }

  int64_t seq_len_ = 0;
  std::map<Unit, at::Tensor> inputs_;  // per unit its input [B, n, h] (a view of the layer's)
};

}  // namespace

void ActivationPolicy::save_kv(int64_t layer, at::Tensor) {
  throw Error(cat(name(), ": does not run layers in chunks (save_kv of layer ", layer, ")"));
}

at::Tensor ActivationPolicy::restore_kv(int64_t layer, const LayerContext&) {
  throw Error(cat(name(), ": does not run layers in chunks (restore_kv of layer ", layer, ")"));
}

void ActivationPolicy::enable_kv_on_host() { kv_stream_ = std::make_shared<KvStream>(); }

void ActivationPolicy::restore_kv_on_host(int64_t layer, const LayerContext&) {
  if (!kv_stream_ || !kv_stream_->has_layer(layer))
    throw Error(cat(name(), ": K and V of layer ", layer, " are not in the host blocks"));
}

std::vector<std::string> policy_names() { return {"keep", "recompute", "offload", "memo"}; }

namespace {

std::unique_ptr<ActivationPolicy> policy_by_name(const std::string& name, const PolicyOptions& options) {
  if (name == "keep") return std::make_unique<KeepPolicy>();
  if (name == "recompute") return std::make_unique<RecomputePolicy>();
  if (name == "offload") return make_offload_policy(options);
  if (name == "memo") return make_memo_policy(options);
  throw InputError(cat("unknown policy \"", name, "\" (expected one of: ", joined(policy_names()), ")"));
}

}  // namespace

std::unique_ptr<ActivationPolicy> make_policy(const std::string& name, const PolicyOptions& options) {
  auto policy = policy_by_name(name, options);
  if (options.kv_on_host) policy->enable_kv_on_host();
  return policy;
}

}  // namespace memo::runtime
