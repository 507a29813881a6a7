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
// Under sequence parallelism (an exchange other than the identity) the
// chunks are chunks of the rank's shard and the layer runs in two passes
// forward and three backward (docs/chunks.md, "Chunks with sequence
// parallelism"; runtime/chunk_exchange.h).
#include <ATen/ATen.h>

#include <algorithm>
#include <vector>

#include "model/chunk_stages.h"
#include "model/ops.h"
#include "plan/chunk_plan.h"
#include "runtime/chunk_exchange.h"
#include "runtime/kv_stream.h"
#include "train/layer_program.h"

namespace memo::train {

namespace {

// One device: the exchange around attention is the identity, and each
// chunk's queries attend as soon as its own keys are written.
bool local_attention(runtime::StageExchange& exchange) {
  return dynamic_cast<runtime::NoExchange*>(&exchange) != nullptr;
}

// The preallocated storage of a chunk of n tokens: the policy's (chunk-sized)
// rounding buffer, its first n tokens for a shorter last chunk.
model::LayerActivations chunk_storage(const model::LayerActivations* storage, int64_t n) {
  if (!storage) return {};
  if (storage->n1.defined() && storage->n1.size(1) == n) return *storage;
  return model::token_slice(*storage, 0, n);
}

// Under sp, what backward keeps of a chunk until dK, dV are complete.
struct WaitingChunk {
  at::Tensor x;   // [B, n, h] the chunk's input
  at::Tensor dq;  // [B, n, nh d] token layout
};

int64_t storage_bytes(const at::Tensor& t) { return t.defined() ? static_cast<int64_t>(t.storage().nbytes()) : 0; }

// The bytes of the sp parts at their most (every chunk's attention backward
// done), from the storage the runtime allocated: K, V and dK, dV in head
// layout, and every chunk's waiting dq and input.
void note_waiting_parts(MeasuredParts& measured, const at::Tensor& kv_heads, const at::Tensor& dkv_heads,
                        const std::vector<WaitingChunk>& waiting) {
  int64_t waiting_bytes = 0;
  for (const auto& w : waiting) waiting_bytes += storage_bytes(w.x) + storage_bytes(w.dq);
  measured.note(plan::whole_part::kHeadKv, storage_bytes(kv_heads));
  measured.note(plan::whole_part::kHeadKvAccumulators, storage_bytes(dkv_heads));
  measured.note(plan::whole_part::kWaiting, waiting_bytes);
}

}  // namespace

at::Tensor LayerProgram::forward_layer_chunks(int64_t index, const model::LayerWeights& w,
                                              const TokenPositions& pos, const at::Tensor& x,
                                              runtime::ActivationPolicy* policy) {
  if (!local_attention(parts_.exchange)) return forward_layer_chunks_exchanged(index, w, pos, x, policy);
  const auto& layer = parts_.layer;
  const auto& c = layer.config();
  const int64_t B = x.size(0), S = x.size(1), C = parts_.chunk_tokens;
  if (auto* stream = policy ? policy->kv_stream() : nullptr) {
    // K and V on the host: each chunk's k, v to its host block, the earlier
    // blocks streamed back for its queries (runtime/kv_stream.h).
    stream->begin_layer(c, index, B, S, C, x.options());
    const auto earlier = stream->blocks(index);
    auto y = forward_chunk_loop(index, w, pos, x, policy, [&](const at::Tensor& qkv, int64_t chunk, int64_t t0) {
      stream->write(index, chunk, model::chunk_kv(c, qkv));
      return model::attend_chunk_blocks(layer, qkv, t0, C, earlier);
    });
    policy->kv_forward_done(index);
    return y;
  }
  auto kv = model::allocate_layer_kv(c, B, S, x.options());  // [B, S, 2 nkv d]
  auto y = forward_chunk_loop(index, w, pos, x, policy, [&](const at::Tensor& qkv, int64_t, int64_t t0) {
    model::store_chunk_kv(c, qkv, kv, t0);
    return model::attend_chunk(layer, qkv, kv, t0);
  });
  if (policy) policy->save_kv(index, std::move(kv));
  return y;
}

at::Tensor LayerProgram::forward_chunk_loop(int64_t index, const model::LayerWeights& w, const TokenPositions& pos,
                                            const at::Tensor& x, runtime::ActivationPolicy* policy,
                                            const ChunkAttention& attend) {
  const auto& layer = parts_.layer;
  const int64_t B = x.size(0), S = x.size(1), C = parts_.chunk_tokens;
  auto y = at::empty({B, S, layer.config().hidden}, x.options());  // [B, S, h]
  for (int64_t chunk = 0, t0 = 0; t0 < S; ++chunk, t0 += C) {
    const int64_t n = std::min(C, S - t0);
    const runtime::Unit unit{index, chunk};
    auto acts = chunk_storage(policy ? policy->forward_storage(unit) : nullptr, n);
    acts.x = x.narrow(1, t0, n);                                                   // [B, n, h]
    layer.forward_pre_attention(w, pos.rope, acts.x, acts, 0, 0, pos.first + t0);  // n1, rstd1, qkv
    layer.keep_attention(attend(acts.qkv, chunk, t0), acts);                      // o, lse
    layer.forward_post_attention(w, acts.x, acts);                                // x2, n2, rstd2, gu, a
    y.narrow(1, t0, n).copy_(layer.forward_output(w, acts));                      // x2 + a Wdown^T
    if (policy) policy->save(unit, std::move(acts));
  }
  return y;
}

at::Tensor LayerProgram::backward_layer_chunks(int64_t index, const model::LayerWeights& w,
                                               model::LayerWeights& grads, const TokenPositions& pos,
                                               const at::Tensor& dy, runtime::ActivationPolicy& policy) {
  if (!local_attention(parts_.exchange)) return backward_layer_chunks_exchanged(index, w, grads, pos, dy, policy);
  const auto& layer = parts_.layer;
  const auto& c = layer.config();
  const int64_t B = dy.size(0), S = dy.size(1), C = parts_.chunk_tokens;
  const auto stat = model::stat_dtype(dy.scalar_type());
  // The policy recomputes on the local tokens only: its table starts at them.
  const auto local_rope = pos.rope.slice(pos.first, S);
  runtime::LayerContext ctx{layer, w, local_rope, {}, 0, 0, nullptr, {}};
  ctx.chunk_tokens = C;
  ctx.pre_attention_in_storage = true;  // forward_chunk_loop: into policy->forward_storage
  ChunkAttentionBackward attention_backward;
  at::Tensor dkv;  // resident: dK, dV accumulators [B, S, 2 nkv d], statistics dtype
  auto* stream = policy.kv_stream();
  if (stream) {
    // K and V on the host: key blocks streamed, dK, dV in host accumulators.
    ctx.kv_stream = stream;
    policy.restore_kv_on_host(index, ctx);
    stream->begin_grads(index, stat);
    attention_backward = [&, earlier = stream->blocks(index), add = stream->add_grads(index)](
                             at::Tensor d_o, const model::LayerActivations& acts, int64_t chunk, int64_t t0) {
      return model::backward_attention_chunk_blocks(layer, std::move(d_o), acts, t0, C, earlier, add,
                                                    stream->take_grads(index, chunk));
    };
  } else {
    ctx.kv = policy.restore_kv(index, ctx);  // [B, S, 2 nkv d]
    // dK, dV add up over the chunks: in the statistics dtype, rounded once.
    dkv = model::zeros_layer_kv(c, B, S, dy.options().dtype(stat));
    attention_backward = [&](at::Tensor d_o, const model::LayerActivations& acts, int64_t, int64_t t0) {
      return model::backward_attention_chunk(layer, std::move(d_o), acts, ctx.kv, dkv, t0);
    };
  }
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
    auto dqkv = attention_backward(std::move(post.d_o), acts, chunk, t0);
    dx.narrow(1, t0, n).copy_(layer.backward_pre_attention(w, grads, pos.rope, acts, std::move(dqkv),
                                                           post.dx2, pos.first + t0));
  }
  if (stream) stream->release(index);
  return dx;
}

