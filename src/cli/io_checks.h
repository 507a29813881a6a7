// What each subcommand reads, for check_outputs (core/files.h): outputs that
// name one of these files are refused before any work.
#pragma once

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/files.h"
#include "model/config.h"

namespace memo::cli {

// --model: nothing for a preset name; otherwise the config.json file or the
// checkpoint directory (all its files).
inline std::vector<NamedPath> model_inputs(const std::string& model) {
  const auto presets = model::preset_names();
  if (model.empty() || std::find(presets.begin(), presets.end(), model) != presets.end()) return {};
  return {{"--model", model}};
}

// --data: the token file, or a Megatron PREFIX's .bin and .idx.
inline std::vector<NamedPath> data_inputs(const std::string& data) {
  if (data.empty()) return {};
  return {{"--data", data}, {"--data", data + ".bin"}, {"--data", data + ".idx"}};
}

// Refuses an input that lies inside `dir`, a directory this run prunes
// (--out's checkpoints): "WHAT PATH is inside DIR, which ...".
inline void refuse_inputs_inside(const std::vector<NamedPath>& inputs, const std::string& dir,
                                 const std::string& why) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const auto root = fs::weakly_canonical(fs::absolute(dir, ec), ec);
  if (ec) return;
  for (const auto& in : inputs) {
    if (in.path.empty() || !fs::exists(in.path, ec)) continue;
    const auto p = fs::weakly_canonical(fs::absolute(in.path, ec), ec);
    if (ec) continue;
    auto [r, q] = std::mismatch(root.begin(), root.end(), p.begin(), p.end());
    if (r == root.end())
      throw InputError(cat(in.what, " ", in.path, " is an input inside ", dir, ", ", why,
                           "; copy it elsewhere or choose another --out"));
  }
}

}  // namespace memo::cli
