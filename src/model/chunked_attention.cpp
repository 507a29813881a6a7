// Exact chunked causal attention: per query chunk, the causal diagonal block
// and the earlier keys in non-causal blocks, merged through the log-sum-exp;
// backward per block with the merged o and lse.
#include "model/chunked_attention.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <limits>

#include "core/error.h"

namespace memo::model {

namespace {

// Programmer errors: what a caller hands a chunk.
void check_chunk(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  if (q.dim() != 4 || k.dim() != 4 || v.dim() != 4 || k.sizes() != v.sizes() ||
      k.size(0) != q.size(0) || k.size(3) != q.size(3) || k.size(1) < 1 ||
      q.size(1) % k.size(1) != 0 || q.size(2) < 1 || k.size(2) < q.size(2))
    throw Error(cat("chunked attention: q ", q.sizes(), ", k ", k.sizes(), ", v ", v.sizes(),
                    " are not a query chunk [B, nh, n, d] (n >= 1) and its key prefix ",
                    "[B, nkv, P, d] twice (P >= n, nkv dividing nh)"));
  if (k.scalar_type() != q.scalar_type() || v.scalar_type() != q.scalar_type() ||
      k.device() != q.device() || v.device() != q.device())
    throw Error(cat("chunked attention: q, k, v must share dtype and device, not ", q.toString(),
                    ", ", k.toString(), ", ", v.toString()));
}

void check_same(const char* what, const at::Tensor& t, at::IntArrayRef want,
                const at::Tensor& like) {
  if (!t.defined() || t.sizes() != want || t.device() != like.device())
    throw Error(cat("chunked attention: ", what, " is ",
                    t.defined() ? cat(t.sizes(), " on ", t.device()) : std::string("undefined"),
                    ", expected ", want, " on ", like.device()));
}

// t [B, H, n, d] laid out token-major and dense ([B, n, H, d] contiguous):
// t itself when it is, else a copy. A token range of a batch > 1 is not
// dense (its batch stride spans the whole sequence), and the CPU kernel's
// backward copies such an output gradient on every call: once per chunk
// here instead of once per key block.
at::Tensor token_major_dense(const at::Tensor& t) {
  if (t.transpose(1, 2).is_contiguous()) return t;
  auto out = at::empty({t.size(0), t.size(2), t.size(1), t.size(3)}, t.options()).transpose(1, 2);
  return out.copy_(t);  // [B, H, n, d]
}

void check_chunk_size(int64_t chunk) {
  require_input(chunk >= 1, "attention query chunk of ", chunk,
                " tokens: expected at least 1 (a chunk as long as the sequence or longer is "
                "unchunked attention)");
}

void check_kv_block(int64_t kv_block) {
  require_input(kv_block >= 1, "attention key block of ", kv_block,
                " tokens: expected at least 1 (kWholePrefix: all earlier keys in one call)");
}

// The whole-sequence entry points' arguments: the chunk and key-block sizes,
// the shapes, and as many keys as queries (causal over one sequence).
void check_whole_sequence(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t chunk,
                          int64_t kv_block) {
  check_chunk_size(chunk);
  check_kv_block(kv_block);
  check_chunk(q, k, v);
  if (k.size(2) != q.size(2))
    throw Error(cat("chunked attention: q has ", q.size(2), " tokens but k and v ", k.size(2)));
}

}  // namespace

void merge_attention_partial_(at::Tensor& o_acc, at::Tensor& lse_acc, const at::Tensor& o_part,
                              const at::Tensor& lse_part) {
  // m = max(lse_acc, lse_part), with rows where both are -inf shifted by 0
  // instead (exp(-inf - 0) = 0, where -inf - -inf would be nan).
  auto m = at::maximum(lse_acc, lse_part);                     // [B, nh, n]
  m.masked_fill_(m == -std::numeric_limits<double>::infinity(), 0.0);
  auto w_acc = at::sub(lse_acc, m).exp_();                     // [B, nh, n]
  auto w_part = at::sub(lse_part, m).exp_();                   // [B, nh, n]
  auto sum = at::add(w_acc, w_part);                           // [B, nh, n]
  lse_acc.copy_(m.add_(at::log(sum)));  // log(0) = -inf where no key was seen
  // The larger term is exp(0) = 1 wherever m is finite, so sum >= 1 there and
  // the clamp changes nothing; where both are -inf it turns 0/0 into 0/1.
  sum.clamp_min_(1.0);
  w_acc.div_(sum);
  w_part.div_(sum);
  o_acc.mul_(w_acc.unsqueeze(-1)).addcmul_(o_part, w_part.unsqueeze(-1));
}

AttentionOutput attention_chunk_forward_blocks(AttentionKernel kernel, const at::Tensor& q,
                                               const at::Tensor& k_diag, const at::Tensor& v_diag,
                                               int64_t t0, int64_t kv_block, const KeyBlocks& earlier) {
  check_kv_block(kv_block);
  check_chunk(q, k_diag, v_diag);
  // The diagonal block first: every row has its own key there, so the running
  // lse is finite from the start, and (streaming K and V) the earlier blocks
  // can be in flight while it runs.
  auto diag = attention_forward(kernel, q, k_diag, v_diag, /*causal=*/true);
  if (t0 == 0) return diag;

  // The accumulator in the statistics dtype: the kernel's own o when it is in
  // that dtype already (fp32, fp64), else a widened copy; lse as its own
  // contiguous tensor (the efficient kernel's is a view into a padded one).
  const auto st = diag.lse.scalar_type();
  at::Tensor o_acc = diag.o.scalar_type() == st ? diag.o : diag.o.to(st);  // [B, nh, n, d]
  at::Tensor lse_acc = diag.lse.contiguous();                             // [B, nh, n]
  diag = {};
  for (int64_t s0 = 0; s0 < t0;) {
    const int64_t len = std::min(kv_block, t0 - s0);
    auto [k, v] = earlier(s0, len);  // [B, nkv, len, d]
    auto part = attention_forward(kernel, q, k, v, /*causal=*/false);
    merge_attention_partial_(o_acc, lse_acc, part.o, part.lse);
    s0 += len;
  }
  return {o_acc.scalar_type() == q.scalar_type() ? o_acc : o_acc.to(q.scalar_type()), lse_acc};
}

AttentionOutput attention_chunk_forward(AttentionKernel kernel, const at::Tensor& q,
                                        const at::Tensor& k, const at::Tensor& v,
                                        int64_t kv_block) {
  check_chunk(q, k, v);
  const int64_t n = q.size(2), t0 = k.size(2) - n;
  return attention_chunk_forward_blocks(
      kernel, q, k.narrow(2, t0, n), v.narrow(2, t0, n), t0, kv_block,
      [&](int64_t s0, int64_t len) { return std::make_pair(k.narrow(2, s0, len), v.narrow(2, s0, len)); });
}

at::Tensor attention_chunk_backward_blocks(AttentionKernel kernel, const at::Tensor& d_o,
                                           const at::Tensor& q, const at::Tensor& k_diag,
                                           const at::Tensor& v_diag, const at::Tensor& o,
                                           const at::Tensor& lse, int64_t t0, int64_t kv_block,
                                           const KeyBlocks& earlier, const KeyGrads& grads) {
  check_kv_block(kv_block);
  check_chunk(q, k_diag, v_diag);
  check_same("d_o", d_o, q.sizes(), q);
  check_same("o", o, q.sizes(), q);
  check_same("lse", lse, {q.size(0), q.size(1), q.size(2)}, q);
  const int64_t n = q.size(2);
  // A chunk's lse is usually a token range of the layer's [B, nh, S] one;
  // the CUDA kernels want it dense.
  const auto lse_c = lse.contiguous();         // [B, nh, n]
  const auto d_o_c = token_major_dense(d_o);  // [B, nh, n, d]

  auto g = attention_backward(kernel, d_o_c, q, k_diag, v_diag, o, lse_c, /*causal=*/true);
  grads(t0, n, g.dk, g.dv);
  if (t0 == 0) return g.dq;

  const auto st = lse.scalar_type();
  at::Tensor dq = g.dq.scalar_type() == st ? g.dq : g.dq.to(st);  // [B, nh, n, d]
  g = {};
  for (int64_t s0 = 0; s0 < t0;) {
    const int64_t len = std::min(kv_block, t0 - s0);
    auto [k, v] = earlier(s0, len);  // [B, nkv, len, d]
    auto gb = attention_backward(kernel, d_o_c, q, k, v, o, lse_c, /*causal=*/false);
    dq.add_(gb.dq);
    grads(s0, len, gb.dk, gb.dv);
    s0 += len;
  }
  return dq.scalar_type() == q.scalar_type() ? dq : dq.to(q.scalar_type());
}

at::Tensor attention_chunk_backward(AttentionKernel kernel, const at::Tensor& d_o,
                                    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const at::Tensor& o, const at::Tensor& lse, at::Tensor& dk_acc,
                                    at::Tensor& dv_acc, int64_t kv_block) {
  check_chunk(q, k, v);
  check_same("dk accumulator", dk_acc, k.sizes(), k);
  check_same("dv accumulator", dv_acc, v.sizes(), v);
  const int64_t n = q.size(2), t0 = k.size(2) - n;
  return attention_chunk_backward_blocks(
      kernel, d_o, q, k.narrow(2, t0, n), v.narrow(2, t0, n), o, lse, t0, kv_block,
      [&](int64_t s0, int64_t len) { return std::make_pair(k.narrow(2, s0, len), v.narrow(2, s0, len)); },
      [&](int64_t s0, int64_t len, const at::Tensor& dk, const at::Tensor& dv) {
        dk_acc.narrow(2, s0, len).add_(dk);
        dv_acc.narrow(2, s0, len).add_(dv);
      });
}

AttentionOutput chunked_attention_forward(AttentionKernel kernel, const at::Tensor& q,
                                          const at::Tensor& k, const at::Tensor& v, int64_t chunk,
                                          int64_t kv_block) {
  check_whole_sequence(q, k, v, chunk, kv_block);
  const int64_t B = q.size(0), nh = q.size(1), S = q.size(2), d = q.size(3);
  if (chunk >= S) return attention_forward(kernel, q, k, v, /*causal=*/true);

  auto o = at::empty({B, S, nh, d}, q.options()).transpose(1, 2);  // [B, nh, S, d] token-major
  at::Tensor lse;                                                   // [B, nh, S]
  for (int64_t t0 = 0; t0 < S; t0 += chunk) {
    const int64_t n = std::min(chunk, S - t0);
    auto r = attention_chunk_forward(kernel, q.narrow(2, t0, n), k.narrow(2, 0, t0 + n),
                                     v.narrow(2, 0, t0 + n), kv_block);
    if (!lse.defined()) lse = at::empty({B, nh, S}, r.lse.options());
    o.narrow(2, t0, n).copy_(r.o);
    lse.narrow(2, t0, n).copy_(r.lse);
  }
  return {o, lse};
}

AttentionGrads chunked_attention_backward(AttentionKernel kernel, const at::Tensor& d_o,
                                          const at::Tensor& q, const at::Tensor& k,
                                          const at::Tensor& v, const at::Tensor& o,
                                          const at::Tensor& lse, int64_t chunk,
                                          int64_t kv_block) {
  check_whole_sequence(q, k, v, chunk, kv_block);
  const int64_t B = q.size(0), nh = q.size(1), S = q.size(2), d = q.size(3);
  check_same("d_o", d_o, q.sizes(), q);
  check_same("o", o, q.sizes(), q);
  check_same("lse", lse, {B, nh, S}, q);
  if (chunk >= S) return attention_backward(kernel, d_o, q, k, v, o, lse, /*causal=*/true);

  // dk and dv add up over the chunks: in the statistics dtype, rounded once.
  const auto st = lse.scalar_type();
  auto dk = at::zeros(k.sizes(), k.options().dtype(st));            // [B, nkv, S, d]
  auto dv = at::zeros(v.sizes(), v.options().dtype(st));            // [B, nkv, S, d]
  auto dq = at::empty({B, S, nh, d}, q.options()).transpose(1, 2);  // [B, nh, S, d] token-major
  for (int64_t t0 = 0; t0 < S; t0 += chunk) {
    const int64_t n = std::min(chunk, S - t0);
    auto dk_prefix = dk.narrow(2, 0, t0 + n);
    auto dv_prefix = dv.narrow(2, 0, t0 + n);
    auto dq_chunk = attention_chunk_backward(
        kernel, d_o.narrow(2, t0, n), q.narrow(2, t0, n), k.narrow(2, 0, t0 + n),
        v.narrow(2, 0, t0 + n), o.narrow(2, t0, n), lse.narrow(2, t0, n), dk_prefix, dv_prefix,
        kv_block);
    dq.narrow(2, t0, n).copy_(dq_chunk);
  }
  const auto c = q.scalar_type();
  return {dq, dk.scalar_type() == c ? dk : dk.to(c), dv.scalar_type() == c ? dv : dv.to(c)};
}

}  // namespace memo::model
