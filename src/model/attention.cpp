// Fused attention dispatch. The CUDA branches use only ATen op declarations, so
// this file compiles against the CPU libtorch as well.
#include "model/attention.h"

#include <ATen/ATen.h>

#include "core/error.h"

namespace memo::model {

AttentionKernel pick_attention_kernel(const at::Device& device, const std::string& preference) {
  if (device.is_cpu()) return AttentionKernel::CpuFlash;
  if (preference == "flash") return AttentionKernel::CudaFlash;
  require_input(preference == "auto" || preference == "cudnn", "attention kernel \"", preference,
                "\" is unknown (expected auto, cudnn or flash)");
  // cuDNN measured 1.7x faster than flash on the H200 (ANCHORS.md).
  return AttentionKernel::CudaCudnn;
}

const char* attention_kernel_name(AttentionKernel k) {
  switch (k) {
    case AttentionKernel::CpuFlash: return "cpu-flash";
    case AttentionKernel::CudaCudnn: return "cudnn";
    case AttentionKernel::CudaFlash: return "flash";
  }
  return "?";
}

AttentionOutput attention_forward(AttentionKernel kernel, const at::Tensor& q, const at::Tensor& k,
                                  const at::Tensor& v) {
  const double dropout = 0.0;
  const bool causal = true;
  switch (kernel) {
    case AttentionKernel::CpuFlash: {
      auto [o, lse] = at::_scaled_dot_product_flash_attention_for_cpu(q, k, v, dropout, causal);
      return {o, lse};
    }
    case AttentionKernel::CudaFlash: {
      auto r = at::_scaled_dot_product_flash_attention(q, k, v, dropout, causal);
      return {std::get<0>(r), std::get<1>(r)};
    }
    case AttentionKernel::CudaCudnn: {
      auto r = at::_scaled_dot_product_cudnn_attention(q, k, v, /*attn_bias=*/std::nullopt,
                                                       /*compute_log_sumexp=*/true, dropout, causal);
      // cuDNN returns lse as [B, H, S, 1].
      return {std::get<0>(r), std::get<1>(r).squeeze(-1)};
    }
  }
  throw Error("unreachable attention kernel");
}

AttentionGrads attention_backward(AttentionKernel kernel, const at::Tensor& d_o, const at::Tensor& q,
                                  const at::Tensor& k, const at::Tensor& v, const at::Tensor& o,
                                  const at::Tensor& lse) {
  const double dropout = 0.0;
  const bool causal = true;
  const int64_t s_q = q.size(2);
  const int64_t s_k = k.size(2);
  switch (kernel) {
    case AttentionKernel::CpuFlash: {
      auto [dq, dk, dv] = at::_scaled_dot_product_flash_attention_for_cpu_backward(
          d_o, q, k, v, o, lse, dropout, causal);
      return {dq, dk, dv};
    }
    case AttentionKernel::CudaFlash: {
      // Without dropout the RNG state is unused; empty tensors stand for it.
      auto none = at::empty({0}, q.options().dtype(at::kLong));
      auto [dq, dk, dv] = at::_scaled_dot_product_flash_attention_backward(
          d_o, q, k, v, o, lse, at::Tensor(), at::Tensor(), s_q, s_k, dropout, causal, none, none);
      return {dq, dk, dv};
    }
    case AttentionKernel::CudaCudnn: {
      auto none = at::empty({0}, q.options().dtype(at::kLong));
      auto [dq, dk, dv] = at::_scaled_dot_product_cudnn_attention_backward(
          d_o, q, k, v, o, lse.unsqueeze(-1), none, none, at::Tensor(), at::Tensor(), at::Tensor(),
          s_q, s_k, dropout, causal);
      return {dq, dk, dv};
    }
  }
  throw Error("unreachable attention kernel");
}

}  // namespace memo::model
