// RMSNorm, RoPE, SwiGLU forward/backward on ATen ops.
#include "model/ops.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <numbers>
#include <vector>

#include "core/error.h"

namespace memo::model {

at::ScalarType stat_dtype(at::ScalarType compute) {
  return (compute == at::kHalf || compute == at::kBFloat16) ? at::kFloat : compute;
}

namespace {

// Calls fn(begin, length) for consecutive blocks of dimension `dim` of `t`,
// each covering at most `block_elements` elements of `t` (at least one index).
template <class Fn>
void for_token_blocks(const at::Tensor& t, int64_t dim, int64_t block_elements, Fn&& fn) {
  const int64_t tokens = t.size(dim);
  if (tokens == 0) return;
  const int64_t per_token = t.numel() / tokens;
  const int64_t block = per_token > 0 ? std::max<int64_t>(1, block_elements / per_token) : tokens;
  for (int64_t begin = 0; begin < tokens; begin += block) fn(begin, std::min(block, tokens - begin));
}

// The token dimension of a [..., T, h] operand.
int64_t token_dim(const at::Tensor& x) {
  if (x.dim() < 2) throw Error(cat("rmsnorm: expected [..., tokens, hidden], got ", x.dim(), " dims"));
  return x.dim() - 2;
}

}  // namespace

void rmsnorm_forward(const at::Tensor& x, const at::Tensor& w, double eps, at::Tensor& n,
                     at::Tensor& rstd, int64_t block_elements) {
  const auto st = stat_dtype(x.scalar_type());
  const int64_t td = token_dim(x);
  if (!n.defined()) n = at::empty(x.sizes(), x.options());
  if (!rstd.defined()) rstd = at::empty(x.sizes().slice(0, x.dim() - 1), x.options().dtype(st));
  for_token_blocks(x, td, block_elements, [&](int64_t t0, int64_t len) {
    auto nb = n.narrow(td, t0, len);     // [..., len, h]
    auto rb = rstd.narrow(td, t0, len);  // [..., len]
    auto xf = x.narrow(td, t0, len).to(st);  // a copy only for 16-bit compute
    at::mean_out(rb, xf.square(), {-1});
    rb.add_(eps).rsqrt_();
    at::mul_out(nb, xf, rb.unsqueeze(-1));  // computed in st, rounded to the compute dtype
    nb.mul_(w);
  });
}

at::Tensor rmsnorm_backward(const at::Tensor& dn, const at::Tensor& x, const at::Tensor& rstd,
                            const at::Tensor& w, at::Tensor& dw_accum, const at::Tensor& out,
                            int64_t block_elements) {
  const auto c = x.scalar_type();
  const auto st = rstd.scalar_type();
  const int64_t td = token_dim(x);
  std::vector<int64_t> token_dims(static_cast<size_t>(td + 1));
  for (int64_t i = 0; i <= td; ++i) token_dims[static_cast<size_t>(i)] = i;
  at::Tensor dx = out.defined() ? out : at::empty(dn.sizes(), dn.options());  // [..., T, h]
  auto dw = at::zeros({x.size(-1)}, rstd.options());                          // [h] st
  for_token_blocks(x, td, block_elements, [&](int64_t t0, int64_t len) {
    auto dnb = dn.narrow(td, t0, len);                   // [..., len, h]
    auto rb = rstd.narrow(td, t0, len).unsqueeze(-1);    // [..., len, 1]
    auto xhat = at::mul(x.narrow(td, t0, len), rb);      // [..., len, h] st
    // dL/dw = sum over tokens of dn * xhat (xhat rounded to the compute dtype as in forward).
    dw.add_((dnb.to(st) * xhat.to(c).to(st)).sum(token_dims));
    auto dxhat = at::mul(dnb, w).to(st);
    auto mean_dot = (dxhat * xhat).mean(-1, /*keepdim=*/true);
    // dx = (dxhat - xhat * mean_dot) * rstd, in place; dn's block is no longer read.
    dxhat.sub_(xhat.mul_(mean_dot)).mul_(rb);
    dx.narrow(td, t0, len).copy_(dxhat);
  });
  dw_accum.add_(dw.to(dw_accum.scalar_type()));
  return dx;
}

RopeTable RopeTable::build(const ModelConfig& c, int64_t seq_len, at::ScalarType dtype,
                           at::Device device) {
  const int64_t half = c.head_dim / 2;
  std::vector<double> inv_freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    double f = 1.0 / std::pow(c.rope_theta, static_cast<double>(2 * i) / c.head_dim);
    const auto& rs = c.rope_scaling;
    if (rs.factor != 0.0) {
      // Llama 3.1: keep high frequencies, divide low ones by factor, blend between.
      double low_wavelen = rs.original_max_position / rs.low_freq_factor;
      double high_wavelen = rs.original_max_position / rs.high_freq_factor;
      double wavelen = 2.0 * std::numbers::pi / f;
      if (wavelen > low_wavelen) {
        f = f / rs.factor;
      } else if (wavelen >= high_wavelen) {
        double smooth = (rs.original_max_position / wavelen - rs.low_freq_factor) /
                        (rs.high_freq_factor - rs.low_freq_factor);
        f = (1.0 - smooth) * f / rs.factor + smooth * f;
      }
    }
    inv_freq[static_cast<size_t>(i)] = f;
  }
  auto opts = at::TensorOptions().dtype(at::kDouble);
  auto freqs = at::arange(seq_len, opts).unsqueeze(1) *
               at::from_blob(inv_freq.data(), {half}, opts).unsqueeze(0);  // [S, d/2]
  RopeTable t;
  t.cos = freqs.cos().to(device, dtype);
  t.sin = freqs.sin().to(device, dtype);
  return t;
}

