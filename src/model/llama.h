// The Llama model's parameters: master weights (fp32, or fp64 in tests),
// their gradients, and compute-dtype copies used by forward and backward.
// The layer stack's execution lives in train/layer_program.* so that
// activation policies (runtime/) sit between the layers.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/layer.h"

namespace memo::model {

struct ModelWeights {
  at::Tensor embed;                  // [V, h]
  std::vector<LayerWeights> layers;  // n of them
  at::Tensor final_norm;             // [h]
  at::Tensor lm_head;                // [V, h]; undefined when tied to embed

  // Every defined tensor with a dotted name ("layers.3.wqkv").
  std::vector<std::pair<std::string, at::Tensor*>> named();
  // The lm head weight: lm_head, or embed when tied.
  const at::Tensor& head() const { return lm_head.defined() ? lm_head : embed; }
  at::Tensor& head() { return lm_head.defined() ? lm_head : embed; }
};

struct ModelOptions {
  at::Device device = at::kCPU;
  at::ScalarType master_dtype = at::kFloat;   // weights, gradients, optimizer state
  at::ScalarType compute_dtype = at::kFloat;  // activations and matmuls (bf16 on CUDA)
  std::string attention = "auto";             // CUDA kernel preference
  uint64_t seed = 0;
};

class LlamaModel {
 public:
  LlamaModel(const ModelConfig& config, const ModelOptions& options);

  const ModelConfig& config() const { return config_; }
  const ModelOptions& options() const { return options_; }
  const DecoderLayer& layer() const { return layer_; }

  ModelWeights& master() { return master_; }
  const ModelWeights& master() const { return master_; }
  ModelWeights& grads() { return grads_; }
  const ModelWeights& grads() const { return grads_; }
  // Compute-dtype weights; the same tensors as master() when the dtypes agree.
  const ModelWeights& compute() const { return compute_; }
  // Re-casts master weights into the compute copies (after an optimizer step).
  // An Error once the master weights are released.
  void refresh_compute();
  // Zeroes the gradients that exist (released ones stay released).
  void zero_grads();

  // Releasing what a sharded optimizer holds instead (ZeRO on many ranks,
  // docs/dist.md "ZeRO"). A released tensor is undefined; its memory goes
  // when nothing else holds it.
  // The whole master weights: when the compute dtype is the master's, the
  // compute copies are the same tensors and keep them (forward reads them).
  void release_master();
  bool master_released() const { return master_released_; }
  // The compute copies of layers [first, n) (and the master's, when shared):
  // their weights then come from elsewhere (a runtime::WeightSource).
  void release_compute_layers(int64_t first = 0);
  // Gradients on demand: released gradients are allocated as zeros when a
  // backward is about to add into them (layer_grads, rest_grads) and may be
  // released again once they have been handed on (a reduce-scatter).
  model::LayerWeights& layer_grads(int64_t layer);  // allocates layer `layer`'s when released
  void release_layer_grads(int64_t layer);
  void ensure_rest_grads();   // embed, final norm and head: allocated when released
  void release_rest_grads();
  void release_grads();       // every gradient

  // RoPE rows for global positions [0, end) (a shard or chunk at position p
  // of S tokens needs end = p + S); the table is cached across calls.
  RopeTable rope(int64_t end);

 private:
  ModelConfig config_;
  ModelOptions options_;
  DecoderLayer layer_;
  ModelWeights master_, grads_, compute_;
  RopeTable rope_;
  int64_t rope_len_ = 0;
  bool master_released_ = false;
};

}  // namespace memo::model
