// Hugging Face Llama checkpoint loading and saving (name mapping, q/k/v and
// gate/up concatenation, sharded files through the index).
#include "model/hf_checkpoint.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/files.h"
#include "core/json.h"
#include "model/safetensors.h"

namespace memo::model {

namespace fs = std::filesystem;

std::string safetensors_dtype_of(at::ScalarType t) {
  switch (t) {
    case at::kDouble: return "F64";
    case at::kFloat: return "F32";
    case at::kHalf: return "F16";
    case at::kBFloat16: return "BF16";
    case at::kLong: return "I64";
    case at::kInt: return "I32";
    default: throw Error(cat("safetensors: cannot store dtype ", c10::toString(t)));
  }
}

at::ScalarType torch_dtype_of(const std::string& d) {
  if (d == "F64") return at::kDouble;
  if (d == "F32") return at::kFloat;
  if (d == "F16") return at::kHalf;
  if (d == "BF16") return at::kBFloat16;
  if (d == "I64") return at::kLong;
  if (d == "I32") return at::kInt;
  throw InputError(cat("safetensors dtype \"", d, "\" is not supported"));
}

void fsync_directory(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

namespace {

// Where one HF tensor lands: rows [row, row + shape[0]) of *target.
struct Slot {
  at::Tensor* target = nullptr;
  int64_t row = 0;
  std::vector<int64_t> shape;
  bool filled = false;
};

std::map<std::string, Slot> slots_for(const ModelConfig& c, ModelWeights& w) {
  std::map<std::string, Slot> s;
  const int64_t h = c.hidden, d = c.head_dim, q = c.heads * d, kv = c.kv_heads * d;
  s["model.embed_tokens.weight"] = {&w.embed, 0, {c.vocab_size, h}};
  for (int64_t i = 0; i < c.layers; ++i) {
    auto& l = w.layers[static_cast<size_t>(i)];
    const std::string p = "model.layers." + std::to_string(i) + ".";
    s[p + "input_layernorm.weight"] = {&l.norm1, 0, {h}};
    s[p + "self_attn.q_proj.weight"] = {&l.wqkv, 0, {q, h}};
    s[p + "self_attn.k_proj.weight"] = {&l.wqkv, q, {kv, h}};
    s[p + "self_attn.v_proj.weight"] = {&l.wqkv, q + kv, {kv, h}};
    s[p + "self_attn.o_proj.weight"] = {&l.wo, 0, {h, q}};
    s[p + "post_attention_layernorm.weight"] = {&l.norm2, 0, {h}};
    s[p + "mlp.gate_proj.weight"] = {&l.wgu, 0, {c.ffn, h}};
    s[p + "mlp.up_proj.weight"] = {&l.wgu, c.ffn, {c.ffn, h}};
    s[p + "mlp.down_proj.weight"] = {&l.wdown, 0, {h, c.ffn}};
  }
  s["model.norm.weight"] = {&w.final_norm, 0, {h}};
  if (!c.tie_embeddings) s["lm_head.weight"] = {&w.lm_head, 0, {c.vocab_size, h}};
  return s;
}

// Tensors a checkpoint may hold that memo does not use.
bool ignorable(const std::string& name, const ModelConfig& c) {
  if (name.ends_with(".rotary_emb.inv_freq")) return true;
  if (name == "lm_head.weight" && c.tie_embeddings) return true;  // a tied head saved anyway
  const std::string p = "model.layers.";
  if (name.starts_with(p)) {
    const auto rest = name.substr(p.size());
    const auto dot = rest.find('.');
    if (dot != std::string::npos && dot > 0 && dot < 10 &&
        std::all_of(rest.begin(), rest.begin() + static_cast<long>(dot), ::isdigit))
      return std::stoll(rest.substr(0, dot)) >= c.layers;  // cut away by --layers
  }
  return false;
}

at::Tensor tensor_from(const SafetensorsReader& r, const SafetensorsTensor& t) {
  auto out = at::empty(t.shape, at::TensorOptions().dtype(torch_dtype_of(t.dtype)));
  if (t.end > t.begin) std::memcpy(out.data_ptr(), r.bytes(t), t.end - t.begin);
  return out;
}

std::vector<std::string> weight_files(const std::string& dir) {
  const fs::path index = fs::path(dir) / "model.safetensors.index.json";
  std::vector<std::string> files;
  std::error_code ec;  // a name the file system refuses reads as missing (named below), not as an exception
  if (fs::exists(index, ec)) {
    const nlohmann::json j = parse_json(read_text_file(index.string(), 64u << 20, "shard index"), index.string());
    require_input(j.is_object() && j.contains("weight_map") && j.at("weight_map").is_object(),
                  index.string(), ": missing the \"weight_map\" object");
    std::set<std::string> names;
    for (const auto& [tensor, file] : j.at("weight_map").items()) {
      require_input(file.is_string(), index.string(), ": weight_map entry \"", tensor, "\" is not a file name");
      const auto f = file.get<std::string>();
      require_input(f.find('/') == std::string::npos && f != ".." && !f.empty(), index.string(),
                    ": weight_map entry \"", tensor, "\" names \"", f, "\", not a file in the directory");
      names.insert(f);
    }
    for (const auto& f : names) {
      const auto p = (fs::path(dir) / f).string();
      require_input(fs::is_regular_file(p, ec), index.string(), ": shard ", p, " (listed for some tensors) is missing");
      files.push_back(p);
    }
  } else if (fs::is_regular_file(fs::path(dir) / "model.safetensors", ec)) {
    files.push_back((fs::path(dir) / "model.safetensors").string());
  } else {
    for (const auto& e : fs::directory_iterator(dir, ec))
      if (e.path().extension() == ".safetensors") files.push_back(e.path().string());
    std::sort(files.begin(), files.end());
  }
  require_input(!files.empty(), dir, ": no *.safetensors weights found");
  return files;
}

}  // namespace

bool has_hf_weights(const std::string& path) {
  std::error_code ec;
  if (!fs::is_directory(path, ec)) return false;
  for (const auto& e : fs::directory_iterator(path, ec))
    if (e.path().extension() == ".safetensors") return true;
  return false;
}

void require_hf_weights_in_directory(const std::string& model) {
  std::error_code ec;
  if (!fs::is_directory(model, ec) || has_hf_weights(model)) return;
  std::string found;
  for (const auto& e : fs::directory_iterator(model, ec)) {
    const auto name = e.path().filename().string();
    if (name.ends_with(".bin") || name.ends_with(".pt") || name.ends_with(".pth") || name.ends_with(".gguf"))
      found = " (it has " + name + ": memo reads safetensors only)";
    else if (name == "model.safetensors.index.json" && found.empty())
      found = " (it has model.safetensors.index.json but none of the shards it lists)";
  }
  throw InputError(cat("--model ", model, ": the directory holds no *.safetensors weights", found,
                       "; memo does not start a fine-tuning run from random initialisation. To train this "
                       "shape from scratch, give ", (fs::path(model) / "config.json").string(), " instead"));
}

void load_hf_weights(const std::string& dir, const ModelConfig& config, ModelWeights& w) {
  auto slots = slots_for(config, w);
  std::map<std::string, std::string> seen;  // tensor -> file
  for (const auto& file : weight_files(dir)) {
    SafetensorsReader reader(file);
    for (const auto& t : reader.header().tensors) {
      const std::string where = cat(file, ": tensor \"", t.name, "\"");
      auto it = slots.find(t.name);
      if (it == slots.end()) {
        if (ignorable(t.name, config)) continue;
        throw InputError(cat(where, " is not part of a Llama model (memo supports no biases, "
                                    "no extra modules)"));
      }
      if (auto dup = seen.find(t.name); dup != seen.end())
        throw InputError(cat(where, " also appears in ", dup->second));
      seen[t.name] = file;
      Slot& s = it->second;
      require_input(t.dtype == "F32" || t.dtype == "BF16" || t.dtype == "F16" || t.dtype == "F64", where,
                    ": dtype ", t.dtype, " is not a floating-point weight dtype");
      require_input(t.shape == s.shape, where, ": shape ", shape_str(t.shape), " does not match the config's ",
                    shape_str(s.shape));
      auto src = tensor_from(reader, t).to(s.target->scalar_type());
      s.target->narrow(0, s.row, s.shape[0]).copy_(src);
      s.filled = true;
    }
  }
  for (const auto& [name, s] : slots)
    require_input(s.filled, dir, ": tensor \"", name, "\" is missing from the checkpoint");
}

std::vector<std::pair<std::string, at::Tensor>> to_hf_tensors(const ModelConfig& c, const ModelWeights& w,
                                                              at::ScalarType dtype) {
  ModelWeights ws = w;  // a shallow copy (tensor handles): slots_for takes addresses
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (auto& [name, s] : slots_for(c, ws))
    out.emplace_back(name, s.target->narrow(0, s.row, s.shape[0]).to(at::kCPU, dtype).contiguous());
  return out;
}

nlohmann::json hf_config_json(const ModelConfig& c, at::ScalarType dtype) {
  nlohmann::json j = {{"architectures", {"LlamaForCausalLM"}},
                      {"model_type", "llama"},
                      {"vocab_size", c.vocab_size},
                      {"hidden_size", c.hidden},
                      {"intermediate_size", c.ffn},
                      {"num_hidden_layers", c.layers},
                      {"num_attention_heads", c.heads},
                      {"num_key_value_heads", c.kv_heads},
                      {"head_dim", c.head_dim},
                      {"hidden_act", "silu"},
                      {"rms_norm_eps", c.rms_eps},
                      {"rope_theta", c.rope_theta},
                      {"max_position_embeddings", c.max_position},
                      {"tie_word_embeddings", c.tie_embeddings},
                      {"attention_bias", false},
                      {"mlp_bias", false},
                      {"torch_dtype", dtype == at::kBFloat16 ? "bfloat16"
                                      : dtype == at::kHalf   ? "float16"
                                                             : "float32"}};
  if (c.rope_scaling.factor != 0.0)
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", c.rope_scaling.factor},
                         {"low_freq_factor", c.rope_scaling.low_freq_factor},
                         {"high_freq_factor", c.rope_scaling.high_freq_factor},
                         {"original_max_position_embeddings", c.rope_scaling.original_max_position}};
  else
    j["rope_scaling"] = nullptr;
  return j;
}

void write_tensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors) {
  std::vector<at::Tensor> keep;
  std::vector<SafetensorsOutput> outs;
  for (const auto& [name, t] : tensors) {
    keep.push_back(t.to(at::kCPU).contiguous());
    const auto& k = keep.back();
    outs.push_back({name, safetensors_dtype_of(k.scalar_type()), k.sizes().vec(), k.data_ptr(), k.nbytes()});
  }
  write_safetensors(path, outs, {{"format", "pt"}});
}

std::vector<std::pair<std::string, at::Tensor>> read_tensors(const std::string& path) {
  SafetensorsReader reader(path);
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& t : reader.header().tensors) out.emplace_back(t.name, tensor_from(reader, t));
  return out;
}

void write_hf_checkpoint(const std::string& dir, const ModelConfig& config, const ModelWeights& w,
                         at::ScalarType dtype) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw_file_error("create directory", dir, ec.value());
  write_tensors((fs::path(dir) / "model.safetensors").string(), to_hf_tensors(config, w, dtype));
  write_file_atomic((fs::path(dir) / "config.json").string(), hf_config_json(config, dtype).dump(2) + "\n");
  fsync_directory(dir);
}

}  // namespace memo::model
