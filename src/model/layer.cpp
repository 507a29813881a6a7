// Decoder layer forward and backward over ATen ops.
#include "model/layer.h"

#include <ATen/ATen.h>

#include <unordered_set>

namespace memo::model {

std::vector<std::pair<const char*, at::Tensor*>> LayerWeights::named() {
  return {{"norm1", &norm1}, {"wqkv", &wqkv},   {"wo", &wo},
          {"norm2", &norm2}, {"wgu", &wgu}, {"wdown", &wdown}};
}

std::vector<std::pair<const char*, const at::Tensor*>> LayerWeights::named() const {
  return {{"norm1", &norm1}, {"wqkv", &wqkv},   {"wo", &wo},
          {"norm2", &norm2}, {"wgu", &wgu}, {"wdown", &wdown}};
}

void LayerActivations::for_each(const std::function<void(const char*, at::Tensor&)>& fn) {
  fn("x", x);
  fn("n1", n1);
  fn("rstd1", rstd1);
  fn("qkv", qkv);
  fn("o", o);
  fn("lse", lse);
  fn("x2", x2);
  fn("n2", n2);
  fn("rstd2", rstd2);
  fn("gu", gu);
  fn("a", a);
}

void LayerActivations::for_each(
    const std::function<void(const char*, const at::Tensor&)>& fn) const {
  const_cast<LayerActivations*>(this)->for_each(
      [&](const char* name, at::Tensor& t) { fn(name, t); });
}

int64_t LayerActivations::bytes() const {
  int64_t total = 0;
  for_each([&](const char*, const at::Tensor& t) {
    if (t.defined()) total += static_cast<int64_t>(t.nbytes());
  });
  return total;
}

int64_t SkeletalSpec::bytes() const {
  int64_t n = static_cast<int64_t>(c10::elementSize(dtype));
  for (auto s : shape) n *= s;
  return n;
}

std::vector<SkeletalSpec> skeletal_specs(const ModelConfig& c, int64_t B, int64_t S,
                                         at::ScalarType compute) {
  const auto st = stat_dtype(compute);
  return {
      {"x", {B, S, c.hidden}, compute, 1, true},
      {"n1", {B, S, c.hidden}, compute, 1, false},
      {"rstd1", {B, S}, st, 1, false},
      {"qkv", {B, S, c.qkv_dim()}, compute, 1, false},
      {"o", {B, S, c.attn_dim()}, compute, 1, true},
      {"lse", {B, c.heads, S}, st, 2, true},
      {"x2", {B, S, c.hidden}, compute, 1, false},
      {"n2", {B, S, c.hidden}, compute, 1, false},
      {"rstd2", {B, S}, st, 1, false},
      {"gu", {B, S, 2 * c.ffn}, compute, 1, false},
      {"a", {B, S, c.ffn}, compute, 1, false},
  };
}

LayerActivations allocate_skeletal(const ModelConfig& c, int64_t B, int64_t S,
                                   at::ScalarType compute, at::Device device) {
  auto specs = skeletal_specs(c, B, S, compute);
  LayerActivations acts;
  size_t i = 0;
  acts.for_each([&](const char*, at::Tensor& t) {
    const auto& s = specs[i++];
    t = at::empty(s.shape, at::TensorOptions().dtype(s.dtype).device(device));
  });
  return acts;
}

DecoderLayer::DecoderLayer(const ModelConfig& config, AttentionKernel kernel)
    : config_(config), kernel_(kernel) {}

std::tuple<at::Tensor, at::Tensor, at::Tensor> DecoderLayer::split_heads(
    const at::Tensor& qkv) const {
  const auto& c = config_;
  auto heads = qkv.view({qkv.size(0), qkv.size(1), c.heads + 2 * c.kv_heads, c.head_dim});
  auto q = heads.narrow(2, 0, c.heads).transpose(1, 2);
  auto k = heads.narrow(2, c.heads, c.kv_heads).transpose(1, 2);
  auto v = heads.narrow(2, c.heads + c.kv_heads, c.kv_heads).transpose(1, 2);
  return {q, k, v};
}

namespace {

// Writes `value` into the token range [t0, t0 + n) of `slot` when the slot is
// preallocated, else makes `value` the slot (whole-sequence case only).
void put(at::Tensor& slot, const at::Tensor& value, int64_t dim, int64_t t0, int64_t n) {
  if (slot.defined())
    slot.narrow(dim, t0, n).copy_(value);
  else
    slot = value;
}

// The token range [t0, t0 + n) of `t` along dim 1, or `t` itself when whole.
at::Tensor tokens(const at::Tensor& t, int64_t t0, int64_t n) {
  return (t0 == 0 && n == t.size(1)) ? t : t.narrow(1, t0, n);
}

}  // namespace

void DecoderLayer::forward_pre_attention(const LayerWeights& w, const RopeTable& rope,
                                         const at::Tensor& x, LayerActivations& acts, int64_t t0,
                                         int64_t n) const {
  const auto& c = config_;
  if (n == 0) n = x.size(1) - t0;
  auto xs = tokens(x, t0, n);
  at::Tensor n1, rstd1;
  rmsnorm_forward(xs, w.norm1, c.rms_eps, n1, rstd1);
  auto qkv = at::matmul(n1, w.wqkv.t());  // [B, n, (nh+2nkv) d]
  auto heads = qkv.view({x.size(0), n, c.heads + 2 * c.kv_heads, c.head_dim});
  auto qk = heads.narrow(2, 0, c.heads + c.kv_heads);  // RoPE on q and k, not v
  rope_apply_(qk, rope.slice(t0, n), /*inverse=*/false);
  put(acts.n1, n1, 1, t0, n);
  put(acts.rstd1, rstd1, 1, t0, n);
  put(acts.qkv, qkv, 1, t0, n);
}

void DecoderLayer::forward_attention(LayerActivations& acts) const {
  auto [q, k, v] = split_heads(acts.qkv);
  auto out = attention_forward(kernel_, q, k, v);
  // o [B, nh, S, d] -> [B, S, nh d] (a view when the kernel wrote it token-major).
  auto o = out.o.transpose(1, 2).reshape({q.size(0), q.size(2), config_.attn_dim()});
  put(acts.o, o, 1, 0, q.size(2));
  put(acts.lse, out.lse, 2, 0, q.size(2));
}

void DecoderLayer::forward_post_attention(const LayerWeights& w, const at::Tensor& x,
                                          LayerActivations& acts, int64_t t0, int64_t n) const {
  if (n == 0) n = x.size(1) - t0;
  auto x2 = at::matmul(tokens(acts.o, t0, n), w.wo.t()).add_(tokens(x, t0, n));
  put(acts.x2, x2, 1, t0, n);
  at::Tensor n2, rstd2;
  rmsnorm_forward(x2, w.norm2, config_.rms_eps, n2, rstd2);
  x2.reset();
  auto gu = at::matmul(n2, w.wgu.t());  // [B, n, 2f]
  put(acts.n2, n2, 1, t0, n);
  put(acts.rstd2, rstd2, 1, t0, n);
  n2.reset();
  auto a = swiglu_forward(gu);  // [B, n, f]
  put(acts.gu, gu, 1, t0, n);
  put(acts.a, a, 1, t0, n);
}

void DecoderLayer::recompute(const LayerWeights& w, const RopeTable& rope,
                             LayerActivations& acts) const {
  forward_pre_attention(w, rope, acts.x, acts);
  forward_attention(acts);
  forward_post_attention(w, acts.x, acts);
}

void DecoderLayer::recompute_tokens(const LayerWeights& w, const RopeTable& rope,
                                    LayerActivations& acts, int64_t t0) const {
  const int64_t S = acts.x.size(1);
  if (t0 >= S) return;
  forward_pre_attention(w, rope, acts.x, acts, t0, S - t0);
  forward_post_attention(w, acts.x, acts, t0, S - t0);
}

at::Tensor DecoderLayer::forward(const LayerWeights& w, const RopeTable& rope, const at::Tensor& x,
                                 LayerActivations& acts) const {
  acts.x = x;
  recompute(w, rope, acts);
  return at::matmul(acts.a, w.wdown.t()).add_(acts.x2);  // y [B, S, h]
}

at::Tensor DecoderLayer::backward(const LayerWeights& w, LayerWeights& grads,
                                  const RopeTable& rope, const LayerActivations& acts,
                                  const at::Tensor& dy) const {
  const auto& c = config_;
  const int64_t B = dy.size(0), S = dy.size(1);

  // MLP: y = x2 + a Wdown^T, a = swiglu(gu), gu = n2 Wgu^T, n2 = rmsnorm(x2).
  auto da = at::matmul(dy, w.wdown);  // [B, S, f]
  accumulate_matmul_grad(grads.wdown, dy, acts.a);
  auto dgu = swiglu_backward(da, acts.gu);  // [B, S, 2f]
  da.reset();
  auto dn2 = at::matmul(dgu, w.wgu);  // [B, S, h]
  accumulate_matmul_grad(grads.wgu, dgu, acts.n2);
  dgu.reset();
  auto dx2 = rmsnorm_backward(dn2, acts.x2, acts.rstd2, w.norm2, grads.norm2).add_(dy);

  // Attention: x2 = x + o Wo^T.
  auto d_o = at::matmul(dx2, w.wo);  // [B, S, nh d]
  accumulate_matmul_grad(grads.wo, dx2, acts.o);
  auto [q, k, v] = split_heads(acts.qkv);
  auto o_heads = acts.o.view({B, S, c.heads, c.head_dim}).transpose(1, 2);
  auto do_heads = d_o.view({B, S, c.heads, c.head_dim}).transpose(1, 2);
  auto g = attention_backward(kernel_, do_heads, q, k, v, o_heads, acts.lse);
  d_o.reset();

  // Gather dq, dk, dv into the qkv layout, then undo RoPE on the q and k part.
  auto dqkv = at::empty({B, S, c.heads + 2 * c.kv_heads, c.head_dim}, dy.options());
  dqkv.narrow(2, 0, c.heads).copy_(g.dq.transpose(1, 2));
  dqkv.narrow(2, c.heads, c.kv_heads).copy_(g.dk.transpose(1, 2));
  dqkv.narrow(2, c.heads + c.kv_heads, c.kv_heads).copy_(g.dv.transpose(1, 2));
  g = {};
  auto dqk = dqkv.narrow(2, 0, c.heads + c.kv_heads);
  rope_apply_(dqk, rope, /*inverse=*/true);
  auto dqkv_flat = dqkv.view({B, S, c.qkv_dim()});

  // n1 = rmsnorm(x), qkv = n1 Wqkv^T.
  auto dn1 = at::matmul(dqkv_flat, w.wqkv);  // [B, S, h]
  accumulate_matmul_grad(grads.wqkv, dqkv_flat, acts.n1);
  dqkv.reset();
  dqkv_flat.reset();
  return rmsnorm_backward(dn1, acts.x, acts.rstd1, w.norm1, grads.norm1).add_(dx2);
}

}  // namespace memo::model