RopeTable RopeTable::slice(int64_t begin, int64_t length) const {
  return {cos.narrow(0, begin, length), sin.narrow(0, begin, length)};
}

void rope_apply_(const at::Tensor& x, const RopeTable& t, bool inverse, int64_t block_elements) {
  const int64_t half = x.size(-1) / 2;
  for_token_blocks(x, 1, block_elements, [&](int64_t t0, int64_t len) {
    auto xb = x.narrow(1, t0, len);                               // [B, len, H, d]
    auto c = t.cos.narrow(0, t0, len).view({1, len, 1, half});
    auto s = t.sin.narrow(0, t0, len).view({1, len, 1, half});
    auto x1 = xb.narrow(-1, 0, half);
    auto x2 = xb.narrow(-1, half, half);
    // forward:  [x1, x2] -> [x1 c - x2 s, x2 c + x1 s]
    // inverse:  [x1, x2] -> [x1 c + x2 s, x2 c - x1 s]
    // The two sine products are taken before either half is overwritten.
    auto x2s = x2 * s;  // [B, len, H, d/2]
    auto x1s = x1 * s;
    if (inverse) {
      x1.mul_(c).add_(x2s);
      x2.mul_(c).sub_(x1s);
    } else {
      x1.mul_(c).sub_(x2s);
      x2.mul_(c).add_(x1s);
    }
  });
}

void swiglu_forward(const at::Tensor& gu, at::Tensor& a) {
  const int64_t f = gu.size(-1) / 2;
  auto g = gu.narrow(-1, 0, f);
  if (!a.defined()) a = at::empty(g.sizes(), gu.options());
  at::silu_out(a, g);
  a.mul_(gu.narrow(-1, f, f));
}

void swiglu_backward_(const at::Tensor& dgu, const at::Tensor& gu) {
  const int64_t f = gu.size(-1) / 2;
  auto g = gu.narrow(-1, 0, f);
  auto u = gu.narrow(-1, f, f);
  auto dg = dgu.narrow(-1, 0, f);  // da on entry
  auto du = dgu.narrow(-1, f, f);
  // d/du = da * silu(g) = da * (g * sigmoid(g))
  at::sigmoid_out(du, g);
  du.mul_(g).mul_(dg);
  // d/dg = (da * u) * sig * (1 + g (1 - sig)), sig = sigmoid(g): silu's derivative
  // times (da * u), one fused op written over its own input.
  dg.mul_(u);
  at::silu_backward_out(dg, dg, g);
}

at::Tensor swiglu_backward(const at::Tensor& da, const at::Tensor& gu) {
  auto dgu = at::empty(gu.sizes(), gu.options());  // [..., 2f]
  dgu.narrow(-1, 0, da.size(-1)).copy_(da);
  swiglu_backward_(dgu, gu);
  return dgu;
}

void accumulate_matmul_grad(at::Tensor& grad, const at::Tensor& dy, const at::Tensor& x) {
  auto dy2 = dy.reshape({-1, dy.size(-1)});
  auto x2 = x.reshape({-1, x.size(-1)});
  if (grad.scalar_type() == dy2.scalar_type())
    grad.addmm_(dy2.t(), x2);
  else
    grad.add_(at::mm(dy2.t(), x2));  // the add converts: no second [out, in] copy on CUDA
}

}  // namespace memo::model