// Under sequence parallelism, pass 1: every chunk's k and v (pre-attention
// recomputed in pass 2: one more norm and QKV projection per token, where
// keeping q would hold nh d per token over the shard) to head layout; pass 2:
// each chunk's queries against the causal prefix of the whole K, V.
at::Tensor LayerProgram::forward_layer_chunks_exchanged(int64_t index, const model::LayerWeights& w,
                                                        const TokenPositions& pos, const at::Tensor& x,
                                                        runtime::ActivationPolicy* policy) {
  const auto& layer = parts_.layer;
  auto& exchange = parts_.exchange;
  const auto& c = layer.config();
  const int64_t B = x.size(0), S = x.size(1), C = parts_.chunk_tokens;
  auto kv = model::allocate_layer_kv(c, B, S, x.options());  // [B, S, 2 nkv d], token layout (the policy's)
  at::Tensor kv_heads;                                       // [B, sp S, 2 nkv_local d], head layout
  for (int64_t t0 = 0; t0 < S; t0 += C) {
    const int64_t n = std::min(C, S - t0);
    {
      model::LayerActivations pre;  // n1, rstd1, qkv of the chunk, dropped here
      layer.forward_pre_attention(w, pos.rope, x.narrow(1, t0, n), pre, 0, 0, pos.first + t0);
      model::store_chunk_kv(c, pre.qkv, kv, t0);
    }
    runtime::chunk_kv_to_heads(exchange, kv, t0, n, kv_heads);
  }
  auto y = forward_chunk_loop(index, w, pos, x, policy, [&](const at::Tensor& qkv, int64_t, int64_t t0) {
    return runtime::attend_chunk_exchanged(layer, exchange, qkv, kv_heads, t0);
  });
  if (policy) policy->save_kv(index, std::move(kv));
  return y;
}

