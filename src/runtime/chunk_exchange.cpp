// One chunk of a rank's shard through the stage exchange: K, V to head
// layout, attention of the chunk's sp position ranges against their causal
// prefixes, and the mirror in backward (docs/chunks.md).
#include "runtime/chunk_exchange.h"

#include <ATen/ATen.h>

#include <utility>
#include <vector>

#include "model/chunked_attention.h"
#include "model/ops.h"

namespace memo::runtime {

namespace {

// k and v [B, kv_local, P, d] of the tokens [0, P): views into a head-layout
// kv [B, S, 2 kv_local d].
std::pair<at::Tensor, at::Tensor> head_prefix(const at::Tensor& kv, int64_t P, int64_t d) {
  const int64_t kvl = kv.size(2) / (2 * d);
  auto heads = kv.narrow(1, 0, P).view({kv.size(0), P, 2 * kvl, d});  // [B, P, 2 kvl, d]
  return {heads.narrow(2, 0, kvl).transpose(1, 2), heads.narrow(2, kvl, kvl).transpose(1, 2)};
}

// Range j of a head-layout chunk tensor [B, sp n, w] as heads [B, w / d, n, d].
at::Tensor range_heads(const at::Tensor& t, int64_t j, int64_t n, int64_t d) {
  return t.narrow(1, j * n, n).view({t.size(0), n, t.size(2) / d, d}).transpose(1, 2);
}

// The chunk's queries in token layout, [B, n, nh d] (dense: the exchange
// permutes it anyway).
at::Tensor queries(const model::ModelConfig& c, const at::Tensor& qkv) {
  const int64_t B = qkv.size(0), n = qkv.size(1);
  return qkv.view({B, n, c.heads + 2 * c.kv_heads, c.head_dim}).narrow(2, 0, c.heads).reshape({B, n, c.attn_dim()});
}

}  // namespace

void chunk_kv_to_heads(StageExchange& exchange, const at::Tensor& kv, int64_t t0, int64_t n, at::Tensor& kv_heads) {
  const int64_t B = kv.size(0), s_local = kv.size(1);
  auto heads = exchange.kv_to_heads(kv.narrow(1, t0, n));  // [B, sp n, 2 kvl d], range j from rank j
  const int64_t sp = heads.size(1) / n;
  if (!kv_heads.defined()) kv_heads = at::empty({B, sp * s_local, heads.size(2)}, heads.options());
  for (int64_t j = 0; j < sp; ++j) kv_heads.narrow(1, j * s_local + t0, n).copy_(heads.narrow(1, j * n, n));
}

model::AttentionResult attend_chunk_exchanged(const model::DecoderLayer& layer, StageExchange& exchange,
                                              const at::Tensor& qkv_chunk, const at::Tensor& kv_heads, int64_t t0) {
  const auto& c = layer.config();
  const int64_t B = qkv_chunk.size(0), n = qkv_chunk.size(1), d = c.head_dim;
  auto q_heads = exchange.o_to_heads(queries(c, qkv_chunk));  // [B, sp n, nhl d]
  const int64_t sp = q_heads.size(1) / n, s_local = kv_heads.size(1) / sp, nhl = q_heads.size(2) / d;
  auto o_heads = at::empty_like(q_heads);                                                     // [B, sp n, nhl d]
  auto lse_heads = at::empty({B, nhl, sp * n}, q_heads.options().dtype(model::stat_dtype(q_heads.scalar_type())));
  for (int64_t j = 0; j < sp; ++j) {
    auto [k, v] = head_prefix(kv_heads, j * s_local + t0 + n, d);  // [B, kvl, P, d]
    auto out = model::attention_chunk_forward(layer.kernel(), range_heads(q_heads, j, n, d), k, v);
    range_heads(o_heads, j, n, d).copy_(out.o);
    lse_heads.narrow(2, j * n, n).copy_(out.lse);
  }
  q_heads.reset();
  model::AttentionResult result;
  result.o = exchange.o_to_tokens(o_heads);        // [B, n, nh d]
  result.lse = exchange.lse_to_tokens(lse_heads);  // [B, nh, n]
  return result;
}

at::Tensor backward_attention_chunk_exchanged(const model::DecoderLayer& layer, StageExchange& exchange,
                                              at::Tensor d_o, const model::LayerActivations& acts,
                                              const at::Tensor& kv_heads, const at::Tensor& dkv_heads, int64_t t0) {
  const auto& c = layer.config();
  const int64_t n = acts.qkv.size(1), d = c.head_dim;
  auto d_o_heads = exchange.o_to_heads(d_o);  // [B, sp n, nhl d]
  d_o.reset();
  auto q_heads = exchange.o_to_heads(queries(c, acts.qkv));  // [B, sp n, nhl d]
  auto o_heads = exchange.o_to_heads(acts.o);                // [B, sp n, nhl d]
  auto lse_heads = exchange.lse_to_heads(acts.lse);          // [B, nhl, sp n]
  const int64_t sp = q_heads.size(1) / n, s_local = kv_heads.size(1) / sp;
  auto dq_heads = at::empty_like(q_heads);  // [B, sp n, nhl d]
  for (int64_t j = 0; j < sp; ++j) {
    const int64_t P = j * s_local + t0 + n;
    auto [k, v] = head_prefix(kv_heads, P, d);     // [B, kvl, P, d]
    auto [dk, dv] = head_prefix(dkv_heads, P, d);  // views of the accumulators
    auto dq = model::attention_chunk_backward(layer.kernel(), range_heads(d_o_heads, j, n, d),
                                              range_heads(q_heads, j, n, d), k, v, range_heads(o_heads, j, n, d),
                                              lse_heads.narrow(2, j * n, n), dk, dv);
    range_heads(dq_heads, j, n, d).copy_(dq);
  }
  return exchange.o_to_tokens(dq_heads);  // [B, n, nh d]
}

at::Tensor chunk_dkv_to_tokens(StageExchange& exchange, const at::Tensor& dkv_heads, int64_t t0, int64_t n,
                               int64_t s_local, at::ScalarType dtype) {
  const int64_t sp = dkv_heads.size(1) / s_local;
  std::vector<at::Tensor> ranges;
  for (int64_t j = 0; j < sp; ++j) ranges.push_back(dkv_heads.narrow(1, j * s_local + t0, n));
  // Rounded to the compute dtype before it moves (the bytes the plan counts).
  return exchange.kv_to_tokens(at::cat(ranges, 1).to(dtype));  // [B, n, 2 nkv d]
}

}  // namespace memo::runtime
