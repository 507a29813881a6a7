// TrainOptions' validate() and apply_toml_file (declared in options.h), both
// generated from the option table (train/option_table.h). Kept apart from
// options.h's struct, which the table itself includes, so that no two files
// include each other.
#include "train/options.h"

#define TOML_HEADER_ONLY 1
#include <toml++/toml.h>

#include <cmath>
#include <type_traits>

#include "core/checked.h"
#include "core/error.h"
#include "core/files.h"
#include "train/chunking.h"
#include "train/option_table.h"

namespace memo::train {

void TrainOptions::validate() const {
  // Each option's own check (the table's order), then what spans options.
  for (const auto& spec : option_table())
    if (spec.check) spec.check(*this);
  require_input(!kv_on_host || chunk_tokens != "0",
                "--kv-on-host streams K and V of chunked layers: it needs --chunk-tokens (C or auto), got "
                "--chunk-tokens 0 (whole layers)");
  require_input(!kv_on_host || sp == 1, "--kv-on-host is not built for sequence parallelism: it needs --sp 1, got --sp ",
                sp);
  require_input(checkpoint_every == 0 || !out.empty(), "checkpoint_every needs --out (checkpoints go to OUT/checkpoints)");
  // Sizes from flags in checked int64: 2^63 tokens or 2^32 x 2^32 sequences
  // are an InputError here, never a wrapped size reaching an allocator.
  (void)checked_add(seq_len, 1, "seq_len + 1");
  const int64_t tokens = checked_product({batch, seq_len, grad_accum}, "tokens per step (batch x seq_len x grad_accum)");
  (void)checked_mul(tokens, steps, "tokens of the run (tokens per step x steps)");
}

namespace {

std::string where_of(const std::string& path, const std::string& key, const toml::node& n) {
  return cat(path, ":", n.source().begin.line, ": key \"", key, "\"");
}

// Sets the row's member from a TOML value of the member's type.
void set_from_toml(const OptionSpec& spec, const toml::node& n, TrainOptions& o, const std::string& where) {
  std::visit(
      [&](auto member) {
        using T = std::decay_t<decltype(o.*member)>;
        if constexpr (std::is_same_v<T, int64_t>) {
          auto v = n.value<int64_t>();
          require_input(n.is_integer() && v.has_value(), where, " must be an integer, got ", n.type());
          o.*member = *v;
        } else if constexpr (std::is_same_v<T, uint64_t>) {
          require_input(n.is_integer(), where, " must be an integer, got ", n.type());
          auto v = *n.value<int64_t>();
          require_input(v >= 0, where, " must be >= 0, got ", v);
          o.*member = static_cast<uint64_t>(v);
        } else if constexpr (std::is_same_v<T, double>) {
          require_input(n.is_number(), where, " must be a number, got ", n.type());
          o.*member = *n.value<double>();
        } else if constexpr (std::is_same_v<T, bool>) {
          require_input(n.is_boolean(), where, " must be true or false, got ", n.type());
          o.*member = *n.value<bool>();
        } else {
          require_input(n.is_string(), where, " must be a string, got ", n.type());
          o.*member = *n.value<std::string>();
        }
      },
      spec.field);
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
    const OptionSpec* spec = find_option(k);
    if (!spec) {
      std::string known;
      for (const auto& s : option_table()) known += (known.empty() ? "" : ", ") + s.key;
      throw InputError(cat(path, ":", node.source().begin.line, ": unknown key \"", k,
                           "\" (known keys: ", known, ")"));
    }
    set_from_toml(*spec, node, options, where_of(path, k, node));
  }
}

}  // namespace memo::train
