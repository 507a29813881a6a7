// Causal grouped-query attention through ATen's fused kernels with their
// log-sum-exp, so backward never materialises the score matrix.
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

AttentionOutput attention_forward(AttentionKernel kernel, const at::Tensor& q, const at::Tensor& k,
                                  const at::Tensor& v);

AttentionGrads attention_backward(AttentionKernel kernel, const at::Tensor& d_o, const at::Tensor& q,
                                  const at::Tensor& k, const at::Tensor& v, const at::Tensor& o,
                                  const at::Tensor& lse);

// Grouped-query attention for a kernel that takes only equal head counts (the
// memory-efficient one): k and v repeated to nh heads (query head j reads kv
// head j / (nh / nkv), as in the grouped kernels), and in backward dk, dv
// summed back over each group. Costs 2 nh d elements per token for the copies
// (and as much again for the expanded gradients). Used by attention_forward/
// attention_backward for CudaEfficient; public so that a CPU test can check
// it against a kernel's own grouped call.
AttentionOutput attention_forward_expanded(AttentionKernel kernel, const at::Tensor& q,
                                           const at::Tensor& k, const at::Tensor& v);
AttentionGrads attention_backward_expanded(AttentionKernel kernel, const at::Tensor& d_o,
                                           const at::Tensor& q, const at::Tensor& k,
                                           const at::Tensor& v, const at::Tensor& o,
                                           const at::Tensor& lse);

}  // namespace memo::model
