// The exchange between a layer's stages (docs/design.md, "The step as a
// per-layer program"): the executor passes q, k, v and o through it on their
// way into and out of attention, in forward and in backward. With the
// sequence on one device it is the identity (NoExchange); Ulysses sequence
// parallelism makes it an all-to-all, from the local tokens and every head to
// the whole sequence and the local heads, and back.
//
// Every tensor is token-major: [B, tokens, heads * d]. "Token layout": the
// local tokens, every head. "Head layout": every token, the local heads (the
// layout attention runs on).
#pragma once

#include <ATen/core/Tensor.h>

#include <utility>

#include "model/layer.h"

namespace memo::runtime {

class StageExchange {
 public:
  virtual ~StageExchange() = default;
  // Before attention (forward, and backward for its inputs): q, k, v packed
  // [B, S_local, (nh + 2 nkv) d] -> head layout.
  virtual at::Tensor qkv_to_heads(const at::Tensor& qkv) = 0;
  // After attention: o [B, S, nh_local d] -> token layout [B, S_local, nh d].
  virtual at::Tensor o_to_tokens(const at::Tensor& o) = 0;
  // Backward, before attention's backward: o or d_o [B, S_local, nh d] ->
  // head layout.
  virtual at::Tensor o_to_heads(const at::Tensor& o) = 0;
  // After attention's backward: dq, dk, dv packed in head layout -> token
  // layout [B, S_local, (nh + 2 nkv) d].
  virtual at::Tensor qkv_to_tokens(const at::Tensor& dqkv) = 0;
  // Chunked layers (docs/chunks.md): k and v alone, [B, S_local, 2 nkv d]
  // -> head layout [B, S, 2 nkv_local d], and their gradients back (the
  // replicas of a replicated kv head summed).
  virtual at::Tensor kv_to_heads(const at::Tensor& kv) = 0;
  virtual at::Tensor kv_to_tokens(const at::Tensor& dkv) = 0;
  // Attention's log-sum-exp: head layout [B, nh_local, S] -> token layout
  // [B, nh, S_local] after attention, and back before its backward.
  virtual at::Tensor lse_to_tokens(const at::Tensor& lse) = 0;
  virtual at::Tensor lse_to_heads(const at::Tensor& lse) = 0;
  // The heads a head-layout tensor holds ({0, 0}: every head).
  virtual model::HeadCounts local_heads() const = 0;
};

// One device holds the whole sequence and every head: nothing moves.
class NoExchange final : public StageExchange {
 public:
  at::Tensor qkv_to_heads(const at::Tensor& qkv) override { return qkv; }
  at::Tensor o_to_tokens(const at::Tensor& o) override { return o; }
  at::Tensor o_to_heads(const at::Tensor& o) override { return o; }
  at::Tensor qkv_to_tokens(const at::Tensor& dqkv) override { return dqkv; }
  at::Tensor kv_to_heads(const at::Tensor& kv) override { return kv; }
  at::Tensor kv_to_tokens(const at::Tensor& dkv) override { return dkv; }
  at::Tensor lse_to_tokens(const at::Tensor& lse) override { return lse; }
  at::Tensor lse_to_heads(const at::Tensor& lse) override { return lse; }
  model::HeadCounts local_heads() const override { return {}; }
};

// Attention through the exchange: qkv in token layout -> o and lse in token
// layout (every skeletal tensor lives in token layout between forward and
// backward, so every policy keeps, swaps and recomputes the local tokens
// alone: docs/dist.md).
inline model::AttentionResult attend_exchanged(const model::DecoderLayer& layer, StageExchange& exchange,
                                               const at::Tensor& qkv) {
  auto attended = layer.attend(exchange.qkv_to_heads(qkv), exchange.local_heads());  // head layout
  attended.o = exchange.o_to_tokens(attended.o);
  attended.lse = exchange.lse_to_tokens(attended.lse);
  return attended;
}

// Attention's backward through the exchange: d_o and the skeletal qkv, o,
// lse in token layout -> dqkv in token layout (RoPE not yet undone).
inline at::Tensor backward_attention_exchanged(const model::DecoderLayer& layer, StageExchange& exchange,
                                               at::Tensor d_o, const model::LayerActivations& acts) {
  at::Tensor d_o_heads = exchange.o_to_heads(d_o);
  d_o.reset();
  at::Tensor dqkv = layer.backward_attention(std::move(d_o_heads), exchange.qkv_to_heads(acts.qkv),
                                             exchange.o_to_heads(acts.o), exchange.lse_to_heads(acts.lse),
                                             exchange.local_heads());
  return exchange.qkv_to_tokens(dqkv);
}

}  // namespace memo::runtime
