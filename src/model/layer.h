// One Llama decoder layer with a hand-written forward and backward. Forward
// returns the output and the named skeletal tensors (DESIGN.md section 3);
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

// The skeletal set of one layer: made in forward, needed in backward.
// B batch, S tokens, h hidden, f ffn; st = statistics dtype (ops.h).
struct LayerActivations {
  at::Tensor x;      // [B, S, h]             layer input (the recompute source)
  at::Tensor n1;     // [B, S, h]             rmsnorm(x) * norm1
  at::Tensor rstd1;  // [B, S]       st
  at::Tensor qkv;    // [B, S, (nh+2nkv) d]   q, k after RoPE; v
  at::Tensor o;      // [B, S, nh d]          attention output
  at::Tensor lse;    // [B, nh, S]   st       attention log-sum-exp
  at::Tensor x2;     // [B, S, h]             x + o Wo^T
  at::Tensor n2;     // [B, S, h]             rmsnorm(x2) * norm2
  at::Tensor rstd2;  // [B, S]       st
  at::Tensor gu;     // [B, S, 2f]            [gate | up] = n2 Wgu^T
  at::Tensor a;      // [B, S, f]             silu(gate) * up

  // Visits every tensor with its name, in the order above.
  void for_each(const std::function<void(const char*, at::Tensor&)>& fn);
  void for_each(const std::function<void(const char*, const at::Tensor&)>& fn) const;
  // Bytes of the defined tensors (storage of each, counted once per tensor).
  int64_t bytes() const;
};

class DecoderLayer {
 public:
  DecoderLayer(const ModelConfig& config, AttentionKernel kernel);

  // y [B, S, h] from x [B, S, h]; fills every tensor of `acts` (acts.x = x).
  at::Tensor forward(const LayerWeights& w, const RopeTable& rope, const at::Tensor& x,
                     LayerActivations& acts) const;

  // The three forward stages, usable on a token range (rope rows matching):
  // pre-attention (x -> n1, rstd1, qkv), attention (qkv -> o, lse) and
  // post-attention (x, o -> x2, n2, rstd2, gu, a). forward() adds the output
  // projection y = x2 + a Wdown^T, which backward never needs.
  void forward_pre_attention(const LayerWeights& w, const RopeTable& rope, const at::Tensor& x,
                             LayerActivations& acts) const;
  void forward_attention(LayerActivations& acts) const;
  void forward_post_attention(const LayerWeights& w, const at::Tensor& x,
                              LayerActivations& acts) const;
  // Every skeletal tensor of `acts` from acts.x, without the output projection.
  void recompute(const LayerWeights& w, const RopeTable& rope, LayerActivations& acts) const;

  // dx [B, S, h] from dy [B, S, h]; adds parameter gradients into `grads`.
  at::Tensor backward(const LayerWeights& w, LayerWeights& grads, const RopeTable& rope,
                      const LayerActivations& acts, const at::Tensor& dy) const;

  const ModelConfig& config() const { return config_; }
  AttentionKernel kernel() const { return kernel_; }

 private:
  // q [B, nh, S, d], k and v [B, nkv, S, d] as views into qkv [B, S, (nh+2nkv) d].
  std::tuple<at::Tensor, at::Tensor, at::Tensor> split_heads(const at::Tensor& qkv) const;

  ModelConfig config_;
  AttentionKernel kernel_;
};

}  // namespace memo::model
