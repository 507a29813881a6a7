// Rebuilding a chunked layer's K and V in backward from its chunks' inputs
// (docs/chunks.md): per chunk the input RMSNorm, the QKV projection and RoPE
// at the chunk's positions, written into the layer's K, V tensor or, with
// `--kv-on-host`, into the stream's host blocks. recompute (inputs kept on
// the device) and memo (inputs back from the host, ActivationStore::
// for_each_input) drop K, V after a layer's forward and rebuild them here.
//
// Exact: the same ops in the same dtype over the same chunk boundaries as
// the forward (DecoderLayer::forward_pre_attention, model::store_chunk_kv /
// chunk_kv), on tensors laid out as the forward's were, so the keys and
// values are bitwise the forward's. A kernel call of another shape may
// reduce in another order: the whole QKV projection runs and q is thrown
// away (a GEMM over the K, V rows of the weight alone has another N), and
// where the forward wrote a chunk's n1 and qkv into a rounding buffer of
// `storage_tokens` tokens (a shorter last chunk: a strided view of it), the
// rebuild writes into tensors of that size too (measured: float64 on CPU,
// 2 of 12 tokens differed in the last bit without it).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <string>

#include "runtime/policy.h"

namespace memo::runtime {

// Visits every chunk of one layer in order: fn(chunk, x), x [B, n, h] the
// chunk's input on the device, valid during the call.
using ChunkInputFn = std::function<void(int64_t chunk, const at::Tensor& x)>;
using ChunkInputs = std::function<void(const ChunkInputFn& fn)>;

// The layer's K and V [B, S, 2 nkv d] (compute dtype, on the inputs'
// device); ctx.chunk_tokens is the chunk size, ctx.rope starts at the
// layer's first local token. storage_tokens: the token count of the
// storage the forward's pre-attention wrote into (its rounding buffers'),
// 0 for fresh tensors of each chunk's size. Throws naming `who` and the
// layer when no chunk was visited.
at::Tensor rebuild_layer_kv(const LayerContext& ctx, int64_t seq_len, int64_t storage_tokens,
                            const ChunkInputs& inputs, const std::string& who, int64_t layer);

// The same into `stream`'s host blocks of `layer` (begun here, replacing any).
void rebuild_layer_kv_blocks(KvStream& stream, const LayerContext& ctx, int64_t seq_len, int64_t storage_tokens,
                             const ChunkInputs& inputs, const std::string& who, int64_t layer);

}  // namespace memo::runtime
