// Causal grouped-query attention through ATen's fused kernels with their
// log-sum-exp, so backward never materialises the score matrix.
// CPU: _scaled_dot_product_flash_attention_for_cpu; CUDA: cuDNN (default) or
// flash. Shapes: q [B, nh, S, d], k and v [B, nkv, S, d], o [B, nh, S, d],
// lse [B, nh, S] in the statistics dtype.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

namespace memo::model {

enum class AttentionKernel { CpuFlash, CudaCudnn, CudaFlash };

// The kernel used for tensors on `device`; `preference` ("auto", "cudnn",
// "flash") picks among the CUDA ones.
AttentionKernel pick_attention_kernel(const at::Device& device,
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

}  // namespace memo::model
