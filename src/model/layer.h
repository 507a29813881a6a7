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

class DecoderLayer {
 public:
  // block_elements: the token-block size of RMSNorm and RoPE (ops.h).
  DecoderLayer(const ModelConfig& config, AttentionKernel kernel,
               int64_t block_elements = kBlockElements);

  // y [B, S, h] from x [B, S, h]; fills every tensor of `acts` (acts.x = x).
  at::Tensor forward(const LayerWeights& w, const RopeTable& rope, const at::Tensor& x,
                     LayerActivations& acts) const;

  // Every tensor of `acts` but x may be preallocated (a rounding buffer of the
  // activation store): forward and recompute then compute straight into it
  // (matmuls into token ranges of the slots, RMSNorm, RoPE and SwiGLU in place),
  // so the only per-token transients are the attention kernel's outputs and
  // the layer output (docs/memory-per-token.md). Undefined slots are allocated
  // whole by the same code.

  // The forward stages, each on the tokens [t0, t0 + n) of every sequence
  // (n = 0: to the end). pre-attention: x -> n1, rstd1, qkv (RoPE at those
  // positions); attention (whole sequence): qkv -> o, lse; post-attention:
  // x, o -> x2, n2, rstd2, gu, a. A token range needs preallocated slots.
  void forward_pre_attention(const LayerWeights& w, const RopeTable& rope, const at::Tensor& x,
                             LayerActivations& acts, int64_t t0 = 0, int64_t n = 0) const;
  void forward_attention(LayerActivations& acts) const;
  void forward_post_attention(const LayerWeights& w, const at::Tensor& x, LayerActivations& acts,
                              int64_t t0 = 0, int64_t n = 0) const;
  // Every skeletal tensor of `acts` from acts.x, without the output projection.
  void recompute(const LayerWeights& w, const RopeTable& rope, LayerActivations& acts) const;
  // Token-wise recompute: the tokens [t0, S) of every skeletal tensor except
  // x, o and lse, from acts.x and acts.o, into acts' (preallocated) slots.
  // No attention is recomputed.
  void recompute_tokens(const LayerWeights& w, const RopeTable& rope, LayerActivations& acts,
                        int64_t t0) const;

  // dx [B, S, h] from dy [B, S, h]; adds parameter gradients into `grads`.
  // Working set beyond acts, dy and the weights: (2f + h) c bytes per token
  // at most for Llama shapes, plus fixed-size blocks and one weight-sized
  // gradient product (docs/memory-per-token.md).
  at::Tensor backward(const LayerWeights& w, LayerWeights& grads, const RopeTable& rope,
                      const LayerActivations& acts, const at::Tensor& dy) const;

  const ModelConfig& config() const { return config_; }
  AttentionKernel kernel() const { return kernel_; }
  int64_t block_elements() const { return block_elements_; }

 private:
  // q [B, nh, S, d], k and v [B, nkv, S, d] as views into qkv [B, S, (nh+2nkv) d].
  std::tuple<at::Tensor, at::Tensor, at::Tensor> split_heads(const at::Tensor& qkv) const;

  ModelConfig config_;
  AttentionKernel kernel_;
  int64_t block_elements_;
};

}  // namespace memo::model
