// Model shape: the Llama-family configuration (and the paper's GPT shapes, for
// planning), built-in presets and Hugging Face config.json parsing.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "plan/cost_model.h"

namespace memo::model {

enum class Arch { Llama, Gpt };

// Llama 3.1 "llama3" RoPE frequency scaling; factor == 0 means off.
struct RopeScaling {
  double factor = 0.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position = 8192;
};

struct ModelConfig {
  std::string name = "custom";
  Arch arch = Arch::Llama;
  int64_t vocab_size = 0;
  int64_t hidden = 0;       // h
  int64_t layers = 0;       // n
  int64_t heads = 0;        // nh, query heads
  int64_t kv_heads = 0;     // nkv
  int64_t head_dim = 0;     // d
  int64_t ffn = 0;          // f, SwiGLU inner size (GPT: MLP inner size)
  double rms_eps = 1e-5;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_embeddings = false;
  int64_t max_position = 8192;  // informational; RoPE extends past it

  int64_t qkv_dim() const { return (heads + 2 * kv_heads) * head_dim; }
  int64_t attn_dim() const { return heads * head_dim; }

  // Matmul parameters of one decoder layer (QKV, O, gate/up, down).
  int64_t layer_matmul_params() const;
  // Matmul parameters of the whole model, lm head included (docs/design.md section 7).
  int64_t matmul_params() const;
  // All parameters (embedding counted once when tied).
  int64_t total_params() const;

  // Throws InputError naming the first bad field; `where` prefixes messages.
  void validate(const std::string& where = "model") const;
};

// Names of the built-in presets, in display order.
std::vector<std::string> preset_names();

// A preset by name, or a Hugging Face config.json path. Throws InputError for
// an unknown name or a malformed/unsupported file.
ModelConfig resolve_model(const std::string& name_or_path);

// The shape the planner's cost model needs (plan/ knows nothing of model/).
plan::ModelShape to_plan_shape(const ModelConfig& c);

// Parses the text of a Hugging Face Llama config.json; `source` names it in errors.
ModelConfig parse_hf_config(const std::string& json_text, const std::string& source);

}  // namespace memo::model
