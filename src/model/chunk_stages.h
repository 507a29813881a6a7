// The attention stages of one token chunk of a decoder layer (docs/chunks.md,
// docs/design.md section 9): the layer's K and V as one whole-sequence tensor
// that each chunk's pre-attention writes its keys and values into, the
// chunk's queries against the causal prefix of it (model/chunked_attention.h),
// the chunk's attention backward with the dK, dV accumulators, and the full
// recompute of one chunk's skeletal set. The token-wise stages (norms, QKV and
// RoPE, output projection, MLP) are DecoderLayer's own, called on the chunk's
// tokens at their true positions.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <utility>

#include "model/chunked_attention.h"
#include "model/layer.h"

namespace memo::model {

// A layer's K and V over the whole sequence, [B, S, 2 nkv d] (the kv heads
// of k, then those of v, per token), in `options`' dtype: the compute dtype
// for K, V, the statistics dtype for their gradient accumulators (zeroed).
at::Tensor allocate_layer_kv(const ModelConfig& c, int64_t batch, int64_t tokens,
                             const at::TensorOptions& options);
at::Tensor zeros_layer_kv(const ModelConfig& c, int64_t batch, int64_t tokens,
                          const at::TensorOptions& options);

// k and v [B, nkv, P, d] of the tokens [0, P): views into kv [B, S, 2 nkv d].
std::pair<at::Tensor, at::Tensor> kv_prefix(const ModelConfig& c, const at::Tensor& kv, int64_t P);

// The chunk's k and v (after RoPE) from its qkv [B, n, (nh+2nkv) d] into the
// tokens [t0, t0 + n) of kv [B, S, 2 nkv d].
void store_chunk_kv(const ModelConfig& c, const at::Tensor& qkv_chunk, const at::Tensor& kv, int64_t t0);

// The chunk's queries (from its qkv [B, n, (nh+2nkv) d], tokens [t0, t0 + n))
// against the keys and values [0, t0 + n) of kv, which must hold them:
// o [B, n, nh d] token-major and lse [B, nh, n], equal to the rows
// [t0, t0 + n) of the layer's whole-sequence attention.
AttentionResult attend_chunk(const DecoderLayer& layer, const at::Tensor& qkv_chunk,
                             const at::Tensor& kv, int64_t t0);

// The chunk's attention backward: d_o [B, n, nh d] (taken) with the chunk's
// skeletal set (qkv, o, lse) and the layer's kv; adds the chunk's share of
// dK, dV into dkv_acc [B, S, 2 nkv d] (statistics dtype) over [0, t0 + n),
// and returns dqkv [B, n, (nh+2nkv) d] (compute dtype, RoPE not yet undone):
// dq of the chunk, and dk, dv of its tokens from dkv_acc, which are complete
// when every later chunk has run its backward first (causality: only chunks
// at or after t0 attend to the keys [t0, t0 + n)).
at::Tensor backward_attention_chunk(const DecoderLayer& layer, at::Tensor d_o,
                                    const LayerActivations& acts, const at::Tensor& kv,
                                    const at::Tensor& dkv_acc, int64_t t0);

// K and V from the host (`--kv-on-host`, runtime/kv_stream.h): the same
// stages with the keys before the chunk from `earlier` (key blocks of
// kv_block tokens, the chunk size) and the chunk's own keys from its qkv.
// attend_chunk's result.
AttentionResult attend_chunk_blocks(const DecoderLayer& layer, const at::Tensor& qkv_chunk, int64_t t0,
                                    int64_t kv_block, const KeyBlocks& earlier);
// backward_attention_chunk's result; own_dkv [B, n, 2 nkv d] (statistics
// dtype) holds the chunk's dK, dV from the later chunks and gets the chunk's
// own share added; the earlier blocks' dk, dv go to earlier_grads.
at::Tensor backward_attention_chunk_blocks(const DecoderLayer& layer, at::Tensor d_o, const LayerActivations& acts,
                                           int64_t t0, int64_t kv_block, const KeyBlocks& earlier,
                                           const KeyGrads& earlier_grads, const at::Tensor& own_dkv);
// recompute_chunk with the earlier keys from `earlier`.
void recompute_chunk_blocks(const DecoderLayer& layer, const LayerWeights& w, const RopeTable& rope,
                            LayerActivations& acts, int64_t t0, int64_t kv_block, const KeyBlocks& earlier);
// The chunk's own k and v [B, n, 2 nkv d] (a copy) from its qkv.
at::Tensor chunk_kv(const ModelConfig& c, const at::Tensor& qkv_chunk);

// Every skeletal tensor of one chunk (tokens [t0, t0 + n) of the layer,
// acts.x [B, n, h] their input) against the layer's kv, which holds the keys
// and values [0, t0 + n) (recomputed before, or the chunk's own are written
// here): the chunked form of DecoderLayer::recompute. `rope` rows start at
// the layer's first local token; the chunk's tokens are rotated at t0 + t.
void recompute_chunk(const DecoderLayer& layer, const LayerWeights& w, const RopeTable& rope,
                     LayerActivations& acts, const at::Tensor& kv, int64_t t0);

}  // namespace memo::model
