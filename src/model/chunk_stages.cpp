// One chunk's attention stages against the layer's whole-sequence K and V.
#include "model/chunk_stages.h"

#include <ATen/ATen.h>

#include "core/error.h"
#include "model/chunked_attention.h"

namespace memo::model {

at::Tensor allocate_layer_kv(const ModelConfig& c, int64_t B, int64_t S, const at::TensorOptions& options) {
  return at::empty({B, S, 2 * c.kv_heads * c.head_dim}, options);  // [B, S, 2 nkv d]
}

at::Tensor zeros_layer_kv(const ModelConfig& c, int64_t B, int64_t S, const at::TensorOptions& options) {
  return at::zeros({B, S, 2 * c.kv_heads * c.head_dim}, options);  // [B, S, 2 nkv d]
}

std::pair<at::Tensor, at::Tensor> kv_prefix(const ModelConfig& c, const at::Tensor& kv, int64_t P) {
  auto heads = kv.narrow(1, 0, P).view({kv.size(0), P, 2 * c.kv_heads, c.head_dim});  // [B, P, 2nkv, d]
  return {heads.narrow(2, 0, c.kv_heads).transpose(1, 2),             // k [B, nkv, P, d]
          heads.narrow(2, c.kv_heads, c.kv_heads).transpose(1, 2)};   // v [B, nkv, P, d]
}

namespace {

// [B, n, (nh+2nkv) d] -> its heads [B, n, nh+2nkv, d].
at::Tensor qkv_heads(const ModelConfig& c, const at::Tensor& qkv) {
  return qkv.view({qkv.size(0), qkv.size(1), c.heads + 2 * c.kv_heads, c.head_dim});
}

}  // namespace

void store_chunk_kv(const ModelConfig& c, const at::Tensor& qkv_chunk, const at::Tensor& kv, int64_t t0) {
  const int64_t B = qkv_chunk.size(0), n = qkv_chunk.size(1);
  auto src = qkv_heads(c, qkv_chunk).narrow(2, c.heads, 2 * c.kv_heads);  // [B, n, 2nkv, d]
  kv.narrow(1, t0, n).view({B, n, 2 * c.kv_heads, c.head_dim}).copy_(src);
}

AttentionResult attend_chunk(const DecoderLayer& layer, const at::Tensor& qkv_chunk, const at::Tensor& kv,
                             int64_t t0) {
  const auto& c = layer.config();
  const int64_t B = qkv_chunk.size(0), n = qkv_chunk.size(1);
  auto q = qkv_heads(c, qkv_chunk).narrow(2, 0, c.heads).transpose(1, 2);  // [B, nh, n, d]
  auto [k, v] = kv_prefix(c, kv, t0 + n);                                  // [B, nkv, t0 + n, d]
  auto out = attention_chunk_forward(layer.kernel(), q, k, v);
  // o [B, nh, n, d] -> [B, n, nh d] (a view when the kernel wrote it token-major).
  return {out.o.transpose(1, 2).reshape({B, n, c.attn_dim()}), std::move(out.lse)};
}

namespace {

// The chunk's queries [B, nh, n, d] and own keys, values [B, nkv, n, d]: views of its qkv.
struct ChunkHeads {
  at::Tensor q, k, v;
};
ChunkHeads chunk_heads(const ModelConfig& c, const at::Tensor& qkv_chunk) {
  auto heads = qkv_heads(c, qkv_chunk);  // [B, n, nh+2nkv, d]
  return {heads.narrow(2, 0, c.heads).transpose(1, 2), heads.narrow(2, c.heads, c.kv_heads).transpose(1, 2),
          heads.narrow(2, c.heads + c.kv_heads, c.kv_heads).transpose(1, 2)};
}

// o [B, nh, n, d] -> [B, n, nh d] (a view when the kernel wrote it token-major).
AttentionResult token_major(const ModelConfig& c, AttentionOutput out) {
  const int64_t B = out.o.size(0), n = out.o.size(2);
  return {out.o.transpose(1, 2).reshape({B, n, c.attn_dim()}), std::move(out.lse)};
}

// dq [B, nh, n, d] and the chunk's complete dk, dv [B, n, 2 nkv d] into the
// qkv layout [B, n, (nh+2nkv) d] (compute dtype, like `like`).
at::Tensor chunk_dqkv(const ModelConfig& c, at::Tensor dq, const at::Tensor& own_dkv, const at::Tensor& like) {
  const int64_t B = like.size(0), n = like.size(1);
  auto dqkv = at::empty({B, n, c.heads + 2 * c.kv_heads, c.head_dim}, like.options());
  dqkv.narrow(2, 0, c.heads).copy_(dq.transpose(1, 2));
  dq.reset();
  dqkv.narrow(2, c.heads, 2 * c.kv_heads).copy_(own_dkv.view({B, n, 2 * c.kv_heads, c.head_dim}));
  return dqkv.view({B, n, c.qkv_dim()});  // [B, n, (nh+2nkv) d]
}

}  // namespace

at::Tensor backward_attention_chunk(const DecoderLayer& layer, at::Tensor d_o, const LayerActivations& acts,
                                    const at::Tensor& kv, const at::Tensor& dkv_acc, int64_t t0) {
  const auto& c = layer.config();
  const int64_t B = acts.qkv.size(0), n = acts.qkv.size(1);
  at::Tensor dq;  // [B, nh, n, d]
  {
    auto q = qkv_heads(c, acts.qkv).narrow(2, 0, c.heads).transpose(1, 2);   // [B, nh, n, d]
    auto o = acts.o.view({B, n, c.heads, c.head_dim}).transpose(1, 2);     // [B, nh, n, d]
    auto d_o_heads = d_o.view({B, n, c.heads, c.head_dim}).transpose(1, 2);  // [B, nh, n, d]
    auto [k, v] = kv_prefix(c, kv, t0 + n);
    auto [dk, dv] = kv_prefix(c, dkv_acc, t0 + n);  // [B, nkv, t0 + n, d] views of the accumulators
    dq = attention_chunk_backward(layer.kernel(), d_o_heads, q, k, v, o, acts.lse, dk, dv);
  }
  d_o.reset();
  // dq, and dk, dv of the chunk's own tokens (complete now), into the qkv layout.
  return chunk_dqkv(c, std::move(dq), dkv_acc.narrow(1, t0, n), acts.qkv);
}

AttentionResult attend_chunk_blocks(const DecoderLayer& layer, const at::Tensor& qkv_chunk, int64_t t0,
                                    int64_t kv_block, const KeyBlocks& earlier) {
  const auto& c = layer.config();
  auto h = chunk_heads(c, qkv_chunk);
  return token_major(c, attention_chunk_forward_blocks(layer.kernel(), h.q, h.k, h.v, t0, kv_block, earlier));
}

at::Tensor backward_attention_chunk_blocks(const DecoderLayer& layer, at::Tensor d_o, const LayerActivations& acts,
                                           int64_t t0, int64_t kv_block, const KeyBlocks& earlier,
                                           const KeyGrads& earlier_grads, const at::Tensor& own_dkv) {
  const auto& c = layer.config();
  const int64_t B = acts.qkv.size(0), n = acts.qkv.size(1);
  at::Tensor dq;  // [B, nh, n, d]
  {
    auto h = chunk_heads(c, acts.qkv);
    auto o = acts.o.view({B, n, c.heads, c.head_dim}).transpose(1, 2);        // [B, nh, n, d]
    auto d_o_heads = d_o.view({B, n, c.heads, c.head_dim}).transpose(1, 2);  // [B, nh, n, d]
    auto [own_dk, own_dv] = kv_prefix(c, own_dkv, n);                        // [B, nkv, n, d]
    dq = attention_chunk_backward_blocks(
        layer.kernel(), d_o_heads, h.q, h.k, h.v, o, acts.lse, t0, kv_block, earlier,
        [&](int64_t s0, int64_t len, const at::Tensor& dk, const at::Tensor& dv) {
          if (s0 < t0) return earlier_grads(s0, len, dk, dv);
          own_dk.add_(dk);
          own_dv.add_(dv);
        });
  }
  d_o.reset();
  return chunk_dqkv(c, std::move(dq), own_dkv, acts.qkv);
}

void recompute_chunk_blocks(const DecoderLayer& layer, const LayerWeights& w, const RopeTable& rope,
                            LayerActivations& acts, int64_t t0, int64_t kv_block, const KeyBlocks& earlier) {
  layer.forward_pre_attention(w, rope, acts.x, acts, 0, 0, t0);                       // n1, rstd1, qkv
  layer.keep_attention(attend_chunk_blocks(layer, acts.qkv, t0, kv_block, earlier), acts);  // o, lse
  layer.forward_post_attention(w, acts.x, acts);                                      // x2, n2, rstd2, gu, a
}

at::Tensor chunk_kv(const ModelConfig& c, const at::Tensor& qkv_chunk) {
  const int64_t B = qkv_chunk.size(0), n = qkv_chunk.size(1);
  auto kv = allocate_layer_kv(c, B, n, qkv_chunk.options());  // [B, n, 2 nkv d]
  store_chunk_kv(c, qkv_chunk, kv, 0);
  return kv;
}

void recompute_chunk(const DecoderLayer& layer, const LayerWeights& w, const RopeTable& rope,
                     LayerActivations& acts, const at::Tensor& kv, int64_t t0) {
  layer.forward_pre_attention(w, rope, acts.x, acts, 0, 0, t0);  // n1, rstd1, qkv
  store_chunk_kv(layer.config(), acts.qkv, kv, t0);
  layer.keep_attention(attend_chunk(layer, acts.qkv, kv, t0), acts);  // o, lse
  layer.forward_post_attention(w, acts.x, acts);                      // x2, n2, rstd2, gu, a
}

}  // namespace memo::model
