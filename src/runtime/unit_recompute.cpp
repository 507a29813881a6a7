// recompute_unit: the forward of one unit again, from its input.
#include "runtime/unit_recompute.h"

#include "model/chunk_stages.h"
#include "runtime/chunk_exchange.h"
#include "runtime/kv_stream.h"
#include "runtime/stage_exchange.h"

namespace memo::runtime {

void recompute_unit(const LayerContext& ctx, Unit u, model::LayerActivations& acts) {
  if (ctx.kv_heads.defined() && ctx.exchange) {
    // A chunk of the shard under sequence parallelism: its queries against
    // every rank's K and V in head layout (its all-to-alls again).
    ctx.layer.forward_pre_attention(ctx.weights, ctx.rope, acts.x, acts, 0, 0, ctx.t0);  // n1, rstd1, qkv
    ctx.layer.keep_attention(attend_chunk_exchanged(ctx.layer, *ctx.exchange, acts.qkv, ctx.kv_heads, ctx.t0), acts);
    ctx.layer.forward_post_attention(ctx.weights, acts.x, acts);
  } else if (ctx.kv_stream) {
    model::recompute_chunk_blocks(ctx.layer, ctx.weights, ctx.rope, acts, ctx.t0, ctx.chunk_tokens,
                                  ctx.kv_stream->blocks(u.layer));
  } else if (ctx.kv.defined()) {
    model::recompute_chunk(ctx.layer, ctx.weights, ctx.rope, acts, ctx.kv, ctx.t0);
  } else if (ctx.exchange) {
    // Attention runs on the whole sequence again (Ulysses: its all-to-alls too).
    ctx.layer.forward_pre_attention(ctx.weights, ctx.rope, acts.x, acts);
    ctx.layer.keep_attention(attend_exchanged(ctx.layer, *ctx.exchange, acts.qkv), acts);
    ctx.layer.forward_post_attention(ctx.weights, acts.x, acts);
  } else {
    ctx.layer.recompute(ctx.weights, ctx.rope, acts);
  }
}

}  // namespace memo::runtime
