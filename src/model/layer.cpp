// Decoder layer forward and backward over ATen ops.
#include "model/layer.h"

#include <ATen/ATen.h>

#include <string_view>

#include "core/error.h"

namespace memo::model {

std::vector<std::pair<const char*, at::Tensor*>> LayerWeights::named() {
  return {{"norm1", &norm1}, {"wqkv", &wqkv},   {"wo", &wo},
          {"norm2", &norm2}, {"wgu", &wgu}, {"wdown", &wdown}};
}

std::vector<std::pair<const char*, const at::Tensor*>> LayerWeights::named() const {
  return {{"norm1", &norm1}, {"wqkv", &wqkv},   {"wo", &wo},
          {"norm2", &norm2}, {"wgu", &wgu}, {"wdown", &wdown}};
}

DecoderLayer::DecoderLayer(const ModelConfig& config, AttentionKernel kernel,
                           int64_t block_elements)
    : config_(config), kernel_(kernel), block_elements_(block_elements) {}

HeadCounts DecoderLayer::resolve(HeadCounts heads) const {
  return heads.q > 0 ? heads : HeadCounts{config_.heads, config_.kv_heads};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> DecoderLayer::split_heads(
    const at::Tensor& qkv, HeadCounts local) const {
  const auto& c = config_;
  const auto [nh, nkv] = resolve(local);
  auto heads = qkv.view({qkv.size(0), qkv.size(1), nh + 2 * nkv, c.head_dim});
  auto q = heads.narrow(2, 0, nh).transpose(1, 2);
  auto k = heads.narrow(2, nh, nkv).transpose(1, 2);
  auto v = heads.narrow(2, nh + nkv, nkv).transpose(1, 2);
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

// The token range [t0, t0 + n) along `dim` of a skeletal slot of full shape
// `shape`. A slot the caller did not preallocate (keep, recompute, eval) is
// allocated whole here first, so both cases run the same code after it; a
// token range needs a preallocated slot.
at::Tensor slot_range(at::Tensor& slot, at::IntArrayRef shape, const at::TensorOptions& opts,
                      int64_t dim, int64_t t0, int64_t n) {
  if (!slot.defined()) {
    if (t0 != 0 || n != shape[static_cast<size_t>(dim)])
      throw Error("decoder layer: a token range needs preallocated skeletal storage");
    slot = at::empty(shape, opts);
  }
  return (t0 == 0 && n == slot.size(dim)) ? slot : slot.narrow(dim, t0, n);
}

// The token range [t0, t0 + n) of `t` along dim 1, or `t` itself when whole.
at::Tensor tokens(const at::Tensor& t, int64_t t0, int64_t n) {
  return (t0 == 0 && n == t.size(1)) ? t : t.narrow(1, t0, n);
}

// out [B, n, N] = in [B, n, K] @ w [N, K]^T, computed straight into `out` (a
// token range of a slot). mm takes 2-D operands: [B, n, *] folds into
// [B n, *] when B == 1 or the range is the whole sequence; a partial range of
// several sequences is strided across them, so it runs one mm per sequence.
void linear_into(const at::Tensor& out, const at::Tensor& in, const at::Tensor& w) {
  auto foldable = [](const at::Tensor& t) {
    return t.size(0) == 1 || t.stride(0) == t.size(1) * t.stride(1);
  };
  if (foldable(out) && foldable(in)) {
    auto out2 = out.view({-1, out.size(-1)});  // [B n, N]
    at::mm_out(out2, in.view({-1, in.size(-1)}), w.t());
    return;
  }
  for (int64_t b = 0; b < out.size(0); ++b) {
    auto out_b = out.select(0, b);  // [n, N], rows contiguous
    at::mm_out(out_b, in.select(0, b), w.t());
  }
}

}  // namespace

void DecoderLayer::forward_pre_attention(const LayerWeights& w, const RopeTable& rope,
                                         const at::Tensor& x, LayerActivations& acts, int64_t t0,
                                         int64_t n, int64_t position) const {
  const auto& c = config_;
  const int64_t B = x.size(0), S = x.size(1);
  if (n == 0) n = S - t0;
  const auto opts = x.options();
  const auto st = opts.dtype(stat_dtype(x.scalar_type()));
  auto n1 = slot_range(acts.n1, {B, S, c.hidden}, opts, 1, t0, n);       // [B, n, h]
  auto rstd1 = slot_range(acts.rstd1, {B, S}, st, 1, t0, n);             // [B, n]
  auto qkv = slot_range(acts.qkv, {B, S, c.qkv_dim()}, opts, 1, t0, n);  // [B, n, (nh+2nkv) d]
  rmsnorm_forward(tokens(x, t0, n), w.norm1, c.rms_eps, n1, rstd1, block_elements_);
  linear_into(qkv, n1, w.wqkv);
  // RoPE in place on q and k (not v), at global positions position + [t0, t0 + n).
  auto heads = qkv.view({B, n, c.heads + 2 * c.kv_heads, c.head_dim});
  rope_apply_(heads.narrow(2, 0, c.heads + c.kv_heads), rope.slice(position + t0, n),
              /*inverse=*/false, block_elements_);
}

AttentionResult DecoderLayer::attend(const at::Tensor& qkv, HeadCounts heads) const {
  auto [q, k, v] = split_heads(qkv, heads);
  auto out = attention_forward(kernel_, q, k, v);
  // o [B, nh, S, d] -> [B, S, nh d] (a view when the kernel wrote it token-major).
  auto o = out.o.transpose(1, 2).reshape({q.size(0), q.size(2), q.size(1) * config_.head_dim});
  return {std::move(o), std::move(out.lse)};
}

void DecoderLayer::keep_attention(AttentionResult&& result, LayerActivations& acts) const {
  // The kernels allocate their outputs, so into a preallocated slot this is
  // one copy of o and lse.
  const int64_t S = result.o.size(1);
  put(acts.o, result.o, 1, 0, S);
  put(acts.lse, result.lse, 2, 0, S);
}

void DecoderLayer::forward_attention(LayerActivations& acts) const {
  keep_attention(attend(acts.qkv), acts);
}

void DecoderLayer::forward_post_attention(const LayerWeights& w, const at::Tensor& x,
                                          LayerActivations& acts, int64_t t0, int64_t n) const {
  const auto& c = config_;
  const int64_t B = x.size(0), S = x.size(1);
  if (n == 0) n = S - t0;
  const auto opts = x.options();
  const auto st = opts.dtype(stat_dtype(x.scalar_type()));
  auto x2 = slot_range(acts.x2, {B, S, c.hidden}, opts, 1, t0, n);  // [B, n, h]
  linear_into(x2, tokens(acts.o, t0, n), w.wo);
  x2.add_(tokens(x, t0, n));
  auto n2 = slot_range(acts.n2, {B, S, c.hidden}, opts, 1, t0, n);    // [B, n, h]
  auto rstd2 = slot_range(acts.rstd2, {B, S}, st, 1, t0, n);          // [B, n]
  rmsnorm_forward(x2, w.norm2, c.rms_eps, n2, rstd2, block_elements_);
  auto gu = slot_range(acts.gu, {B, S, 2 * c.ffn}, opts, 1, t0, n);   // [B, n, 2f]
  linear_into(gu, n2, w.wgu);
  auto a = slot_range(acts.a, {B, S, c.ffn}, opts, 1, t0, n);         // [B, n, f]
  swiglu_forward(gu, a);
}

at::Tensor DecoderLayer::forward_output(const LayerWeights& w, const LayerActivations& acts) const {
  return at::matmul(acts.a, w.wdown.t()).add_(acts.x2);  // y [B, S, h]
}

void DecoderLayer::recompute(const LayerWeights& w, const RopeTable& rope, LayerActivations& acts,
                             int64_t position) const {
  forward_pre_attention(w, rope, acts.x, acts, 0, 0, position);
  forward_attention(acts);
  forward_post_attention(w, acts.x, acts);
}

void DecoderLayer::recompute_tokens(const LayerWeights& w, const RopeTable& rope,
                                    LayerActivations& acts, int64_t t0, int64_t position) const {
  const int64_t S = acts.x.size(1);
  if (t0 >= S) return;
  forward_pre_attention(w, rope, acts.x, acts, t0, S - t0, position);
  forward_post_attention(w, acts.x, acts, t0, S - t0);
}

at::Tensor DecoderLayer::forward(const LayerWeights& w, const RopeTable& rope, const at::Tensor& x,
                                 LayerActivations& acts, int64_t position) const {
  acts.x = x;
  forward_pre_attention(w, rope, x, acts, 0, 0, position);  // n1, rstd1, qkv
  forward_attention(acts);                                 // o, lse
  forward_post_attention(w, x, acts);                      // x2, n2, rstd2, gu, a
  return forward_output(w, acts);                          // y = x2 + a Wdown^T
}

PostAttentionGrads DecoderLayer::backward_post_attention(const LayerWeights& w,
                                                         LayerWeights& grads,
                                                         const LayerActivations& acts,
                                                         const at::Tensor& dy) const {
  const auto& c = config_;
  const int64_t B = dy.size(0), S = dy.size(1), T = B * S;

  // MLP: y = x2 + a Wdown^T, a = swiglu(gu), gu = n2 Wgu^T, n2 = rmsnorm(x2).
  // da = dy Wdown goes straight into the gate half of dgu, which
  // swiglu_backward_ turns into d(gu) in place: no separate da.
  auto dgu = at::empty({B, S, 2 * c.ffn}, dy.options());  // [B, S, 2f]
  {
    auto da = dgu.view({T, 2 * c.ffn}).narrow(1, 0, c.ffn);  // [T, f], rows 2f apart
    at::mm_out(da, dy.reshape({T, c.hidden}), w.wdown);
  }
  accumulate_matmul_grad(grads.wdown, dy, acts.a);
  swiglu_backward_(dgu, acts.gu);
  auto dn2 = at::matmul(dgu, w.wgu);  // [B, S, h]
  accumulate_matmul_grad(grads.wgu, dgu, acts.n2);
  dgu.reset();
  // dx2 is written over dn2, block by block.
  auto dx2 = rmsnorm_backward(dn2, acts.x2, acts.rstd2, w.norm2, grads.norm2, dn2, block_elements_)
                 .add_(dy);  // [B, S, h]
  dn2.reset();

  // Attention output projection: x2 = x + o Wo^T.
  auto d_o = at::matmul(dx2, w.wo);  // [B, S, nh d]
  accumulate_matmul_grad(grads.wo, dx2, acts.o);
  return {std::move(dx2), std::move(d_o)};
}

at::Tensor DecoderLayer::backward_attention(at::Tensor d_o, const at::Tensor& qkv,
                                            const at::Tensor& o, const at::Tensor& lse,
                                            HeadCounts local) const {
  const auto& c = config_;
  const auto [nh, nkv] = resolve(local);
  const int64_t B = qkv.size(0), S = qkv.size(1);
  AttentionGrads g;
  {
    auto [q, k, v] = split_heads(qkv, local);
    auto o_heads = o.view({B, S, nh, c.head_dim}).transpose(1, 2);
    auto do_heads = d_o.view({B, S, nh, c.head_dim}).transpose(1, 2);
    g = attention_backward(kernel_, do_heads, q, k, v, o_heads, lse);
  }
  d_o.reset();

  // Gather dq, dk, dv into the qkv layout, each freed once copied.
  auto dqkv = at::empty({B, S, nh + 2 * nkv, c.head_dim}, qkv.options());
  dqkv.narrow(2, 0, nh).copy_(g.dq.transpose(1, 2));
  g.dq.reset();
  dqkv.narrow(2, nh, nkv).copy_(g.dk.transpose(1, 2));
  g.dk.reset();
  dqkv.narrow(2, nh + nkv, nkv).copy_(g.dv.transpose(1, 2));
  g.dv.reset();
  return dqkv.view({B, S, (nh + 2 * nkv) * c.head_dim});  // [B, S, (nh+2nkv) d]
}

at::Tensor DecoderLayer::backward_pre_attention(const LayerWeights& w, LayerWeights& grads,
                                                const RopeTable& rope,
                                                const LayerActivations& acts, at::Tensor dqkv,
                                                const at::Tensor& dx2, int64_t position) const {
  const auto& c = config_;
  const int64_t B = dqkv.size(0), S = dqkv.size(1);
  // Undo RoPE on the q and k part, at the tokens' global positions.
  {
    auto heads = dqkv.view({B, S, c.heads + 2 * c.kv_heads, c.head_dim});
    rope_apply_(heads.narrow(2, 0, c.heads + c.kv_heads), rope.slice(position, S),
                /*inverse=*/true, block_elements_);
  }
  // n1 = rmsnorm(x), qkv = n1 Wqkv^T; dx is written over dn1.
  auto dn1 = at::matmul(dqkv, w.wqkv);  // [B, S, h]
  accumulate_matmul_grad(grads.wqkv, dqkv, acts.n1);
  dqkv.reset();
  return rmsnorm_backward(dn1, acts.x, acts.rstd1, w.norm1, grads.norm1, dn1, block_elements_)
      .add_(dx2);
}

at::Tensor DecoderLayer::backward(const LayerWeights& w, LayerWeights& grads,
                                  const RopeTable& rope, const LayerActivations& acts,
                                  const at::Tensor& dy, int64_t position) const {
  auto post = backward_post_attention(w, grads, acts, dy);                     // dx2, d_o
  auto dqkv = backward_attention(std::move(post.d_o), acts.qkv, acts.o, acts.lse);
  return backward_pre_attention(w, grads, rope, acts, std::move(dqkv), post.dx2, position);
}

}  // namespace memo::model
