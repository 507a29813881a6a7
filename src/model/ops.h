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

// n = w * (x * rstd).to(x.dtype), rstd = 1 / sqrt(mean(x^2) + eps).
//   x [..., h] compute dtype; w [h]; n [..., h]; rstd [...] stat dtype.
void rmsnorm_forward(const at::Tensor& x, const at::Tensor& w, double eps, at::Tensor& n,
                     at::Tensor& rstd);

// Gradients of rmsnorm_forward. Returns dx [..., h]; adds dL/dw to dw_accum [h].
at::Tensor rmsnorm_backward(const at::Tensor& dn, const at::Tensor& x, const at::Tensor& rstd,
                            const at::Tensor& w, at::Tensor& dw_accum);

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
void rope_apply_(at::Tensor& x, const RopeTable& table, bool inverse);

// a = silu(g) * u for gu = [g | u] along the last dim: gu [..., 2f] -> a [..., f].
at::Tensor swiglu_forward(const at::Tensor& gu);
// d(gu) [..., 2f] from da [..., f].
at::Tensor swiglu_backward(const at::Tensor& da, const at::Tensor& gu);

// grad [out, in] += dy[T, out]^T @ x[T, in], in the grad's dtype.
void accumulate_matmul_grad(at::Tensor& grad, const at::Tensor& dy, const at::Tensor& x);

}  // namespace memo::model
