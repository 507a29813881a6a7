// A chunked layer's K and V rebuilt from its chunks' inputs (runtime/kv_rebuild.h).
#include "runtime/kv_rebuild.h"

#include <ATen/ATen.h>

#include "core/error.h"
#include "model/chunk_stages.h"
#include "model/ops.h"
#include "runtime/kv_stream.h"

namespace memo::runtime {

namespace {

void require_chunks(const LayerContext& ctx, const std::string& who) {
  if (ctx.chunk_tokens < 1) throw Error(cat(who, ": K and V rebuilt for a layer that did not run in chunks"));
}

// The chunk's n1, rstd1 and qkv (RoPE applied) from its input x [B, n, h],
// in fresh [B, n] tensors or, with storage_tokens > n, in the first n
// tokens of [B, storage_tokens] ones, as the forward had them.
model::LayerActivations pre_attention(const LayerContext& ctx, const at::Tensor& x, int64_t chunk,
                                      int64_t storage_tokens) {
  const auto& c = ctx.layer.config();
  const int64_t B = x.size(0), n = x.size(1);
  model::LayerActivations pre;
  if (storage_tokens > n) {
    const auto stat = x.options().dtype(model::stat_dtype(x.scalar_type()));
    pre.n1 = at::empty({B, storage_tokens, c.hidden}, x.options()).narrow(1, 0, n);     // [B, n, h]
    pre.rstd1 = at::empty({B, storage_tokens}, stat).narrow(1, 0, n);                   // [B, n]
    pre.qkv = at::empty({B, storage_tokens, c.qkv_dim()}, x.options()).narrow(1, 0, n);  // [B, n, (nh+2nkv) d]
  }
  ctx.layer.forward_pre_attention(ctx.weights, ctx.rope, x, pre, 0, 0, chunk * ctx.chunk_tokens);
  return pre;
}

}  // namespace

at::Tensor rebuild_layer_kv(const LayerContext& ctx, int64_t seq_len, int64_t storage_tokens,
                            const ChunkInputs& inputs, const std::string& who, int64_t layer) {
  require_chunks(ctx, who);
  at::Tensor kv;  // [B, S, 2 nkv d]
  inputs([&](int64_t chunk, const at::Tensor& x) {  // x [B, n, h]
    if (!kv.defined()) kv = model::allocate_layer_kv(ctx.layer.config(), x.size(0), seq_len, x.options());
    const auto pre = pre_attention(ctx, x, chunk, storage_tokens);
    model::store_chunk_kv(ctx.layer.config(), pre.qkv, kv, chunk * ctx.chunk_tokens);
  });
  if (!kv.defined()) throw Error(cat(who, ": layer ", layer, " was not saved"));
  return kv;
}

void rebuild_layer_kv_blocks(KvStream& stream, const LayerContext& ctx, int64_t seq_len, int64_t storage_tokens,
                             const ChunkInputs& inputs, const std::string& who, int64_t layer) {
  require_chunks(ctx, who);
  bool begun = false;
  inputs([&](int64_t chunk, const at::Tensor& x) {  // x [B, n, h]
    if (!begun) stream.begin_layer(ctx.layer.config(), layer, x.size(0), seq_len, ctx.chunk_tokens, x.options());
    begun = true;
    const auto pre = pre_attention(ctx, x, chunk, storage_tokens);
    stream.write(layer, chunk, model::chunk_kv(ctx.layer.config(), pre.qkv));
  });
  if (!begun) throw Error(cat(who, ": layer ", layer, " was not saved"));
}

}  // namespace memo::runtime
