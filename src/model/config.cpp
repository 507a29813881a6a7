// Presets and Hugging Face config.json parsing for ModelConfig.
#include "model/config.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <type_traits>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/files.h"
#include "core/json.h"
#include "core/units.h"

namespace memo::model {

namespace {
constexpr size_t kMaxConfigBytes = 64u << 20;  // a config.json is a few KiB
}  // namespace

// The counts are the planner's (plan::ModelShape), so the two never disagree.
int64_t ModelConfig::layer_matmul_params() const { return to_plan_shape(*this).layer_matmul_params(); }
int64_t ModelConfig::matmul_params() const { return to_plan_shape(*this).matmul_params(); }
int64_t ModelConfig::total_params() const { return to_plan_shape(*this).total_params(); }

void ModelConfig::validate(const std::string& where) const {
  auto positive = [&](int64_t v, const char* field) {
    require_input(v > 0, where, ": ", field, " must be a positive integer, got ", v);
  };
  positive(vocab_size, "vocab_size");
  positive(hidden, "hidden_size");
  positive(layers, "num_hidden_layers");
  positive(heads, "num_attention_heads");
  positive(kv_heads, "num_key_value_heads");
  positive(head_dim, "head_dim");
  positive(ffn, "intermediate_size");
  positive(max_position, "max_position_embeddings");
  require_input(heads % kv_heads == 0, where, ": num_key_value_heads (", kv_heads,
                ") must divide num_attention_heads (", heads, ")");
  require_input(head_dim % 2 == 0, where, ": head_dim (", head_dim, ") must be even for RoPE");
  require_input(rms_eps > 0, where, ": rms_norm_eps must be > 0, got ", rms_eps);
  require_input(rope_theta > 0, where, ": rope_theta must be > 0, got ", rope_theta);
  if (rope_scaling.factor != 0.0) {
    require_input(rope_scaling.factor >= 1.0, where, ": rope_scaling.factor must be >= 1, got ",
                  rope_scaling.factor);
    require_input(rope_scaling.high_freq_factor > rope_scaling.low_freq_factor, where,
                  ": rope_scaling.high_freq_factor must exceed low_freq_factor");
    require_input(rope_scaling.original_max_position > 0, where,
                  ": rope_scaling.original_max_position_embeddings must be > 0");
  }
  // Counts beyond int64 (hidden_size 2^40) fail here, naming the model; every
  // tensor's element count is at most the parameter count.
  (void)total_params();
  (void)matmul_params();
}

namespace {

ModelConfig llama(std::string name, int64_t vocab, int64_t h, int64_t n, int64_t nh, int64_t nkv,
                  int64_t f, double theta, bool tied) {
  ModelConfig c;
  c.name = std::move(name);
  c.vocab_size = vocab;
  c.hidden = h;
  c.layers = n;
  c.heads = nh;
  c.kv_heads = nkv;
  c.head_dim = h / nh;
  c.ffn = f;
  c.rope_theta = theta;
  c.tie_embeddings = tied;
  return c;
}

ModelConfig gpt(std::string name, int64_t n, int64_t h, int64_t nh) {
  ModelConfig c = llama(std::move(name), 50257, h, n, nh, nh, 4 * h, 10000.0, false);
  c.arch = Arch::Gpt;
  c.max_position = 1 << 20;
  return c;
}

ModelConfig preset(const std::string& name) {
  if (name == "tiny") {
    // The built-in default: small enough to train on 2 CPU cores in a minute.
    ModelConfig c = llama("tiny", 256, 128, 2, 4, 2, 352, 10000.0, true);
    c.max_position = 4096;
    return c;
  }
  RopeScaling llama32{32.0, 1.0, 4.0, 8192};
  if (name == "llama3.2-1b") {
    ModelConfig c = llama(name, 128256, 2048, 16, 32, 8, 8192, 500000.0, true);
    c.rope_scaling = llama32;
    c.max_position = 131072;
    return c;
  }
  if (name == "llama3.2-3b") {
    ModelConfig c = llama(name, 128256, 3072, 28, 24, 8, 8192, 500000.0, true);
    c.rope_scaling = llama32;
    c.max_position = 131072;
    return c;
  }
  if (name == "llama3-8b") {
    ModelConfig c = llama(name, 128256, 4096, 32, 32, 8, 14336, 500000.0, false);
    c.max_position = 8192;
    return c;
  }
  if (name == "llama2-7b") {
    ModelConfig c = llama(name, 32000, 4096, 32, 32, 32, 11008, 10000.0, false);
    c.max_position = 4096;
    return c;
  }
  if (name == "gpt-7b") return gpt(name, 32, 4096, 32);
  if (name == "gpt-13b") return gpt(name, 40, 5120, 40);
  if (name == "gpt-30b") return gpt(name, 48, 7168, 56);
  if (name == "gpt-65b") return gpt(name, 80, 8192, 64);
  return {};
}

template <typename T>
T get_field(const nlohmann::json& j, const char* key, const std::string& source) {
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    // A float where an integer belongs: only an exact, representable value
    // (converting 1e300 to int64 is undefined; found by fuzz/fuzz_hf_config).
    if (j.contains(key) && j.at(key).is_number_float()) {
      const double v = j.at(key).get<double>();
      require_input(std::isfinite(v) && v == std::trunc(v) && std::fabs(v) < 9.0e15, source, ": field \"", key,
                    "\" must be an integer, got ", v);
      return static_cast<T>(v);
    }
  }
  try {
    return j.at(key).get<T>();
  } catch (const nlohmann::json::exception&) {
    if (!j.contains(key)) throw InputError(cat(source, ": missing field \"", key, "\""));
    throw InputError(cat(source, ": field \"", key, "\" has the wrong type (", j.at(key).type_name(),
                         ")"));
  }
}

template <typename T>
T get_field_or(const nlohmann::json& j, const char* key, T fallback, const std::string& source) {
  if (!j.contains(key) || j.at(key).is_null()) return fallback;
  return get_field<T>(j, key, source);
}

// The fields of a "llama3" RoPE scaling object (rope_scaling, or
// rope_parameters in transformers >= 5).
RopeScaling read_llama3_scaling(const nlohmann::json& j, const std::string& where) {
  RopeScaling r;
  r.factor = get_field<double>(j, "factor", where);
  r.low_freq_factor = get_field_or<double>(j, "low_freq_factor", 1.0, where);
  r.high_freq_factor = get_field_or<double>(j, "high_freq_factor", 4.0, where);
  r.original_max_position = get_field_or<int64_t>(j, "original_max_position_embeddings", 8192, where);
  return r;
}

}  // namespace

