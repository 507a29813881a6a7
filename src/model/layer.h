// One Llama decoder layer with a hand-written forward and backward. Forward
// returns the output and the named skeletal tensors (docs/design.md section 3);
// backward takes them plus the output gradient, returns the input gradient and
// accumulates the parameter gradients. Nothing here uses autograd.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "model/attention.h"
#include "model/config.h"
#include "model/ops.h"
#include "model/skeletal.h"

namespace memo::model {

// Parameters of one layer (also used for their gradients).
struct LayerWeights {
  at::Tensor norm1;  // [h]
  at::Tensor wqkv;   // [(nh + 2 nkv) d, h]   rows: q heads, then k heads, then v heads
  at::Tensor wo;     // [h, nh d]
  at::Tensor norm2;  // [h]
  at::Tensor wgu;    // [2f, h]               rows: gate, then up
  at::Tensor wdown;  // [h, f]

  std::vector<std::pair<const char*, at::Tensor*>> named();
  std::vector<std::pair<const char*, const at::Tensor*>> named() const;
};

// The attention stage's results, token-major: o [B, S, nh d] (a view of the
// kernel's [B, nh, S, d] output when that is token-major), lse [B, nh, S] in the
// statistics dtype.
struct AttentionResult {
  at::Tensor o;
  at::Tensor lse;
};

// The attention heads a head-layout tensor holds: every head on one device;
// under Ulysses sequence parallelism heads / sp query heads and kv_heads / sp
// kv heads (or 1, replicated, when sp exceeds them). {0, 0}: the config's.
struct HeadCounts {
  int64_t q = 0;
  int64_t kv = 0;
};

// The post-attention backward's results: the gradient at x2 (the residual
// stream, which flows on to x) and at the attention output.
struct PostAttentionGrads {
  at::Tensor dx2;  // [B, S, h]
  at::Tensor d_o;  // [B, S, nh d]
};

// A layer's forward and backward as stages (docs/design.md, "The step as a
// per-layer program"): the executor (train/layer_program.*) calls them one by
// one, with an exchange of q, k, v and o between them; forward() and
// backward() are the same stages in the same order with nothing between.
//
// Positions: the stages work on local tokens, index t of x; RoPE rotates
// local token t by its global position `position + t` (a sequence shard or a
// chunk starts at a global position; one device and the whole sequence: 0).
// `rope` holds the rows of global positions [0, position + S) at least.
class DecoderLayer {
 public:
  // block_elements: the token-block size of RMSNorm and RoPE (ops.h).
  DecoderLayer(const ModelConfig& config, AttentionKernel kernel,
               int64_t block_elements = kBlockElements);

  // y [B, S, h] from x [B, S, h]; fills every tensor of `acts` (acts.x = x):
  // pre-attention, attention, post-attention, then the output.
  at::Tensor forward(const LayerWeights& w, const RopeTable& rope, const at::Tensor& x,
                     LayerActivations& acts, int64_t position = 0) const;

  // Every tensor of `acts` but x may be preallocated (a rounding buffer of the
  // activation store): forward and recompute then compute straight into it
  // (matmuls into token ranges of the slots, RMSNorm, RoPE and SwiGLU in place),
  // so the only per-token transients are the attention kernel's outputs and
  // the layer output (docs/memory-per-token.md). Undefined slots are allocated
  // whole by the same code.

