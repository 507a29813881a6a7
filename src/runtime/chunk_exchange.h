// Chunked layers under sequence parallelism (docs/chunks.md, "Chunks with
// sequence parallelism"): one chunk of a rank's shard through the stage
// exchange. A chunk [t0, t0 + n) of every rank's S_local tokens is, in head
// layout, sp position ranges: range j holds rank j's tokens, at global
// positions j S_local + t0 + [0, n). Range j's queries attend to the causal
// prefix [0, j S_local + t0 + n) of the layer's whole K, V in head layout,
// which holds later chunks of the ranks below j: K and V are exchanged for
// every chunk first (pass 1), then each chunk's queries attend (pass 2). With
// an identity exchange (one device) there is one range and this is the
// single-device chunked attention.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "model/layer.h"
#include "runtime/stage_exchange.h"

namespace memo::runtime {

// Tokens [t0, t0 + n) of this rank's K and V, kv [B, S_local, 2 nkv d]
// (token layout, after RoPE), to head layout: written into kv_heads
// [B, sp S_local, 2 nkv_local d] at every range's global positions
// (allocated, uninitialised, at the first call). One all-to-all.
void chunk_kv_to_heads(StageExchange& exchange, const at::Tensor& kv, int64_t t0, int64_t n,
                       at::Tensor& kv_heads);

// The chunk's queries (from qkv_chunk [B, n, (nh+2nkv) d] in token layout,
// tokens [t0, t0 + n) of the shard) against kv_heads, which must hold every
// rank's keys up to its range's end: o [B, n, nh d] and lse [B, nh, n] in
// token layout, the rows of the layer's whole-sequence attention. Three
// all-to-alls (q to heads; o and lse back).
model::AttentionResult attend_chunk_exchanged(const model::DecoderLayer& layer, StageExchange& exchange,
                                              const at::Tensor& qkv_chunk, const at::Tensor& kv_heads, int64_t t0);

// The chunk's attention backward: d_o [B, n, nh d] (taken) and the chunk's
// skeletal qkv, o, lse in token layout; adds its share of dK, dV into
// dkv_heads [B, sp S_local, 2 nkv_local d] (head layout, statistics dtype)
// over every range's prefix and returns dq [B, n, nh d] in token layout (RoPE
// not yet undone). Five all-to-alls (d_o, q, o, lse to heads; dq back).
at::Tensor backward_attention_chunk_exchanged(const model::DecoderLayer& layer, StageExchange& exchange,
                                              at::Tensor d_o, const model::LayerActivations& acts,
                                              const at::Tensor& kv_heads, const at::Tensor& dkv_heads, int64_t t0);

// dK, dV of this rank's tokens [t0, t0 + n) (complete once every chunk's
// attention backward has run: ranges above j see all of rank j's keys) from
// dkv_heads (s_local: this rank's tokens) back to token layout
// [B, n, 2 nkv d] in `dtype` (replicated kv heads summed). One all-to-all.
at::Tensor chunk_dkv_to_tokens(StageExchange& exchange, const at::Tensor& dkv_heads, int64_t t0, int64_t n,
                               int64_t s_local, at::ScalarType dtype);

}  // namespace memo::runtime
