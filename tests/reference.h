// Autograd references for the tests: the same mathematics as model/ written
// with plain differentiable ATen ops (explicit softmax attention, rotate_half
// RoPE), so autograd computes the gradients the hand-written backward must match.
#pragma once

#include <ATen/ATen.h>

#include "model/config.h"
#include "model/layer.h"
#include "model/ops.h"

namespace memo::testing {

inline at::Tensor ref_rmsnorm(const at::Tensor& x, const at::Tensor& w, double eps) {
  auto xf = x.to(model::stat_dtype(x.scalar_type()));
  auto var = xf.pow(2).mean(-1, true);
  return w * (xf * at::rsqrt(var + eps)).to(x.scalar_type());
}

// x [B, S, H, d]; cos/sin [S, d/2].
inline at::Tensor ref_rope(const at::Tensor& x, const model::RopeTable& t) {
  const int64_t half = x.size(-1) / 2;
  auto c = at::cat({t.cos, t.cos}, -1).view({1, x.size(1), 1, 2 * half});
  auto s = at::cat({t.sin, t.sin}, -1).view({1, x.size(1), 1, 2 * half});
  auto rot = at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  return x * c + rot * s;
}

// Causal GQA attention with an explicit score matrix. q [B,nh,S,d], k/v [B,nkv,S,d].
inline at::Tensor ref_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  const int64_t rep = q.size(1) / k.size(1);
  auto kk = k.repeat_interleave(rep, 1);
  auto vv = v.repeat_interleave(rep, 1);
  const int64_t S = q.size(2);
  auto scores = at::matmul(q, kk.transpose(-1, -2)) / std::sqrt(static_cast<double>(q.size(3)));
  auto mask = at::ones({S, S}, q.options().dtype(at::kBool)).triu(1);
  scores = scores.masked_fill(mask, -std::numeric_limits<double>::infinity());
  return at::matmul(at::softmax(scores, -1), vv);
}

inline at::Tensor ref_layer(const model::ModelConfig& c, const model::LayerWeights& w,
                            const model::RopeTable& rope, const at::Tensor& x) {
  const int64_t B = x.size(0), S = x.size(1);
  auto n1 = ref_rmsnorm(x, w.norm1, c.rms_eps);
  auto qkv = at::matmul(n1, w.wqkv.t()).view({B, S, c.heads + 2 * c.kv_heads, c.head_dim});
  auto q = ref_rope(qkv.narrow(2, 0, c.heads), rope).transpose(1, 2);
  auto k = ref_rope(qkv.narrow(2, c.heads, c.kv_heads), rope).transpose(1, 2);
  auto v = qkv.narrow(2, c.heads + c.kv_heads, c.kv_heads).transpose(1, 2);
  auto o = ref_attention(q, k, v).transpose(1, 2).reshape({B, S, c.attn_dim()});
  auto x2 = x + at::matmul(o, w.wo.t());
  auto n2 = ref_rmsnorm(x2, w.norm2, c.rms_eps);
  auto gu = at::matmul(n2, w.wgu.t());
  auto a = at::silu(gu.narrow(-1, 0, c.ffn)) * gu.narrow(-1, c.ffn, c.ffn);
  return x2 + at::matmul(a, w.wdown.t());
}

// max |a - b| / max |b|
inline double max_rel_error(const at::Tensor& a, const at::Tensor& b) {
  auto denom = b.abs().max().item<double>();
  auto num = (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
  return denom > 0 ? num / denom : num;
}

// A small config for tests.
inline model::ModelConfig small_config(int64_t heads, int64_t kv_heads, int64_t head_dim = 4,
                                       int64_t ffn = 24, int64_t layers = 2, int64_t vocab = 50) {
  model::ModelConfig c;
  c.name = "test";
  c.vocab_size = vocab;
  c.heads = heads;
  c.kv_heads = kv_heads;
  c.head_dim = head_dim;
  c.hidden = heads * head_dim;
  c.ffn = ffn;
  c.layers = layers;
  return c;
}

// Random layer weights (norm weights near 1) in `dtype`.
inline model::LayerWeights random_layer_weights(const model::ModelConfig& c, at::ScalarType dtype,
                                                uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto opts = at::TensorOptions().dtype(dtype);
  auto rnd = [&](std::vector<int64_t> shape, double s) {
    return at::normal(0.0, s, shape, gen, opts.dtype(at::kDouble)).to(dtype);
  };
  model::LayerWeights w;
  w.norm1 = 1.0 + rnd({c.hidden}, 0.1);
  w.wqkv = rnd({c.qkv_dim(), c.hidden}, 0.4);
  w.wo = rnd({c.hidden, c.attn_dim()}, 0.3);
  w.norm2 = 1.0 + rnd({c.hidden}, 0.1);
  w.wgu = rnd({2 * c.ffn, c.hidden}, 0.4);
  w.wdown = rnd({c.hidden, c.ffn}, 0.3);
  return w;
}

}  // namespace memo::testing
