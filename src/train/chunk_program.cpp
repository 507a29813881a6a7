// The per-layer program over token chunks (docs/chunks.md, docs/design.md
// section 9): a layer's forward and backward chunk by chunk, the policy
// seeing each chunk as the unit {layer, chunk}. Forward: chunk c's
// pre-attention at its true positions, its k and v into the layer's
// whole-sequence K, V, its queries against the causal prefix [0, t0 + n),
// post-attention and the output projection into y. Backward, last chunk to
// first: post-attention backward, the chunk's attention backward (dq, and
// dK, dV added into whole-sequence accumulators over the prefix), then at
// once its pre-attention backward, since the chunk's own dk, dv are complete
// (only chunks at or after it attend to its keys). Whole-sequence tensors on
// the device: the hidden state (x and y; dy and dx), K and V of the current
// layer, and the dK, dV accumulators; nothing [S x ffn] exists.
#include <ATen/ATen.h>

#include <algorithm>

#include "core/error.h"
#include "model/chunk_stages.h"
#include "model/ops.h"
#include "train/layer_program.h"

namespace memo::train {

namespace {

// The exchange around attention is the identity on one device; chunked
// layers under sequence parallelism are not built (docs/chunks.md).
void require_local_attention(runtime::StageExchange& exchange) {
  if (!dynamic_cast<runtime::NoExchange*>(&exchange))
    throw InputError("--chunk-tokens with sequence parallelism (--sp > 1) is not built yet; run with "
                     "--chunk-tokens 0 or --sp 1");
}

// The preallocated storage of a chunk of n tokens: the policy's (chunk-sized)
// rounding buffer, its first n tokens for a shorter last chunk.
model::LayerActivations chunk_storage(const model::LayerActivations* storage, int64_t n) {
  if (!storage) return {};
  if (storage->n1.defined() && storage->n1.size(1) == n) return *storage;
  return model::token_slice(*storage, 0, n);
}

}  // namespace

at::Tensor LayerProgram::forward_layer_chunks(int64_t index, const model::LayerWeights& w,
                                              const TokenPositions& pos, const at::Tensor& x,
                                              runtime::ActivationPolicy* policy) {
  require_local_attention(parts_.exchange);
  const auto& layer = parts_.layer;
  const auto& c = layer.config();
  const int64_t B = x.size(0), S = x.size(1), C = parts_.chunk_tokens;
  auto kv = model::allocate_layer_kv(c, B, S, x.options());  // [B, S, 2 nkv d]
  auto y = at::empty({B, S, c.hidden}, x.options());         // [B, S, h]
  for (int64_t chunk = 0, t0 = 0; t0 < S; ++chunk, t0 += C) {
    const int64_t n = std::min(C, S - t0);
    const runtime::Unit unit{index, chunk};
    auto acts = chunk_storage(policy ? policy->forward_storage(unit) : nullptr, n);
    acts.x = x.narrow(1, t0, n);                                                 // [B, n, h]
    layer.forward_pre_attention(w, pos.rope, acts.x, acts, 0, 0, pos.first + t0);  // n1, rstd1, qkv
    model::store_chunk_kv(c, acts.qkv, kv, t0);
    layer.keep_attention(model::attend_chunk(layer, acts.qkv, kv, t0), acts);     // o, lse
    layer.forward_post_attention(w, acts.x, acts);                                // x2, n2, rstd2, gu, a
    y.narrow(1, t0, n).copy_(layer.forward_output(w, acts));                      // x2 + a Wdown^T
    if (policy) policy->save(unit, std::move(acts));
  }
  if (policy) policy->save_kv(index, std::move(kv));
  return y;
}

at::Tensor LayerProgram::backward_layer_chunks(int64_t index, const model::LayerWeights& w,
                                               model::LayerWeights& grads, const TokenPositions& pos,
                                               const at::Tensor& dy, runtime::ActivationPolicy& policy) {
  require_local_attention(parts_.exchange);
  const auto& layer = parts_.layer;
  const auto& c = layer.config();
  const int64_t B = dy.size(0), S = dy.size(1), C = parts_.chunk_tokens;
  // The policy recomputes on the local tokens only: its table starts at them.
  const auto local_rope = pos.rope.slice(pos.first, S);
  runtime::LayerContext ctx{layer, w, local_rope, {}, 0, 0};
  ctx.chunk_tokens = C;
  ctx.kv = policy.restore_kv(index, ctx);  // [B, S, 2 nkv d]
  // dK, dV add up over the chunks: in the statistics dtype, rounded once.
  auto dkv = model::zeros_layer_kv(c, B, S, dy.options().dtype(model::stat_dtype(dy.scalar_type())));
  auto dx = at::empty({B, S, c.hidden}, dy.options());  // [B, S, h]
  const int64_t chunks = (S + C - 1) / C;
  for (int64_t chunk = chunks - 1; chunk >= 0; --chunk) {
    const int64_t t0 = chunk * C, n = std::min(C, S - t0);
    ctx.t0 = t0;
    const auto acts = policy.restore(runtime::Unit{index, chunk}, ctx);
    // A token range of a batch > 1 is strided across the sequences: one
    // chunk-sized copy, so the stages see dense [B, n, h] operands.
    const auto dy_chunk = dy.narrow(1, t0, n).contiguous();                     // [B, n, h]
    auto post = layer.backward_post_attention(w, grads, acts, dy_chunk);        // dx2, d_o
    auto dqkv = model::backward_attention_chunk(layer, std::move(post.d_o), acts, ctx.kv, dkv, t0);
    dx.narrow(1, t0, n).copy_(layer.backward_pre_attention(w, grads, pos.rope, acts, std::move(dqkv),
                                                           post.dx2, pos.first + t0));
  }
  return dx;
}

}  // namespace memo::train
