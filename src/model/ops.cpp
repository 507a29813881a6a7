// RMSNorm, RoPE, SwiGLU forward/backward on ATen ops.
#include "model/ops.h"

#include <ATen/ATen.h>

#include <cmath>
#include <numbers>
#include <vector>

namespace memo::model {

at::ScalarType stat_dtype(at::ScalarType compute) {
  return (compute == at::kHalf || compute == at::kBFloat16) ? at::kFloat : compute;
}

void rmsnorm_forward(const at::Tensor& x, const at::Tensor& w, double eps, at::Tensor& n,
                     at::Tensor& rstd) {
  auto xf = x.to(stat_dtype(x.scalar_type()));
  rstd = at::rsqrt(xf.square().mean(-1).add_(eps));
  n = (xf * rstd.unsqueeze(-1)).to(x.scalar_type()).mul_(w);
}

at::Tensor rmsnorm_backward(const at::Tensor& dn, const at::Tensor& x, const at::Tensor& rstd,
                            const at::Tensor& w, at::Tensor& dw_accum) {
  auto st = rstd.scalar_type();
  auto xhat = x.to(st) * rstd.unsqueeze(-1);
  auto h = x.size(-1);
  // dL/dw = sum over tokens of dn * xhat (xhat rounded to the compute dtype as in forward).
  auto dw = (dn.to(st) * xhat.to(x.scalar_type()).to(st)).reshape({-1, h}).sum(0);
  dw_accum.add_(dw.to(dw_accum.scalar_type()));
  auto dxhat = (dn * w).to(st);
  auto mean_dot = (dxhat * xhat).mean(-1, /*keepdim=*/true);
  return ((dxhat - xhat * mean_dot) * rstd.unsqueeze(-1)).to(x.scalar_type());
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

void rope_apply_(at::Tensor& x, const RopeTable& t, bool inverse) {
  const int64_t half = x.size(-1) / 2;
  auto c = t.cos.view({1, t.cos.size(0), 1, half});
  auto s = t.sin.view({1, t.sin.size(0), 1, half});
  auto x1 = x.narrow(-1, 0, half);
  auto x2 = x.narrow(-1, half, half);
  // forward:  [x1, x2] -> [x1 c - x2 s, x2 c + x1 s]
  // inverse:  [x1, x2] -> [x1 c + x2 s, x2 c - x1 s]
  auto r1 = inverse ? x1 * c + x2 * s : x1 * c - x2 * s;
  auto r2 = inverse ? x2 * c - x1 * s : x2 * c + x1 * s;
  x1.copy_(r1);
  x2.copy_(r2);
}

at::Tensor swiglu_forward(const at::Tensor& gu) {
  const int64_t f = gu.size(-1) / 2;
  return at::silu(gu.narrow(-1, 0, f)).mul_(gu.narrow(-1, f, f));
}

at::Tensor swiglu_backward(const at::Tensor& da, const at::Tensor& gu) {
  const int64_t f = gu.size(-1) / 2;
  auto g = gu.narrow(-1, 0, f);
  auto u = gu.narrow(-1, f, f);
  auto sig = at::sigmoid(g);
  auto dgu = at::empty_like(gu);
  // d/du = silu(g); d/dg = u * sig * (1 + g (1 - sig))
  auto dg = dgu.narrow(-1, 0, f);
  auto du = dgu.narrow(-1, f, f);
  at::mul_out(du, da, g * sig);
  at::mul_out(dg, da * u, sig * (1 + g * (1 - sig)));
  return dgu;
}

void accumulate_matmul_grad(at::Tensor& grad, const at::Tensor& dy, const at::Tensor& x) {
  auto dy2 = dy.reshape({-1, dy.size(-1)});
  auto x2 = x.reshape({-1, x.size(-1)});
  if (grad.scalar_type() == dy2.scalar_type())
    grad.addmm_(dy2.t(), x2);
  else
    grad.add_(at::mm(dy2.t(), x2).to(grad.scalar_type()));
}

}  // namespace memo::model
