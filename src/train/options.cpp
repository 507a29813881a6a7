// TrainOptions: validation and TOML loading.
#include "train/options.h"

#define TOML_HEADER_ONLY 1
#include <toml++/toml.h>

#include <cmath>
#include <functional>
#include <map>
#include <sstream>

#include "core/checked.h"
#include "core/error.h"
#include "core/files.h"

namespace memo::train {

void TrainOptions::validate() const {
  auto positive = [](int64_t v, const char* name) {
    require_input(v > 0, name, " must be a positive integer, got ", v);
  };
  // Every floating-point option must be a finite number (TOML allows inf and
  // nan; the command line refuses them before this).
  auto finite = [](double v, const char* name) {
    require_input(std::isfinite(v), name, " must be a finite number, got ", v);
  };
  positive(seq_len, "seq_len");
  positive(batch, "batch");
  positive(grad_accum, "grad_accum");
  positive(steps, "steps");
  require_input(layers >= 0, "layers must be >= 0 (0 keeps the model's), got ", layers);
  finite(lr, "lr");
  require_input(lr > 0, "lr must be > 0, got ", lr);
  require_input(min_lr_ratio >= 0 && min_lr_ratio <= 1, "min_lr_ratio must be in [0, 1], got ", min_lr_ratio);
  require_input(warmup >= 0, "warmup must be >= 0, got ", warmup);
  finite(weight_decay, "weight_decay");
  require_input(weight_decay >= 0, "weight_decay must be >= 0, got ", weight_decay);
  require_input(beta1 >= 0 && beta1 < 1, "beta1 must be in [0, 1), got ", beta1);
  require_input(beta2 >= 0 && beta2 < 1, "beta2 must be in [0, 1), got ", beta2);
  finite(clip, "clip");
  require_input(clip >= 0, "clip must be >= 0 (0 disables clipping), got ", clip);
  finite(alpha, "alpha");
  require_input(alpha < 0 || alpha <= 1, "alpha must be in [0, 1] (or negative for automatic), got ", alpha);
  finite(host_memory_gib, "host_memory_gib");
  require_input(host_memory_gib >= 0, "host_memory_gib must be >= 0, got ", host_memory_gib);
  require_input(loss_chunk >= 0, "loss_chunk must be >= 0, got ", loss_chunk);
  require_input(log_every >= 0, "log_every must be >= 0, got ", log_every);
  finite(peak_tflops, "peak_tflops");
  require_input(peak_tflops >= 0, "peak_tflops must be >= 0, got ", peak_tflops);
  require_input(device == "auto" || device == "cpu" || device == "cuda", "device \"", device,
                "\" is unknown (expected auto, cpu or cuda)");
  require_input(dtype == "auto" || dtype == "float32" || dtype == "bfloat16", "dtype \"", dtype,
                "\" is unknown (expected auto, float32 or bfloat16)");
  require_input(attention == "auto" || attention == "cudnn" || attention == "flash" ||
                    attention == "efficient",
                "attention \"", attention, "\" is unknown (expected auto, cudnn, flash or efficient)");
  require_input(data_dtype == "auto" || data_dtype == "text" || data_dtype == "uint16" ||
                    data_dtype == "uint32" || data_dtype == "megatron",
                "data_dtype \"", data_dtype, "\" is unknown (expected auto, text, uint16, uint32 or megatron)");
  require_input(checkpoint_every >= 0, "checkpoint_every must be >= 0, got ", checkpoint_every);
  require_input(keep_checkpoints >= 0, "keep_checkpoints must be >= 0, got ", keep_checkpoints);
  require_input(checkpoint_every == 0 || !out.empty(), "checkpoint_every needs --out (checkpoints go to OUT/checkpoints)");
  require_input(model.size() > 0, "model must not be empty");
  positive(sp, "sp");
  finite(dist_timeout, "dist_timeout");
  require_input(dist_timeout > 0 && dist_timeout <= 1e7, "dist_timeout must be in (0, 1e7] seconds, got ", dist_timeout);
  // Sizes from flags in checked int64: 2^63 tokens or 2^32 x 2^32 sequences
  // are an InputError here, never a wrapped size reaching an allocator.
  (void)checked_add(seq_len, 1, "seq_len + 1");
  const int64_t tokens = checked_product({batch, seq_len, grad_accum}, "tokens per step (batch x seq_len x grad_accum)");
  (void)checked_mul(tokens, steps, "tokens of the run (tokens per step x steps)");
}

namespace {

using Setter = std::function<void(const toml::node&, TrainOptions&, const std::string& where)>;

std::string where_of(const std::string& path, const std::string& key, const toml::node& n) {
  return cat(path, ":", n.source().begin.line, ": key \"", key, "\"");
}

Setter int_key(int64_t TrainOptions::*field) {
  return [field](const toml::node& n, TrainOptions& o, const std::string& where) {
    auto v = n.value<int64_t>();
    require_input(n.is_integer() && v.has_value(), where, " must be an integer, got ", n.type());
    o.*field = *v;
  };
}

Setter seed_key(uint64_t TrainOptions::*field) {
  return [field](const toml::node& n, TrainOptions& o, const std::string& where) {
    require_input(n.is_integer(), where, " must be an integer, got ", n.type());
    auto v = *n.value<int64_t>();
    require_input(v >= 0, where, " must be >= 0, got ", v);
    o.*field = static_cast<uint64_t>(v);
  };
}

Setter float_key(double TrainOptions::*field) {
  return [field](const toml::node& n, TrainOptions& o, const std::string& where) {
    require_input(n.is_number(), where, " must be a number, got ", n.type());
    o.*field = *n.value<double>();
  };
}

Setter bool_key(bool TrainOptions::*field) {
  return [field](const toml::node& n, TrainOptions& o, const std::string& where) {
    require_input(n.is_boolean(), where, " must be true or false, got ", n.type());
    o.*field = *n.value<bool>();
  };
}

Setter string_key(std::string TrainOptions::*field) {
  return [field](const toml::node& n, TrainOptions& o, const std::string& where) {
    require_input(n.is_string(), where, " must be a string, got ", n.type());
    o.*field = *n.value<std::string>();
  };
}

const std::vector<std::pair<std::string, Setter>>& setters() {
  static const std::vector<std::pair<std::string, Setter>> table = {
      {"model", string_key(&TrainOptions::model)},
      {"layers", int_key(&TrainOptions::layers)},
      {"seq_len", int_key(&TrainOptions::seq_len)},
      {"batch", int_key(&TrainOptions::batch)},
      {"grad_accum", int_key(&TrainOptions::grad_accum)},
      {"steps", int_key(&TrainOptions::steps)},
      {"policy", string_key(&TrainOptions::policy)},
      {"alpha", float_key(&TrainOptions::alpha)},
      {"host_memory_gib", float_key(&TrainOptions::host_memory_gib)},
      {"lr", float_key(&TrainOptions::lr)},
      {"min_lr_ratio", float_key(&TrainOptions::min_lr_ratio)},
      {"warmup", int_key(&TrainOptions::warmup)},
      {"weight_decay", float_key(&TrainOptions::weight_decay)},
      {"beta1", float_key(&TrainOptions::beta1)},
      {"beta2", float_key(&TrainOptions::beta2)},
      {"clip", float_key(&TrainOptions::clip)},
      {"data", string_key(&TrainOptions::data)},
      {"data_dtype", string_key(&TrainOptions::data_dtype)},
      {"resume", string_key(&TrainOptions::resume)},
      {"checkpoint_every", int_key(&TrainOptions::checkpoint_every)},
      {"keep_checkpoints", int_key(&TrainOptions::keep_checkpoints)},
      {"device", string_key(&TrainOptions::device)},
      {"dtype", string_key(&TrainOptions::dtype)},
      {"attention", string_key(&TrainOptions::attention)},
      {"loss_chunk", int_key(&TrainOptions::loss_chunk)},
      {"seed", seed_key(&TrainOptions::seed)},
      {"peak_tflops", float_key(&TrainOptions::peak_tflops)},
      {"out", string_key(&TrainOptions::out)},
      {"json", string_key(&TrainOptions::json)},
      {"trace", string_key(&TrainOptions::trace)},
      {"planned_memory", bool_key(&TrainOptions::planned_memory)},
      {"plan_cache", string_key(&TrainOptions::plan_cache)},
      {"memory_timeline", string_key(&TrainOptions::memory_timeline)},
      {"export_dsa", string_key(&TrainOptions::export_dsa)},
      {"log_every", int_key(&TrainOptions::log_every)},
      {"memory_check", bool_key(&TrainOptions::memory_check)},
      {"sp", int_key(&TrainOptions::sp)},
      {"dist_timeout", float_key(&TrainOptions::dist_timeout)},
  };
  return table;
}

}  // namespace

void apply_toml_file(const std::string& path, TrainOptions& options) {
  toml::table table;
  // Read with a size limit (a device or FIFO is read as such, /dev/zero is
  // refused instead of filling memory), then parsed with the path for messages.
  const std::string text = read_text_file(path, 16u << 20, "config file");
  try {
    table = toml::parse(text, path);
  } catch (const toml::parse_error& e) {
    if (e.source().begin.line == 0)  // no position: the file could not be read
      throw InputError(cat("config file ", path, ": ", e.description()));
    throw InputError(cat(path, ":", e.source().begin.line, ":", e.source().begin.column, ": ",
                         e.description()));
  }
  for (const auto& [key, node] : table) {
    const std::string k(key.str());
    const auto& table_setters = setters();
    auto it = std::find_if(table_setters.begin(), table_setters.end(),
                           [&](const auto& p) { return p.first == k; });
    if (it == table_setters.end()) {
      std::string known;
      for (const auto& [name, s] : table_setters) known += (known.empty() ? "" : ", ") + name;
      throw InputError(cat(path, ":", node.source().begin.line, ": unknown key \"", k,
                           "\" (known keys: ", known, ")"));
    }
    it->second(node, options, where_of(path, k, node));
  }
}

}  // namespace memo::train
