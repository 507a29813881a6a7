// Hand-written forward and backward of the decoder layer's building blocks:
// RMSNorm, RoPE, SwiGLU and matmul gradient accumulation. No autograd.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "model/config.h"

namespace memo::model {

// Dtype used for normalisation statistics and the log-sum-exp: float32 for
// 16-bit compute, the compute dtype otherwise (float32, float64 in tests).
at::ScalarType stat_dtype(at::ScalarType compute);

// RMSNorm and RoPE run over blocks of whole tokens, so that their temporaries
// (the float32 copies of 16-bit activations among them) have a fixed size
// instead of growing with the sequence: a block covers at most this many
// elements of the operand (and at least one token). 16M elements: 64 MiB per
// float32 temporary, 4096 tokens at h = 4096, so that at 128K tokens a norm
// is 32 blocks of a few kernels each; see docs/memory-per-token.md.
inline constexpr int64_t kBlockElements = int64_t{1} << 24;

// n = w * (x * rstd).to(x.dtype), rstd = 1 / sqrt(mean(x^2) + eps).
//   x [..., T, h] compute dtype (any strides; blocks run along T); w [h];
//   n [..., T, h] compute dtype; rstd [..., T] stat dtype.
// n and rstd are written in place when defined (a preallocated slot or a
// token range of one, same shapes), else allocated.
void rmsnorm_forward(const at::Tensor& x, const at::Tensor& w, double eps, at::Tensor& n,
                     at::Tensor& rstd, int64_t block_elements = kBlockElements);

// Gradients of rmsnorm_forward. Returns dx [..., T, h]; adds dL/dw to
// dw_accum [h]. dx is written into `out` when defined (same shape as dn; it
// may be dn itself: each block of dn is read before its dx is written), else
// allocated.
at::Tensor rmsnorm_backward(const at::Tensor& dn, const at::Tensor& x, const at::Tensor& rstd,
                            const at::Tensor& w, at::Tensor& dw_accum, const at::Tensor& out = {},
                            int64_t block_elements = kBlockElements);

// Rotary tables for positions [0, seq_len): cos and sin, each [seq_len, d/2],
// in the compute dtype (computed in float64, with Llama 3.1 scaling if set).
struct RopeTable {
  at::Tensor cos;  // [S, d/2]
  at::Tensor sin;  // [S, d/2]
  static RopeTable build(const ModelConfig& config, int64_t seq_len, at::ScalarType dtype,
                         at::Device device);
  // Rows [begin, begin + length), for token-wise work on part of the sequence.
  RopeTable slice(int64_t begin, int64_t length) const;
};

// Rotates x in place, half-split (rotate_half) convention as in Hugging Face
// Llama. x [B, S, H, d] (any strides); table rows cover S positions.
// inverse = true rotates by -theta: the backward of the forward rotation.
// Temporaries: two [B, block, H, d/2] products per token block.
void rope_apply_(const at::Tensor& x, const RopeTable& table, bool inverse,
                 int64_t block_elements = kBlockElements);

// a = silu(g) * u for gu = [g | u] along the last dim: gu [..., 2f] -> a [..., f].
// a is written in place when defined (any strides), else allocated.
void swiglu_forward(const at::Tensor& gu, at::Tensor& a);
// In place: dgu [..., 2f] holds da [..., f] in its gate half on entry and
// d(gu) on return; no [..., f]-sized temporary.
void swiglu_backward_(const at::Tensor& dgu, const at::Tensor& gu);
// d(gu) [..., 2f] from da [..., f] (allocates d(gu), then swiglu_backward_).
at::Tensor swiglu_backward(const at::Tensor& da, const at::Tensor& gu);

// grad [out, in] += dy[T, out]^T @ x[T, in], in the grad's dtype.
void accumulate_matmul_grad(at::Tensor& grad, const at::Tensor& dy, const at::Tensor& x);

}  // namespace memo::model