plan::ModelShape to_plan_shape(const ModelConfig& c) {
  plan::ModelShape s;
  s.name = c.name;
  s.arch = c.arch == Arch::Gpt ? plan::ModelArch::Gpt : plan::ModelArch::Llama;
  s.vocab = c.vocab_size;
  s.hidden = c.hidden;
  s.layers = c.layers;
  s.heads = c.heads;
  s.kv_heads = c.kv_heads;
  s.head_dim = c.head_dim;
  s.ffn = c.ffn;
  s.tied_embeddings = c.tie_embeddings;
  return s;
}

std::vector<std::string> preset_names() {
  return {"tiny",   "llama3.2-1b", "llama3.2-3b", "llama3-8b", "llama2-7b",
          "gpt-7b", "gpt-13b",     "gpt-30b",     "gpt-65b"};
}

ModelConfig parse_hf_config(const std::string& text, const std::string& source) {
  const nlohmann::json j = parse_json(text, source);
  require_input(j.is_object(), source, ": expected a JSON object");
  auto type = get_field_or<std::string>(j, "model_type", "llama", source);
  require_input(type == "llama", source, ": model_type \"", type,
                "\" is not supported (expected \"llama\")");
  auto act = get_field_or<std::string>(j, "hidden_act", "silu", source);
  require_input(act == "silu", source, ": hidden_act \"", act, "\" is not supported (expected \"silu\")");

  ModelConfig c;
  c.name = source;
  c.vocab_size = get_field<int64_t>(j, "vocab_size", source);
  c.hidden = get_field<int64_t>(j, "hidden_size", source);
  c.layers = get_field<int64_t>(j, "num_hidden_layers", source);
  c.heads = get_field<int64_t>(j, "num_attention_heads", source);
  c.kv_heads = get_field_or<int64_t>(j, "num_key_value_heads", c.heads, source);
  c.ffn = get_field<int64_t>(j, "intermediate_size", source);
  require_input(c.heads > 0, source, ": num_attention_heads must be positive, got ", c.heads);
  if (j.contains("head_dim") && !j.at("head_dim").is_null()) {
    c.head_dim = get_field<int64_t>(j, "head_dim", source);
  } else {
    require_input(c.hidden % c.heads == 0, source, ": hidden_size (", c.hidden,
                  ") is not divisible by num_attention_heads (", c.heads, ")");
    c.head_dim = c.hidden / c.heads;
  }
  c.rms_eps = get_field_or<double>(j, "rms_norm_eps", 1e-6, source);
  c.rope_theta = get_field_or<double>(j, "rope_theta", 10000.0, source);
  c.tie_embeddings = get_field_or<bool>(j, "tie_word_embeddings", false, source);
  c.max_position = get_field_or<int64_t>(j, "max_position_embeddings", 8192, source);
  if (j.contains("rope_scaling") && !j.at("rope_scaling").is_null()) {
    const auto& rs = j.at("rope_scaling");
    std::string where = source + ": rope_scaling";
    require_input(rs.is_object(), where, " must be an object");
    auto kind = get_field_or<std::string>(rs, "rope_type", get_field_or<std::string>(rs, "type", "", where),
                                          where);
    require_input(kind == "llama3", where, ".rope_type \"", kind,
                  "\" is not supported (expected \"llama3\")");
    c.rope_scaling = read_llama3_scaling(rs, where);
  }
  // transformers >= 5 writes the RoPE settings as one "rope_parameters" object.
  if (j.contains("rope_parameters") && !j.at("rope_parameters").is_null()) {
    const auto& rp = j.at("rope_parameters");
    std::string where = source + ": rope_parameters";
    require_input(rp.is_object(), where, " must be an object");
    c.rope_theta = get_field_or<double>(rp, "rope_theta", c.rope_theta, where);
    auto kind = get_field_or<std::string>(rp, "rope_type", "default", where);
    require_input(kind == "default" || kind == "llama3", where, ".rope_type \"", kind,
                  "\" is not supported (expected \"default\" or \"llama3\")");
    if (kind == "llama3") {
      c.rope_scaling = read_llama3_scaling(rp, where);
    }
  }
  c.validate(source);
  return c;
}

ModelConfig resolve_model(const std::string& name_or_path) {
  ModelConfig c = preset(name_or_path);
  if (c.vocab_size > 0) return c;
  namespace fs = std::filesystem;
  fs::path p(name_or_path);
  // A name the file system refuses (too long, permission) is bad input naming
  // the path; one that is simply absent is decided below.
  std::error_code ec;
  auto refused = [&] { return ec && ec != std::errc::no_such_file_or_directory; };
  if (fs::is_directory(p, ec)) p /= "config.json";
  require_input(!refused(), "model ", name_or_path, ": ", ec.message());
  const bool exists = fs::exists(p, ec);
  require_input(!refused(), "model ", name_or_path, ": ", ec.message());
  bool looks_like_path = name_or_path.find('/') != std::string::npos ||
                         name_or_path.find(".json") != std::string::npos || exists;
  if (!looks_like_path) {
    throw InputError(cat("unknown model \"", name_or_path, "\": expected a preset (", joined(preset_names()),
                         ") or the path of a Hugging Face config.json"));
  }
  const std::string text = read_text_file(p.string(), kMaxConfigBytes, "model config");
  return parse_hf_config(text, p.string());
}

}  // namespace memo::model
