// Checkpoint save (temporary directory, fsync, rename, keep the newest K) and load.
#include "train/checkpoint.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <cmath>
#include <map>
#include <set>
#include <sstream>
#include <vector>

#include "core/error.h"
#include "core/files.h"
#include "core/json.h"
#include "model/hf_checkpoint.h"
#include "model/safetensors.h"
#include "train/option_table.h"

namespace memo::train {

namespace fs = std::filesystem;

namespace {

constexpr const char* kPrefix = "step-";

std::string step_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%s%08lld", kPrefix, static_cast<long long>(step));
  return buf;
}

// The step a checkpoint directory's name carries ("step-" and decimal
// digits only); -1 for any other name (a temporary, or a stranger's).
int64_t step_of_name(const std::string& name) {
  if (!name.starts_with(kPrefix)) return -1;
  const char* first = name.data() + std::strlen(kPrefix);
  const char* last = name.data() + name.size();
  int64_t step = -1;
  const auto [end, ec] = std::from_chars(first, last, step);
  return ec == std::errc() && end == last && first != last && *first != '-' && *first != '+' ? step : -1;
}

// Complete checkpoints under root/checkpoints, oldest first: ordered by
// their step, not their names (past step 99,999,999 the zero-padded names
// gain a digit and would sort before the older ones).
std::vector<fs::path> list_checkpoints(const fs::path& root) {
  std::vector<std::pair<int64_t, fs::path>> found;
  std::error_code ec;
  const auto dir = root / "checkpoints";
  if (!fs::is_directory(dir, ec)) return {};
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const auto name = e.path().filename().string();
    const int64_t step = step_of_name(name);
    std::error_code ec2;
    if (step >= 0 && e.is_directory(ec2) && fs::exists(e.path() / "trainer_state.json", ec2))
      found.emplace_back(step, e.path());
  }
  std::sort(found.begin(), found.end());
  std::vector<fs::path> out;
  for (auto& [step, path] : found) out.push_back(std::move(path));
  return out;
}

std::string read_text(const fs::path& p) {
  return read_text_file(p.string(), 64u << 20, "checkpoint");
}

}  // namespace

