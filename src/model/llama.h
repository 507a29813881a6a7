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
  ModelWeights& grads() { return grads_; }
  // Compute-dtype weights; the same tensors as master() when the dtypes agree.
  const ModelWeights& compute() const { return compute_; }
  // Re-casts master weights into the compute copies (after an optimizer step).
  void refresh_compute();
  void zero_grads();

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
};

}  // namespace memo::model
