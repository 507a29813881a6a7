// Causal grouped-query attention through ATen's fused kernels with their
// log-sum-exp, so backward never materialises the score matrix; also the
// non-causal blocks that chunked attention (model/chunked_attention.h) merges.
// CPU: _scaled_dot_product_flash_attention_for_cpu; CUDA: cuDNN (default for
// 16-bit compute), flash, or memory-efficient (the one that takes float32).
// Shapes: q [B, nh, S, d], k and v [B, nkv, S, d], o [B, nh, S, d],
// lse [B, nh, S] in the statistics dtype.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

namespace memo::model {

enum class AttentionKernel { CpuFlash, CudaCudnn, CudaFlash, CudaEfficient };

// The kernel used for `compute`-dtype tensors on `device`; `preference`
// ("auto", "cudnn", "flash", "efficient") picks among the CUDA ones. auto:
// cuDNN for bfloat16/float16, efficient for float32. Throws InputError for an
// unknown name, for a kernel that does not take `compute` (cuDNN and flash:
// bfloat16 or float16 only), and for float64 on CUDA (no fused kernel takes
// it): before anything is allocated.
AttentionKernel pick_attention_kernel(const at::Device& device, at::ScalarType compute,
                                      const std::string& preference = "auto");
const char* attention_kernel_name(AttentionKernel k);

struct AttentionOutput {
  at::Tensor o;    // [B, nh, S, d]
  at::Tensor lse;  // [B, nh, S]
};

struct AttentionGrads {
  at::Tensor dq;  // [B, nh, S, d]
  at::Tensor dk;  // [B, nkv, S, d]
  at::Tensor dv;  // [B, nkv, S, d]
};

// causal (the default): s_q == s_k and query i sees keys 0..i. Not causal:
// every query sees every key, s_q and s_k may differ (the earlier-key blocks
// of chunked attention, model/chunked_attention.h). Shapes that do not fit
// (or causal with s_q != s_k, whose mask the kernels align differently) throw
// Error.
AttentionOutput attention_forward(AttentionKernel kernel, const at::Tensor& q, const at::Tensor& k,
                                  const at::Tensor& v, bool causal = true);

// The kernels' backward recompute the probabilities from q, k and the given
// lse, and D = rowsum(d_o * o) from the given o; they never recompute lse or
// o. So with a block of keys and the o and lse of attention over a superset
// of keys, they return that block's exact share of the gradients
// (model/chunked_attention.h relies on this; tests check it).
AttentionGrads attention_backward(AttentionKernel kernel, const at::Tensor& d_o, const at::Tensor& q,
                                  const at::Tensor& k, const at::Tensor& v, const at::Tensor& o,
                                  const at::Tensor& lse, bool causal = true);

// Grouped-query attention for a kernel that takes only equal head counts (the
// memory-efficient one): k and v repeated to nh heads (query head j reads kv
// head j / (nh / nkv), as in the grouped kernels), and in backward dk, dv
// summed back over each group. Costs 2 nh d elements per token for the copies
// (and as much again for the expanded gradients). Used by attention_forward/
// attention_backward for CudaEfficient; public so that a CPU test can check
// it against a kernel's own grouped call.
AttentionOutput attention_forward_expanded(AttentionKernel kernel, const at::Tensor& q,
                                           const at::Tensor& k, const at::Tensor& v,
                                           bool causal = true);
AttentionGrads attention_backward_expanded(AttentionKernel kernel, const at::Tensor& d_o,
                                           const at::Tensor& q, const at::Tensor& k,
                                           const at::Tensor& v, const at::Tensor& o,
                                           const at::Tensor& lse, bool causal = true);

}  // namespace memo::model
