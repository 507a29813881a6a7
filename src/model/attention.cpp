// Fused attention dispatch. The CUDA branches use only ATen op declarations, so
// this file compiles against the CPU libtorch as well.
#include "model/attention.h"

#include <ATen/ATen.h>

#include <limits>

#include "core/error.h"

namespace memo::model {

namespace {

const char* dtype_word(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kBFloat16: return "bfloat16";
    case at::kHalf: return "float16";
    default: return c10::toString(t);
  }
}

// [B, nkv, S, d] -> [B, nkv * rep, S, d]: each kv head repeated rep times in a
// row, laid out token-major like q.
at::Tensor repeat_heads(const at::Tensor& t, int64_t rep) {
  if (rep == 1) return t;
  const int64_t B = t.size(0), nkv = t.size(1), S = t.size(2), d = t.size(3);
  return t.transpose(1, 2)
      .unsqueeze(3)
      .expand({B, S, nkv, rep, d})
      .reshape({B, S, nkv * rep, d})
      .transpose(1, 2);
}

// [B, nkv * rep, S, d] -> [B, nkv, S, d]: the sum over each group of rep heads.
at::Tensor sum_head_groups(const at::Tensor& t, int64_t kv_heads) {
  if (t.size(1) == kv_heads) return t;
  return t.unflatten(1, {kv_heads, t.size(1) / kv_heads}).sum(2);
}

// causal: query i sees keys 0..i (the callers guarantee s_q == s_k then, so
// the kernels' different alignments of a rectangular causal mask never
// matter); else every query sees every key (s_q != s_k allowed).
AttentionOutput kernel_forward(AttentionKernel kernel, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& v, bool causal) {
  const double dropout = 0.0;
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
    case AttentionKernel::CudaEfficient: {
      auto r = at::_scaled_dot_product_efficient_attention(q, k, v, /*attn_bias=*/std::nullopt,
                                                           /*compute_log_sumexp=*/true, dropout, causal);
      // lse comes padded to a multiple of 32 queries: [B, H, ceil(S / 32) * 32].
      return {std::get<0>(r), std::get<1>(r).narrow(2, 0, q.size(2))};
    }
  }
  throw Error("unreachable attention kernel");
}

AttentionGrads kernel_backward(AttentionKernel kernel, const at::Tensor& d_o, const at::Tensor& q,
                               const at::Tensor& k, const at::Tensor& v, const at::Tensor& o,
                               const at::Tensor& lse, bool causal) {
  const double dropout = 0.0;
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
    case AttentionKernel::CudaEfficient: {
      // The kernel reads lse through its strides and only for the s_q real
      // queries; it is handed the padded layout its forward returns all the
      // same, the padding at +inf (a row that is never a query weighs 0).
      const int64_t padded = (s_q + 31) / 32 * 32;
      auto lse_padded = at::full({q.size(0), q.size(1), padded},
                                 std::numeric_limits<double>::infinity(), lse.options());
      lse_padded.narrow(2, 0, s_q).copy_(lse);  // [B, nh, padded]
      auto none = at::empty({0}, q.options().dtype(at::kLong));
      auto r = at::_scaled_dot_product_efficient_attention_backward(
          d_o, q, k, v, /*attn_bias=*/at::Tensor(), o, lse_padded, none, none, dropout,
          /*grad_input_mask=*/{true, true, true, false}, causal);
      return {std::get<0>(r), std::get<1>(r), std::get<2>(r)};
    }
  }
  throw Error("unreachable attention kernel");
}

}  // namespace