namespace {

// Writes the checkpoint's files into `tmp` and fsyncs them.
void write_checkpoint_files(const fs::path& tmp, int64_t step, CheckpointState& s, const DataSource& data,
                            const nlohmann::json& info, double loss) {
  model::write_hf_checkpoint(tmp.string(), s.config, s.master, s.master_dtype);
  std::vector<std::pair<std::string, at::Tensor>> state;
  const auto names = s.master.named();
  if (s.m.size() != names.size() || s.v.size() != names.size())
    throw Error("checkpoint: optimizer state does not match the model's parameters");
  for (size_t i = 0; i < names.size(); ++i) {
    state.emplace_back("m." + names[i].first, s.m[i]);
    state.emplace_back("v." + names[i].first, s.v[i]);
  }
  model::write_tensors((tmp / "optimizer.safetensors").string(), state);
  nlohmann::json st;
  st["step"] = step;
  st["optimizer_steps"] = s.optimizer_steps;
  auto ds = nlohmann::json::array();
  for (auto x : data.state()) ds.push_back(std::to_string(x));  // exact 64-bit values as strings
  st["data_state"] = ds;
  st["data_fingerprint"] = data.fingerprint();
  st["loss"] = std::isfinite(loss) ? nlohmann::json(loss) : nlohmann::json(nullptr);  // JSON has no NaN
  st["info"] = info;
  write_file_atomic((tmp / "trainer_state.json").string(), st.dump(2) + "\n");
  model::fsync_directory(tmp.string());
}

// The loss trainer_state.json records, when it is a finite number.
bool recorded_loss_finite(const fs::path& dir) {
  try {
    const auto st = nlohmann::json::parse(read_text(dir / "trainer_state.json"));
    return st.is_object() && st.contains("loss") && st.at("loss").is_number() &&
           std::isfinite(st.at("loss").get<double>());
  } catch (const std::exception&) {
    return false;
  }
}

// The first tensor of `tensors` holding a NaN or an infinity, or "".
std::string first_non_finite(const std::vector<std::pair<std::string, at::Tensor*>>& tensors) {
  for (const auto& [name, t] : tensors)
    if (!at::isfinite(*t).all().item<bool>()) return name;
  return {};
}

// An unsigned decimal integer, strictly (std::stoull accepts "-1" and " 7x").
uint64_t parse_u64(const nlohmann::json& v, const std::string& where) {
  require_input(v.is_string(), where, " must be a string of decimal digits");
  const auto s = v.get<std::string>();
  require_input(!s.empty() && s.size() <= 20 && s.find_first_not_of("0123456789") == std::string::npos, where,
                " must be a string of decimal digits, got \"", s, "\"");
  uint64_t x = 0;
  for (char ch : s) {
    const uint64_t d = static_cast<uint64_t>(ch - '0');
    require_input(x <= (UINT64_MAX - d) / 10, where, " is beyond 64 bits: \"", s, "\"");
    x = x * 10 + d;
  }
  return x;
}

// The options a resumed run must share with the one that wrote the
// checkpoint (they change the math), as JSON pointers into the resolved
// configuration and the flags that set them: the option table's rows
// marked resume (train/option_table.cpp).
const std::vector<std::pair<std::string, std::string>>& contract() {
  static const std::vector<std::pair<std::string, std::string>> fields = resume_contract();
  return fields;
}

void check_contract(const std::string& state_path, const nlohmann::json& saved, const nlohmann::json& run) {
  require_input(saved.is_object(), state_path, ": \"info\" (the options of the run that wrote it) is missing");
  for (const auto& [pointer, flag] : contract()) {
    const nlohmann::json::json_pointer p(pointer);
    require_input(saved.contains(p), state_path, ": info", pointer, " is missing");
    if (saved.at(p) != run.at(p))
      throw InputError(cat(state_path, ": the checkpoint was written with ", flag, " ", saved.at(p).dump(),
                           ", this run has ", run.at(p).dump(),
                           ". A resumed run keeps the options that change the math (model shape, --seq-len, "
                           "--batch, --grad-accum, --lr, --warmup, --min-lr-ratio, AdamW settings, --clip, --seed, "
                           "--dtype, the data); the policy, alpha, --steps, the device and the outputs may change"));
  }
}

// The checkpoint's config.json against the model being resumed: every field
// that changes the math (shape, norms, RoPE).
void check_model(const fs::path& dir, const model::ModelConfig& config) {
  const auto path = (dir / "config.json").string();
  const auto saved = model::hf_config_json(model::parse_hf_config(read_text(path), path), at::kFloat);
  const auto now = model::hf_config_json(config, at::kFloat);
  for (const auto& [key, value] : now.items()) {
    if (key == "max_position_embeddings") continue;  // informational
    if (saved.at(key) != value)
      throw InputError(cat(path, ": the checkpoint's model has ", key, " = ", saved.at(key).dump(),
                           ", the model given (--model, --layers) has ", value.dump(),
                           "; resume with the model the checkpoint was trained with"));
  }
}

// optimizer.safetensors: exactly an "m." and a "v." tensor per parameter, of
// its dtype and shape, finite, second moments >= 0; copied in place.
void load_moments(const std::string& path, CheckpointState& s) {
  model::SafetensorsReader reader(path);
  const auto names = s.master.named();
  auto& m = s.m;
  auto& v = s.v;
  std::map<std::string, at::Tensor*> slots;
  for (size_t i = 0; i < names.size(); ++i) {
    slots["m." + names[i].first] = &m[i];
    slots["v." + names[i].first] = &v[i];
  }
  std::set<std::string> seen;
  for (const auto& t : reader.header().tensors) {
    const std::string where = cat(path, ": tensor \"", t.name, "\"");
    auto it = slots.find(t.name);
    require_input(it != slots.end(), where, " is not a moment of this model's parameters");
    at::Tensor& dst = *it->second;
    const auto want = model::safetensors_dtype_of(dst.scalar_type());
    require_input(t.dtype == want, where, " has dtype ", t.dtype, ", expected ", want);
    require_input(t.shape == dst.sizes().vec(), where, " has shape ", model::shape_str(t.shape), ", expected ",
                  model::shape_str(dst.sizes().vec()));
    auto src = at::empty(t.shape, at::TensorOptions().dtype(dst.scalar_type()));  // [the parameter's shape]
    if (t.end > t.begin) std::memcpy(src.data_ptr(), reader.bytes(t), t.end - t.begin);  // the map may be unaligned
    require_input(at::isfinite(src).all().item<bool>(), where, " holds NaN or infinite values");
    if (t.name.starts_with("v."))
      require_input(src.ge(0).all().item<bool>(), where, " holds negative second moments");
    dst.copy_(src);
    seen.insert(t.name);
  }
  for (const auto& [name, t] : slots) require_input(seen.count(name), path, ": tensor \"", name, "\" is missing");
}

}  // namespace

std::string save_checkpoint(const std::string& out_dir, int64_t step, model::LlamaModel& model,
                            AdamW& optimizer, const DataSource& data, const nlohmann::json& info,
                            int64_t keep, double loss) {
  CheckpointState state{model.config(), model.options().master_dtype, model.master(), optimizer.first_moments(),
                        optimizer.second_moments(), optimizer.steps_taken()};
  return save_checkpoint_state(out_dir, step, state, data, info, keep, loss);
}