// Under sequence parallelism: K, V back to head layout; pass A, last chunk to
// first: post-attention backward (dx2 into dx), attention backward (dq kept,
// dK, dV added over every range's prefix); pass B, once dK, dV are complete:
// each chunk's dk, dv back to token layout and its pre-attention backward
// (n1, rstd1 recomputed from the chunk's input, kept from pass A).
at::Tensor LayerProgram::backward_layer_chunks_exchanged(int64_t index, const model::LayerWeights& w,
                                                         model::LayerWeights& grads, const TokenPositions& pos,
                                                         const at::Tensor& dy, runtime::ActivationPolicy& policy) {
  const auto& layer = parts_.layer;
  auto& exchange = parts_.exchange;
  const auto& c = layer.config();
  const int64_t B = dy.size(0), S = dy.size(1), C = parts_.chunk_tokens;
  const auto local_rope = pos.rope.slice(pos.first, S);
  runtime::LayerContext ctx{layer, w, local_rope, {}, 0, 0, nullptr, {}};
  ctx.chunk_tokens = C;
  ctx.exchange = &exchange;
  ctx.kv = policy.restore_kv(index, ctx);  // [B, S, 2 nkv d], token layout
  for (int64_t t0 = 0; t0 < S; t0 += C) runtime::chunk_kv_to_heads(exchange, ctx.kv, t0, std::min(C, S - t0), ctx.kv_heads);
  // dK, dV of every rank's tokens in head layout, in the statistics dtype.
  auto dkv_heads = at::zeros_like(ctx.kv_heads, ctx.kv_heads.options().dtype(model::stat_dtype(dy.scalar_type())));
  auto dx = at::empty({B, S, c.hidden}, dy.options());  // [B, S, h]: dx2 first, then the whole dx
  const int64_t chunks = (S + C - 1) / C;
  std::vector<WaitingChunk> waiting(static_cast<size_t>(chunks));
  for (int64_t chunk = chunks - 1; chunk >= 0; --chunk) {
    const int64_t t0 = chunk * C, n = std::min(C, S - t0);
    ctx.t0 = t0;
    const auto acts = policy.restore(runtime::Unit{index, chunk}, ctx);
    const auto dy_chunk = dy.narrow(1, t0, n).contiguous();                      // [B, n, h]
    auto post = layer.backward_post_attention(w, grads, acts, dy_chunk);         // dx2, d_o
    dx.narrow(1, t0, n).copy_(post.dx2);
    post.dx2.reset();
    auto& wait = waiting[static_cast<size_t>(chunk)];
    wait.dq = runtime::backward_attention_chunk_exchanged(layer, exchange, std::move(post.d_o), acts, ctx.kv_heads,
                                                          dkv_heads, t0);
    // A copy: the policy's rounding buffer holding it is reused by the next unit.
    wait.x = acts.x.clone();
  }
  if (parts_.measured) note_waiting_parts(*parts_.measured, ctx.kv_heads, dkv_heads, waiting);
  ctx.kv.reset();
  ctx.kv_heads.reset();
  for (int64_t chunk = chunks - 1; chunk >= 0; --chunk) {
    const int64_t t0 = chunk * C, n = std::min(C, S - t0);
    auto& wait = waiting[static_cast<size_t>(chunk)];
    auto dkv = runtime::chunk_dkv_to_tokens(exchange, dkv_heads, t0, n, S, dy.scalar_type());  // [B, n, 2 nkv d]
    auto dqkv = at::cat({wait.dq, dkv}, 2);  // [B, n, (nh+2nkv) d]
    wait.dq.reset();
    model::LayerActivations pre;
    pre.x = std::move(wait.x);
    model::rmsnorm_forward(pre.x, w.norm1, c.rms_eps, pre.n1, pre.rstd1);  // n1, rstd1 as forward had them
    auto dx_chunk = dx.narrow(1, t0, n);
    dx_chunk.copy_(layer.backward_pre_attention(w, grads, pos.rope, pre, std::move(dqkv), dx_chunk,
                                                pos.first + t0));
  }
  return dx;
}

}  // namespace memo::train
