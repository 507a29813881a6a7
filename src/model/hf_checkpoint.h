// Hugging Face Llama checkpoints <-> memo's ModelWeights. A checkpoint
// directory holds config.json plus one model.safetensors or several shards
// listed in model.safetensors.index.json. Names map as
//   model.embed_tokens.weight                 -> embed
//   model.layers.{i}.input_layernorm.weight   -> layers.i.norm1
//   model.layers.{i}.self_attn.{q,k,v}_proj   -> layers.i.wqkv (rows q, k, v)
//   model.layers.{i}.self_attn.o_proj         -> layers.i.wo
//   model.layers.{i}.post_attention_layernorm -> layers.i.norm2
//   model.layers.{i}.mlp.{gate,up}_proj       -> layers.i.wgu (rows gate, up)
//   model.layers.{i}.mlp.down_proj            -> layers.i.wdown
//   model.norm.weight -> final_norm, lm_head.weight -> lm_head (absent when tied)
// memo's RoPE is HF's rotate_half convention, so q/k need no permutation.
#pragma once

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <string>
#include <utility>
#include <vector>

#include "model/config.h"
#include "model/llama.h"

namespace memo::model {

// Whether `path` is a directory holding *.safetensors weights.
bool has_hf_weights(const std::string& path);

// `--model DIR` names a checkpoint: a directory without *.safetensors weights
// (config.json alone, PyTorch .bin files, an index without its shards) is an
// InputError, never a silent start from random initialisation. Paths that
// are not directories (presets, config.json files) pass.
void require_hf_weights_in_directory(const std::string& model);

// Copies the checkpoint's weights into `w` (already allocated with the config's
// shapes; any dtype and device), converting from BF16/F16/F32/F64. Layers past
// config.layers are skipped (a model cut with --layers). Throws InputError
// naming the file and tensor for missing, unexpected or duplicated tensors,
// shape or dtype mismatches with the config, and malformed files.
void load_hf_weights(const std::string& dir, const ModelConfig& config, ModelWeights& w);

// The weights under their HF names, split back into q/k/v and gate/up, as
// contiguous CPU tensors of `dtype`.
std::vector<std::pair<std::string, at::Tensor>> to_hf_tensors(const ModelConfig& config,
                                                              const ModelWeights& w,
                                                              at::ScalarType dtype);

// A config.json that transformers' LlamaForCausalLM reads back into `config`.
nlohmann::json hf_config_json(const ModelConfig& config, at::ScalarType dtype);

// Writes config.json and model.safetensors into `dir` (created if missing;
// config.json is replaced atomically, model.safetensors is written in place
// and fsynced: callers wanting the whole directory atomic write a temporary
// directory and rename it).
void write_hf_checkpoint(const std::string& dir, const ModelConfig& config, const ModelWeights& w,
                         at::ScalarType dtype = at::kFloat);

// Named CPU tensors to and from a plain safetensors file (optimizer state, dumps).
void write_tensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors);
std::vector<std::pair<std::string, at::Tensor>> read_tensors(const std::string& path);

// The safetensors dtype name of a torch dtype, and back.
std::string safetensors_dtype_of(at::ScalarType t);
at::ScalarType torch_dtype_of(const std::string& safetensors_dtype);

// fsyncs a directory so a rename into or inside it is durable.
void fsync_directory(const std::string& dir);

}  // namespace memo::model