std::string save_checkpoint_state(const std::string& out_dir, int64_t step, CheckpointState& s,
                                  const DataSource& data, const nlohmann::json& info, int64_t keep, double loss) {
  // The diverged state is never saved: the previous checkpoints stay as they are.
  const auto names = s.master.named();
  auto& m = s.m;
  auto& v = s.v;
  require_input(m.size() == names.size() && v.size() == names.size(),
                "checkpoint: optimizer state does not match the model's parameters");
  std::vector<std::pair<std::string, at::Tensor*>> all_state = names;
  for (size_t i = 0; i < names.size(); ++i) {
    all_state.emplace_back("AdamW m of " + names[i].first, &m[i]);
    all_state.emplace_back("AdamW v of " + names[i].first, &v[i]);
  }
  if (const auto bad = first_non_finite(all_state); !bad.empty())
    throw Error(cat("step ", step, ": ", bad, " is not finite after the update; not saving a checkpoint of the "
                    "diverged state (the previous checkpoints stay; try a lower --lr)"));

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
    write_checkpoint_files(tmp, step, s, data, info, loss);
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
    // The newest checkpoint whose loss was finite survives any rotation.
    fs::path last_good;
    for (auto it = all.rbegin(); it != all.rend() && last_good.empty(); ++it)
      if (recorded_loss_finite(*it)) last_good = *it;
    for (size_t i = 0; i + static_cast<size_t>(keep) < all.size(); ++i)
      if (all[i] != last_good) fs::remove_all(all[i], ec);
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
                        DataSource& data, const nlohmann::json& run) {
  CheckpointState state{model.config(), model.options().master_dtype, model.master(), optimizer.first_moments(),
                        optimizer.second_moments(), 0};
  const int64_t step = load_checkpoint_state(dir, state, data, run);
  optimizer.set_steps_taken(state.optimizer_steps);
  model.refresh_compute();
  return step;
}

int64_t load_checkpoint_state(const std::string& dir, CheckpointState& s, DataSource& data,
                              const nlohmann::json& run) {
  const fs::path d(dir);
  const auto state_path = (d / "trainer_state.json").string();
  const nlohmann::json st = parse_json(read_text(state_path), state_path);
  require_input(st.is_object(), state_path, ": expected a JSON object");
  auto integer = [&](const char* key) {
    require_input(st.contains(key) && st.at(key).is_number_integer(), state_path, ": \"", key,
                  "\" must be an integer");
    return st.at(key).get<int64_t>();
  };
  const int64_t step = integer("step");
  const int64_t opt_steps = integer("optimizer_steps");
  require_input(step >= 1, state_path, ": step ", step, " is not a step count (>= 1)");
  require_input(opt_steps == step, state_path, ": optimizer_steps ", opt_steps, " differs from step ", step,
                " (one AdamW step per training step)");
  require_input(st.contains("data_state") && st.at("data_state").is_array(), state_path,
                ": \"data_state\" must be an array");
  std::vector<uint64_t> ds;
  for (size_t i = 0; i < st.at("data_state").size(); ++i)
    ds.push_back(parse_u64(st.at("data_state")[i], cat(state_path, ": data_state[", i, "]")));
  if (st.contains("loss"))
    require_input(st.at("loss").is_number() || st.at("loss").is_null(), state_path, ": \"loss\" must be a number");

  // The run must be the one that wrote the checkpoint, up to what does not change the math.
  check_contract(state_path, st.value("info", nlohmann::json()), run);
  check_model(d, s.config);
  if (st.contains("data_fingerprint")) {
    require_input(st.at("data_fingerprint").is_string(), state_path, ": \"data_fingerprint\" must be a string");
    require_input(st.at("data_fingerprint").get<std::string>() == data.fingerprint(), state_path,
                  ": the checkpoint was trained on other data (", st.at("data_fingerprint").get<std::string>(),
                  "); this run reads ", data.fingerprint());
  } else {  // written before fingerprints: the description, path included
    require_input(st.at("info").value("data", std::string()) == data.describe(), state_path,
                  ": the checkpoint was trained on other data (", st.at("info").value("data", std::string()),
                  "); this run reads ", data.describe());
  }

  model::load_hf_weights(dir, s.config, s.master);
  if (const auto bad = first_non_finite(s.master.named()); !bad.empty())
    throw InputError(cat(dir, "/model.safetensors: weight ", bad, " holds NaN or infinite values"));
  load_moments((d / "optimizer.safetensors").string(), s);
  s.optimizer_steps = opt_steps;
  try {
    data.restore(ds);
  } catch (const InputError& e) {
    throw InputError(cat(state_path, ": ", e.what()));
  }
  return step;
}

}  // namespace memo::train