  // The forward stages, the token-wise ones on the local tokens [t0, t0 + n)
  // of every sequence (n = 0: to the end); a token range needs preallocated
  // slots.
  // pre-attention: x -> n1, rstd1, qkv (q and k rotated at their positions).
  void forward_pre_attention(const LayerWeights& w, const RopeTable& rope, const at::Tensor& x,
                             LayerActivations& acts, int64_t t0 = 0, int64_t n = 0,
                             int64_t position = 0) const;
  // attention (the whole sequence): qkv [B, S, (nh+2nkv) d] -> o [B, S, nh d],
  // lse [B, nh, S]; with `heads`, qkv holds only those heads (head layout).
  AttentionResult attend(const at::Tensor& qkv, HeadCounts heads = {}) const;
  // o and lse into their slots of `acts` (one copy each into a preallocated slot).
  void keep_attention(AttentionResult&& result, LayerActivations& acts) const;
  // attend(acts.qkv), kept in acts.
  void forward_attention(LayerActivations& acts) const;
  // post-attention: x, o -> x2, n2, rstd2, gu, a.
  void forward_post_attention(const LayerWeights& w, const at::Tensor& x, LayerActivations& acts,
                              int64_t t0 = 0, int64_t n = 0) const;
  // The layer's output y [B, S, h] = x2 + a Wdown^T (needs no skeletal slot).
  at::Tensor forward_output(const LayerWeights& w, const LayerActivations& acts) const;

  // Every skeletal tensor of `acts` from acts.x, without the output projection.
  void recompute(const LayerWeights& w, const RopeTable& rope, LayerActivations& acts,
                 int64_t position = 0) const;
  // Token-wise recompute: the tokens [t0, S) of every skeletal tensor except
  // x, o and lse, from acts.x and acts.o, into acts' (preallocated) slots.
  // No attention is recomputed.
  void recompute_tokens(const LayerWeights& w, const RopeTable& rope, LayerActivations& acts,
                        int64_t t0, int64_t position = 0) const;

  // dx [B, S, h] from dy [B, S, h]; adds parameter gradients into `grads`:
  // post-attention backward, attention backward, pre-attention backward.
  // Working set beyond acts, dy and the weights: (2f + h) c bytes per token
  // at most for Llama shapes, plus fixed-size blocks and one weight-sized
  // gradient product (docs/memory-per-token.md).
  at::Tensor backward(const LayerWeights& w, LayerWeights& grads, const RopeTable& rope,
                      const LayerActivations& acts, const at::Tensor& dy,
                      int64_t position = 0) const;

  // The backward stages, mirroring forward's.
  // post-attention: dy -> dx2, d_o; adds the gradients of wdown, wgu, norm2, wo.
  PostAttentionGrads backward_post_attention(const LayerWeights& w, LayerWeights& grads,
                                             const LayerActivations& acts,
                                             const at::Tensor& dy) const;
  // attention: d_o [B, S, nh d] with the forward's qkv, o (token-major, the
  // attention's layout) and lse -> dqkv [B, S, (nh+2nkv) d], RoPE not yet
  // undone. d_o is taken (and freed before dqkv is allocated).
  // With `heads`, every tensor holds only those heads (head layout).
  at::Tensor backward_attention(at::Tensor d_o, const at::Tensor& qkv, const at::Tensor& o,
                                const at::Tensor& lse, HeadCounts heads = {}) const;
  // pre-attention: dqkv, dx2 -> dx [B, S, h]; undoes RoPE at the tokens'
  // positions; adds the gradients of wqkv and norm1. dqkv is taken (and
  // freed before dx is computed).
  at::Tensor backward_pre_attention(const LayerWeights& w, LayerWeights& grads,
                                    const RopeTable& rope, const LayerActivations& acts,
                                    at::Tensor dqkv, const at::Tensor& dx2,
                                    int64_t position = 0) const;

  const ModelConfig& config() const { return config_; }
  AttentionKernel kernel() const { return kernel_; }
  int64_t block_elements() const { return block_elements_; }

 private:
  // q [B, nh, S, d], k and v [B, nkv, S, d] as views into qkv [B, S, (nh+2nkv) d].
  std::tuple<at::Tensor, at::Tensor, at::Tensor> split_heads(const at::Tensor& qkv,
                                                             HeadCounts heads = {}) const;
  HeadCounts resolve(HeadCounts heads) const;

  ModelConfig config_;
  AttentionKernel kernel_;
  int64_t block_elements_;
};

}  // namespace memo::model
