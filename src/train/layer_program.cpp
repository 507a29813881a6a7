// The per-layer program: the forward and backward loops over the layer stack,
// each layer's stages with the exchange between them.
#include "train/layer_program.h"

#include <utility>

#include "memory/planned_allocator.h"

namespace memo::train {

at::Tensor LayerProgram::forward(at::Tensor x, const TokenPositions& pos,
                                 runtime::ActivationPolicy* policy) {
  auto& weights = parts_.weights;
  if (parts_.layers > 0) weights.prefetch(0);
  for (int64_t i = 0; i < parts_.layers; ++i) {
    if (chunked(x.size(1))) {
      const auto& w = weights.acquire(i);
      if (i + 1 < parts_.layers) weights.prefetch(i + 1);
      at::Tensor y;
      {
        runtime::TraceSpan span(parts_.trace, runtime::Lane::Compute, "fwd ", i);
        memory::RegionScope region("layer_fwd");
        y = forward_layer_chunks(i, w, pos, x, policy);
      }
      weights.release(i);
      x = std::move(y);
      continue;
    }
    model::LayerActivations acts;
    if (policy)
      if (const auto* storage = policy->forward_storage(i)) acts = *storage;  // a rounding buffer
    const auto& w = weights.acquire(i);
    if (i + 1 < parts_.layers) weights.prefetch(i + 1);
    at::Tensor y;
    {
      runtime::TraceSpan span(parts_.trace, runtime::Lane::Compute, "fwd ", i);
      // Regions mark the profiler's level-1 units (memory/planned_allocator.h).
      memory::RegionScope region("layer_fwd");
      y = forward_layer(w, pos, x, acts);
    }
    weights.release(i);
    if (policy) policy->save(i, std::move(acts));
    x = std::move(y);
  }
  return x;
}

at::Tensor LayerProgram::backward(at::Tensor dy, const TokenPositions& pos,
                                  runtime::ActivationPolicy& policy, model::ModelWeights& grads) {
  auto& weights = parts_.weights;
  const int64_t S = dy.size(1);
  // The policy recomputes on the local tokens only: its table starts at them.
  const auto local_rope = pos.rope.slice(pos.first, S);
  if (parts_.layers > 0) weights.prefetch(parts_.layers - 1);
  for (int64_t i = parts_.layers - 1; i >= 0; --i) {
    const auto& w = weights.acquire(i);
    if (i > 0) weights.prefetch(i - 1);
    if (parts_.before_layer_gradients) parts_.before_layer_gradients(i);
    auto& g = grads.layers[static_cast<size_t>(i)];
    if (chunked(S)) {
      {
        runtime::TraceSpan span(parts_.trace, runtime::Lane::Compute, "bwd ", i);
        memory::RegionScope region("layer_bwd");
        dy = backward_layer_chunks(i, w, g, pos, dy, policy);
      }
      weights.release(i);
      if (parts_.on_layer_gradients) parts_.on_layer_gradients(i, g);
      continue;
    }
    auto acts = policy.restore(i, runtime::LayerContext{parts_.layer, w, local_rope, {}, 0, 0, &parts_.exchange, {}});
    {
      runtime::TraceSpan span(parts_.trace, runtime::Lane::Compute, "bwd ", i);
      memory::RegionScope region("layer_bwd");
      dy = backward_layer(w, g, pos, acts, dy);
    }
    weights.release(i);
    if (parts_.on_layer_gradients) parts_.on_layer_gradients(i, g);
  }
  return dy;
}

at::Tensor LayerProgram::forward_layer(const model::LayerWeights& w, const TokenPositions& pos,
                                       const at::Tensor& x, model::LayerActivations& acts) {
  const auto& layer = parts_.layer;
  auto& exchange = parts_.exchange;
  acts.x = x;
  layer.forward_pre_attention(w, pos.rope, x, acts, 0, 0, pos.first);  // n1, rstd1, qkv
  layer.keep_attention(runtime::attend_exchanged(layer, exchange, acts.qkv), acts);  // o, lse
  layer.forward_post_attention(w, x, acts);  // x2, n2, rstd2, gu, a
  return layer.forward_output(w, acts);      // y = x2 + a Wdown^T
}

at::Tensor LayerProgram::backward_layer(const model::LayerWeights& w, model::LayerWeights& grads,
                                        const TokenPositions& pos,
                                        const model::LayerActivations& acts, const at::Tensor& dy) {
  const auto& layer = parts_.layer;
  auto& exchange = parts_.exchange;
  auto post = layer.backward_post_attention(w, grads, acts, dy);  // dx2, d_o
  at::Tensor dqkv = runtime::backward_attention_exchanged(layer, exchange, std::move(post.d_o), acts);
  return layer.backward_pre_attention(w, grads, pos.rope, acts, std::move(dqkv), post.dx2,
                                      pos.first);
}

}  // namespace memo::train
