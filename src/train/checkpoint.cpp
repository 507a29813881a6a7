// Checkpoint save (temporary directory, fsync, rename, keep the newest K) and load.
#include "train/checkpoint.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <vector>

#include "core/error.h"
#include "core/files.h"
#include "core/json.h"
#include "model/hf_checkpoint.h"

namespace memo::train {

namespace fs = std::filesystem;

namespace {

constexpr const char* kPrefix = "step-";

std::string step_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%s%08lld", kPrefix, static_cast<long long>(step));
  return buf;
}

// Complete checkpoints under root/checkpoints, oldest first.
std::vector<fs::path> list_checkpoints(const fs::path& root) {
  std::vector<fs::path> out;
  std::error_code ec;
  const auto dir = root / "checkpoints";
  if (!fs::is_directory(dir, ec)) return out;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const auto name = e.path().filename().string();
    std::error_code ec2;
    if (e.is_directory(ec2) && name.starts_with(kPrefix) && name.find(".tmp") == std::string::npos &&
        fs::exists(e.path() / "trainer_state.json", ec2))
      out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string read_text(const fs::path& p) {
  return read_text_file(p.string(), 64u << 20, "checkpoint");
}

}  // namespace

namespace {

// Writes the checkpoint's files into `tmp` and fsyncs them.
void write_checkpoint_files(const fs::path& tmp, int64_t step, model::LlamaModel& model, AdamW& optimizer,
                            const DataSource& data, const nlohmann::json& info) {
  model::write_hf_checkpoint(tmp.string(), model.config(), model.master(), model.options().master_dtype);
  std::vector<std::pair<std::string, at::Tensor>> state;
  const auto names = model.master().named();
  auto& m = optimizer.first_moments();
  auto& v = optimizer.second_moments();
  if (m.size() != names.size() || v.size() != names.size())
    throw Error("checkpoint: optimizer state does not match the model's parameters");
  for (size_t i = 0; i < names.size(); ++i) {
    state.emplace_back("m." + names[i].first, m[i]);
    state.emplace_back("v." + names[i].first, v[i]);
  }
  model::write_tensors((tmp / "optimizer.safetensors").string(), state);
  nlohmann::json st;
  st["step"] = step;
  st["optimizer_steps"] = optimizer.steps_taken();
  auto ds = nlohmann::json::array();
  for (auto x : data.state()) ds.push_back(std::to_string(x));  // exact 64-bit values as strings
  st["data_state"] = ds;
  st["info"] = info;
  write_file_atomic((tmp / "trainer_state.json").string(), st.dump(2) + "\n");
  model::fsync_directory(tmp.string());
}

}  // namespace

std::string save_checkpoint(const std::string& out_dir, int64_t step, model::LlamaModel& model,
                            AdamW& optimizer, const DataSource& data, const nlohmann::json& info,
                            int64_t keep) {
  const fs::path root = fs::path(out_dir) / "checkpoints";
  const fs::path final_dir = root / step_name(step);
  const fs::path tmp = root / (step_name(step) + ".tmp");
  std::error_code ec;
  std::vector<fs::path> leftovers;  // of interrupted saves
  if (fs::is_directory(root, ec))
    for (const auto& e : fs::directory_iterator(root, ec))
      if (e.path().filename().string().ends_with(".tmp")) leftovers.push_back(e.path());
  for (const auto& p : leftovers) fs::remove_all(p, ec);

  // Everything is written into `tmp`; on any failure (a full disk: Error,
  // exit 1) the partial temporary is removed and the checkpoints already
  // there are untouched.
  try {
    fs::create_directories(tmp, ec);
    if (ec) throw_file_error("create checkpoint directory", tmp.string(), ec.value());
    write_checkpoint_files(tmp, step, model, optimizer, data, info);
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }

  fs::remove_all(final_dir, ec);  // the same step saved again (a resumed run)
  fs::rename(tmp, final_dir, ec);
  if (ec) {
    const int err = ec.value();
    fs::remove_all(tmp, ec);
    throw_file_error(cat("rename ", tmp.string(), " to"), final_dir.string(), err);
  }
  model::fsync_directory(root.string());

  if (keep > 0) {
    auto all = list_checkpoints(out_dir);
    for (size_t i = 0; i + static_cast<size_t>(keep) < all.size(); ++i) fs::remove_all(all[i], ec);
  }
  return final_dir.string();
}

std::string find_checkpoint(const std::string& path) {
  std::error_code ec;
  const bool dir = fs::is_directory(path, ec);
  require_input(!ec, "--resume ", path, ": ", ec.message());
  require_input(dir, "--resume ", path, ": not a directory");
  if (fs::exists(fs::path(path) / "trainer_state.json", ec)) return path;
  auto all = list_checkpoints(path);
  require_input(!all.empty(), "--resume ", path, ": holds no checkpoint (no trainer_state.json, no "
                "checkpoints/step-* directory)");
  return all.back().string();
}

int64_t load_checkpoint(const std::string& dir, model::LlamaModel& model, AdamW& optimizer,
                        DataSource& data) {
  const fs::path d(dir);
  const auto state_path = (d / "trainer_state.json").string();
  const nlohmann::json st = parse_json(read_text(state_path), state_path);
  int64_t step = 0, opt_steps = 0;
  std::vector<uint64_t> ds;
  try {
    step = st.at("step").get<int64_t>();
    opt_steps = st.at("optimizer_steps").get<int64_t>();
    for (const auto& x : st.at("data_state")) ds.push_back(std::stoull(x.get<std::string>()));
  } catch (const std::exception& e) {
    throw InputError(cat(state_path, ": missing or malformed step, optimizer_steps or data_state (", e.what(), ")"));
  }
  require_input(step >= 0 && opt_steps >= 0, state_path, ": negative step");

  model::load_hf_weights(dir, model.config(), model.master());
  const auto opt_path = (d / "optimizer.safetensors").string();
  std::map<std::string, at::Tensor> saved;
  for (auto& [name, t] : model::read_tensors(opt_path)) saved[name] = t;
  const auto names = model.master().named();
  auto& m = optimizer.first_moments();
  auto& v = optimizer.second_moments();
  for (size_t i = 0; i < names.size(); ++i) {
    for (auto [prefix, dst] : {std::pair{"m.", &m[i]}, std::pair{"v.", &v[i]}}) {
      const std::string key = prefix + names[i].first;
      auto it = saved.find(key);
      require_input(it != saved.end(), opt_path, ": tensor \"", key, "\" is missing");
      require_input(it->second.sizes() == dst->sizes(), opt_path, ": tensor \"", key, "\" has shape ",
                    it->second.sizes(), ", expected ", dst->sizes());
      dst->copy_(it->second);
    }
  }
  optimizer.set_steps_taken(opt_steps);
  data.restore(ds);
  model.refresh_compute();
  return step;
}

}  // namespace memo::train