AttentionKernel pick_attention_kernel(const at::Device& device, at::ScalarType compute,
                                      const std::string& preference) {
  require_input(preference == "auto" || preference == "cudnn" || preference == "flash" ||
                    preference == "efficient",
                "attention kernel \"", preference,
                "\" is unknown (expected auto, cudnn, flash or efficient)");
  if (device.is_cpu()) return AttentionKernel::CpuFlash;  // takes every float dtype
  const bool half = compute == at::kBFloat16 || compute == at::kHalf;
  require_input(half || compute == at::kFloat, "attention on ", device.str(), " takes bfloat16, ",
                "float16 or float32 compute, not ", dtype_word(compute),
                " (no fused CUDA attention kernel takes it)");
  // Memory-efficient attention is the fused kernel that takes float32.
  if (preference == "efficient" || (preference == "auto" && !half))
    return AttentionKernel::CudaEfficient;
  require_input(half, "attention kernel \"", preference, "\" takes bfloat16 or float16 compute, not ",
                dtype_word(compute), " (use --attention efficient or auto for float32)");
  if (preference == "flash") return AttentionKernel::CudaFlash;
  // cuDNN measured 1.7x faster than flash on the H200 (ANCHORS.md).
  return AttentionKernel::CudaCudnn;
}

const char* attention_kernel_name(AttentionKernel k) {
  switch (k) {
    case AttentionKernel::CpuFlash: return "cpu-flash";
    case AttentionKernel::CudaCudnn: return "cudnn";
    case AttentionKernel::CudaFlash: return "flash";
    case AttentionKernel::CudaEfficient: return "efficient";
  }
  return "?";
}

namespace {

// Programmer errors, not user input: the shapes the kernels are handed.
void check_attention_shapes(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            bool causal) {
  if (q.dim() != 4 || k.dim() != 4 || v.dim() != 4 || k.sizes() != v.sizes() ||
      k.size(0) != q.size(0) || k.size(3) != q.size(3) || k.size(1) < 1 ||
      q.size(1) % k.size(1) != 0)
    throw Error(cat("attention: q ", q.sizes(), ", k ", k.sizes(), ", v ", v.sizes(),
                    " are not [B, nh, s_q, d], [B, nkv, s_k, d] twice with nkv dividing nh"));
  // A causal mask on a rectangular block is aligned top-left by some kernels
  // and bottom-right by others: never ask for one.
  if (causal && q.size(2) != k.size(2))
    throw Error(cat("attention: a causal block needs as many queries as keys, not ", q.size(2),
                    " and ", k.size(2)));
}

}  // namespace

AttentionOutput attention_forward(AttentionKernel kernel, const at::Tensor& q, const at::Tensor& k,
                                  const at::Tensor& v, bool causal) {
  check_attention_shapes(q, k, v, causal);
  // The memory-efficient kernel refuses grouped-query shapes (ANCHORS.md).
  if (kernel == AttentionKernel::CudaEfficient && k.size(1) != q.size(1))
    return attention_forward_expanded(kernel, q, k, v, causal);
  return kernel_forward(kernel, q, k, v, causal);
}

AttentionGrads attention_backward(AttentionKernel kernel, const at::Tensor& d_o, const at::Tensor& q,
                                  const at::Tensor& k, const at::Tensor& v, const at::Tensor& o,
                                  const at::Tensor& lse, bool causal) {
  check_attention_shapes(q, k, v, causal);
  if (kernel == AttentionKernel::CudaEfficient && k.size(1) != q.size(1))
    return attention_backward_expanded(kernel, d_o, q, k, v, o, lse, causal);
  return kernel_backward(kernel, d_o, q, k, v, o, lse, causal);
}

AttentionOutput attention_forward_expanded(AttentionKernel kernel, const at::Tensor& q,
                                           const at::Tensor& k, const at::Tensor& v, bool causal) {
  const int64_t rep = q.size(1) / k.size(1);
  return kernel_forward(kernel, q, repeat_heads(k, rep), repeat_heads(v, rep), causal);
}

AttentionGrads attention_backward_expanded(AttentionKernel kernel, const at::Tensor& d_o,
                                           const at::Tensor& q, const at::Tensor& k,
                                           const at::Tensor& v, const at::Tensor& o,
                                           const at::Tensor& lse, bool causal) {
  const int64_t rep = q.size(1) / k.size(1);
  auto g = kernel_backward(kernel, d_o, q, repeat_heads(k, rep), repeat_heads(v, rep), o, lse, causal);
  return {g.dq, sum_head_groups(g.dk, k.size(1)), sum_head_groups(g.dv, v.size(1))};
}

}  // namespace memo::model
