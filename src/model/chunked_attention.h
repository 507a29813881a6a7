// Exact causal attention over query chunks (docs/design.md section 9): each chunk
// of queries [t0, t0 + n) against the causal prefix of keys [0, t0 + n), with
// the fused kernels of model/attention.h, so that no call sees more than one
// chunk of queries. The diagonal block (keys [t0, t0 + n)) runs the causal
// kernel on n queries and n keys; the earlier keys [0, t0) run the non-causal
// kernel, in key blocks of at most kv_block tokens; the partial results are
// merged exactly through their log-sum-exp. Backward per chunk takes the
// chunk's merged o and lse, returns dq and adds each key block's dk, dv into
// the caller's accumulators. docs/chunks.md has the algorithm, the
// correctness argument, the working set and the cost.
//
// Shapes (B batch, nh query heads, nkv kv heads dividing nh, d head dim):
// q, o, d_o [B, nh, n, d] for a chunk or [B, nh, S, d] whole; k, v, dk, dv
// [B, nkv, P, d] (P = t0 + n, the chunk's causal prefix) or [B, nkv, S, d];
// lse [B, nh, n] or [B, nh, S] in the statistics dtype (ops.h stat_dtype).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <limits>
#include <utility>

#include "model/attention.h"

namespace memo::model {

// kv_block meaning "all earlier keys in one kernel call" (K and V resident).
inline constexpr int64_t kWholePrefix = std::numeric_limits<int64_t>::max();

// Merges the attention result of the same queries over a disjoint set of keys
// into a running one, in place: lse = log(exp(lse_acc) + exp(lse_part)),
// o_acc = exp(lse_acc - lse) o_acc + exp(lse_part - lse) o_part.
// o_acc [B, nh, n, d] and lse_acc [B, nh, n] in the statistics dtype (o_acc
// is the accumulator: 16-bit partial outputs are rounded once, at the end,
// not once per merge); o_part [B, nh, n, d] any float dtype, lse_part
// [B, nh, n]. Rows where both lse are -inf (no key seen yet) stay at lse
// -inf and o 0; a part whose lse is -inf adds nothing (its o must be finite).
// Allocates only per-row statistics: 4 x [B, nh, n].
void merge_attention_partial_(at::Tensor& o_acc, at::Tensor& lse_acc, const at::Tensor& o_part,
                              const at::Tensor& lse_part);

// The keys before a query chunk, block by block (K and V resident on the
// device, or streamed from the host: runtime/kv_stream.h): given a token range
// [s0, s0 + len) of them, its k and v [B, nkv, len, d] on q's device.
using KeyBlocks = std::function<std::pair<at::Tensor, at::Tensor>(int64_t s0, int64_t len)>;
// Receives the gradients dk, dv [B, nkv, len, d] of the keys [s0, s0 + len)
// from one query chunk (the statistics dtype when the kernel's differ), to add
// into wherever the caller accumulates them.
using KeyGrads = std::function<void(int64_t s0, int64_t len, const at::Tensor& dk, const at::Tensor& dv)>;

// attention_chunk_forward with the keys before the chunk from `earlier`:
// q [B, nh, n, d] the queries at [t0, t0 + n), k_diag, v_diag [B, nkv, n, d]
// their own keys and values, and `earlier` asked for blocks of at most
// kv_block tokens covering [0, t0) in order.
AttentionOutput attention_chunk_forward_blocks(AttentionKernel kernel, const at::Tensor& q,
                                               const at::Tensor& k_diag, const at::Tensor& v_diag,
                                               int64_t t0, int64_t kv_block, const KeyBlocks& earlier);

// attention_chunk_backward over the same blocks: `grads` receives the
// diagonal block's dk, dv (s0 = t0) first, then each earlier block's after
// its kernel call. Returns dq [B, nh, n, d] (compute dtype).
at::Tensor attention_chunk_backward_blocks(AttentionKernel kernel, const at::Tensor& d_o,
                                           const at::Tensor& q, const at::Tensor& k_diag,
                                           const at::Tensor& v_diag, const at::Tensor& o,
                                           const at::Tensor& lse, int64_t t0, int64_t kv_block,
                                           const KeyBlocks& earlier, const KeyGrads& grads);

// One query chunk: q [B, nh, n, d] holds the queries at positions
// [t0, t0 + n) with t0 = P - n, k and v [B, nkv, P, d] the keys and values at
// [0, P) (P >= n). Returns o [B, nh, n, d] (compute dtype) and lse [B, nh, n]
// (statistics dtype), equal to the rows [t0, t0 + n) of causal attention over
// the whole sequence. kv_block >= 1 bounds the keys per non-causal call (the
// diagonal block is always the chunk's own n keys).
// Working set beyond the inputs, per query token of the chunk (c compute, s
// statistics bytes per element): nh d (c + s) + 6 nh s, i.e. the kernel's
// o and the statistics-dtype accumulator plus per-row statistics; plus the
// kernel's own tiles; with the efficient kernel under GQA the expanded k, v
// of one block, 2 nh d c per key. Nothing [n, P] or [P, P] is built.
AttentionOutput attention_chunk_forward(AttentionKernel kernel, const at::Tensor& q,
                                        const at::Tensor& k, const at::Tensor& v,
                                        int64_t kv_block = kWholePrefix);

// Backward of one query chunk: d_o, q, o [B, nh, n, d] and lse [B, nh, n]
// for the chunk (o and lse the merged ones attention_chunk_forward returned),
// k and v [B, nkv, P, d] its prefix as above. Adds the chunk's dk, dv into
// dk_acc, dv_acc [B, nkv, P, d] (any float dtype: pass the statistics dtype
// when many chunks add up, so that 16-bit gradients are rounded once) and
// returns dq [B, nh, n, d] (compute dtype), summed over the key blocks in the
// statistics dtype. Exact because each block's kernel backward recomputes
// its probabilities from the given (merged) lse and D = rowsum(d_o o) from
// the given (merged) o (attention.h, docs/chunks.md).
// Working set beyond the inputs: per query token nh d (c + s) + nh s (the
// block's dq and the accumulator; lse made contiguous), plus nh d c when d_o
// is not dense token-major (a token range of a batch > 1: copied once, where
// the CPU kernel would copy it in every call), per key of the
// largest block 2 nkv d c (its dk, dv), plus the kernel's tiles; the
// efficient kernel under GQA 4 nh d c per key of a block (expanded k, v and
// their gradients).
at::Tensor attention_chunk_backward(AttentionKernel kernel, const at::Tensor& d_o,
                                    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const at::Tensor& o, const at::Tensor& lse, at::Tensor& dk_acc,
                                    at::Tensor& dv_acc, int64_t kv_block = kWholePrefix);

// Whole sequences, chunk by chunk: q [B, nh, S, d], k and v [B, nkv, S, d];
// query chunks of `chunk` tokens (the last one shorter when chunk does not
// divide S; chunk >= S: one chunk, the plain kernel call). Returns o
// [B, nh, S, d] (laid out token-major, as the kernels write it) and lse
// [B, nh, S]. Throws InputError for chunk < 1 or kv_block < 1, before
// anything is allocated; Error for shapes that do not fit.
AttentionOutput chunked_attention_forward(AttentionKernel kernel, const at::Tensor& q,
                                          const at::Tensor& k, const at::Tensor& v, int64_t chunk,
                                          int64_t kv_block = kWholePrefix);

// The gradients of chunked_attention_forward's o, given its o and lse:
// dq [B, nh, S, d], dk and dv [B, nkv, S, d] (accumulated over the chunks in
// the statistics dtype, returned in the compute dtype).
AttentionGrads chunked_attention_backward(AttentionKernel kernel, const at::Tensor& d_o,
                                          const at::Tensor& q, const at::Tensor& k,
                                          const at::Tensor& v, const at::Tensor& o,
                                          const at::Tensor& lse, int64_t chunk,
                                          int64_t kv_block = kWholePrefix);

}  // namespace memo::model
