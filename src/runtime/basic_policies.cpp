// `keep`: every skeletal tensor stays on the device (plain PyTorch).
// `recompute`: only the layer input stays; backward re-runs the whole layer's
// forward, attention included (Megatron full recompute).
#include <ATen/ATen.h>

#include <map>

#include "core/error.h"
#include "core/units.h"
#include "runtime/policy.h"
#include "runtime/stage_exchange.h"

namespace memo::runtime {

namespace {

class KeepPolicy final : public ActivationPolicy {
 public:
  std::string name() const override { return "keep"; }
  void begin_step(const StepShape& shape) override {
    ActivationPolicy::begin_step(shape);
    saved_.clear();
  }
  void save(int64_t index, model::LayerActivations&& acts) override {
    saved_[index] = std::move(acts);
    note_held();
  }
  model::LayerActivations restore(int64_t index, const LayerContext&) override {
    auto it = saved_.find(index);
    if (it == saved_.end()) throw Error(cat("keep: layer ", index, " was not saved"));
    auto acts = std::move(it->second);
    saved_.erase(it);
    return acts;
  }
  HeldBytes held() const override {
    HeldBytes h;
    for (const auto& [i, acts] : saved_) h.device += acts.bytes();
    return h;
  }

 private:
  std::map<int64_t, model::LayerActivations> saved_;
};

class RecomputePolicy final : public ActivationPolicy {
 public:
  std::string name() const override { return "recompute"; }
  void begin_step(const StepShape& shape) override {
    ActivationPolicy::begin_step(shape);
    inputs_.clear();
  }
  void save(int64_t index, model::LayerActivations&& acts) override {
    inputs_[index] = acts.x;  // everything else is dropped here
    note_held();
  }
  model::LayerActivations restore(int64_t index, const LayerContext& ctx) override {
    auto it = inputs_.find(index);
    if (it == inputs_.end()) throw Error(cat("recompute: layer ", index, " was not saved"));
    model::LayerActivations acts;
    acts.x = it->second;
    if (ctx.exchange) {
      // Attention runs on the whole sequence again (Ulysses: its all-to-alls too).
      ctx.layer.forward_pre_attention(ctx.weights, ctx.rope, acts.x, acts);
      ctx.layer.keep_attention(attend_exchanged(ctx.layer, *ctx.exchange, acts.qkv), acts);
      ctx.layer.forward_post_attention(ctx.weights, acts.x, acts);
    } else {
      ctx.layer.recompute(ctx.weights, ctx.rope, acts);
    }
    inputs_.erase(it);
    return acts;
  }
  HeldBytes held() const override {
    HeldBytes h;
    for (const auto& [i, x] : inputs_) h.device += static_cast<int64_t>(x.nbytes());
    return h;
  }

 private:
  std::map<int64_t, at::Tensor> inputs_;
};

}  // namespace

std::vector<std::string> policy_names() { return {"keep", "recompute", "offload", "memo"}; }

std::unique_ptr<ActivationPolicy> make_policy(const std::string& name, const PolicyOptions& options) {
  if (name == "keep") return std::make_unique<KeepPolicy>();
  if (name == "recompute") return std::make_unique<RecomputePolicy>();
  if (name == "offload") return make_offload_policy(options);
  if (name == "memo") return make_memo_policy(options);
  throw InputError(cat("unknown policy \"", name, "\" (expected one of: ", joined(policy_names()), ")"));
}

}  // namespace memo::runtime
