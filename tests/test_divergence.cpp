// Divergence never costs the last good checkpoint: a step whose loss or
// gradient norm is not finite stops before its update and before any save; a
// state whose weights or AdamW moments are not finite is never saved (the
// save throws and the directory is untouched); rotation never removes the
// newest checkpoint whose loss was finite.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <ATen/ATen.h>

#include <filesystem>
#include <fstream>
#include <limits>

#include "cli_runner.h"
#include "core/error.h"
#include "model/hf_checkpoint.h"
#include "model/llama.h"
#include "reference.h"
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/optimizer.h"

namespace memo {
namespace {

namespace fs = std::filesystem;

std::vector<std::string> checkpoints_in(const fs::path& out) {
  std::vector<std::string> names;
  if (!fs::is_directory(out / "checkpoints")) return names;
  for (const auto& e : fs::directory_iterator(out / "checkpoints")) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

struct State {
  model::LlamaModel model;
  std::unique_ptr<train::AdamW> optimizer;
  std::unique_ptr<train::DataSource> data;
};

State make_state() {
  State s{model::LlamaModel(testing::small_config(4, 2, 8, 32, 2, 64), {}), nullptr, nullptr};
  std::vector<at::Tensor*> params, grads;
  for (auto& [n, t] : s.model.master().named()) params.push_back(t);
  for (auto& [n, t] : s.model.grads().named()) grads.push_back(t);
  s.optimizer = std::make_unique<train::AdamW>(params, grads, train::AdamWOptions{});
  s.data = train::make_synthetic_source({64, 0, 1}, 16);
  return s;
}

TEST(Divergence, RotationNeverRemovesTheNewestCheckpointWithAFiniteLoss) {
  auto dir = testing::scratch_dir("rotation_finite");
  auto s = make_state();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  train::save_checkpoint(dir.string(), 1, s.model, *s.optimizer, *s.data, {}, 1, 2.5);
  train::save_checkpoint(dir.string(), 2, s.model, *s.optimizer, *s.data, {}, 1, nan);
  train::save_checkpoint(dir.string(), 3, s.model, *s.optimizer, *s.data, {}, 1, nan);
  // keep 1 keeps step 3, and step 1, the newest whose loss was finite.
  EXPECT_EQ(checkpoints_in(dir), (std::vector<std::string>{"step-00000001", "step-00000003"}));
  train::save_checkpoint(dir.string(), 4, s.model, *s.optimizer, *s.data, {}, 1, 2.0);
  EXPECT_EQ(checkpoints_in(dir), (std::vector<std::string>{"step-00000004"}));
  std::ifstream in(dir / "checkpoints/step-00000004/trainer_state.json");
  EXPECT_EQ(nlohmann::json::parse(in).at("loss").get<double>(), 2.0);
  fs::remove_all(dir);
}

TEST(Divergence, NonFiniteWeightsOrMomentsAreNeverSavedAndTheLastCheckpointStays) {
  auto dir = testing::scratch_dir("save_nan");
  auto s = make_state();
  train::save_checkpoint(dir.string(), 1, s.model, *s.optimizer, *s.data, {}, 1, 2.5);
  const auto before = fs::file_size(dir / "checkpoints/step-00000001/model.safetensors");

  s.model.master().layers[1].wo.view(-1)[5] = std::numeric_limits<float>::infinity();
  EXPECT_THROW(train::save_checkpoint(dir.string(), 2, s.model, *s.optimizer, *s.data, {}, 1, 2.4), Error);
  EXPECT_EQ(checkpoints_in(dir), (std::vector<std::string>{"step-00000001"}));
  EXPECT_EQ(fs::file_size(dir / "checkpoints/step-00000001/model.safetensors"), before);

  s.model.master().layers[1].wo.view(-1)[5] = 0.0;
  s.optimizer->second_moments()[0].view(-1)[0] = std::numeric_limits<float>::quiet_NaN();
  try {
    train::save_checkpoint(dir.string(), 2, s.model, *s.optimizer, *s.data, {}, 1, 2.4);
    ADD_FAILURE() << "saved NaN moments";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("AdamW v of embed is not finite"), std::string::npos) << e.what();
  }
  EXPECT_EQ(checkpoints_in(dir), (std::vector<std::string>{"step-00000001"}));
  fs::remove_all(dir);
}

TEST(Divergence, ANonFiniteLossStopsBeforeTheUpdate) {
  // --lr 1e30: step 1 is finite, step 2's loss or gradients are not; the run
  // stops at step 2, before its update, and step 1's checkpoint stays the newest.
  auto dir = testing::scratch_dir("nan_before_update");
  auto r = testing::run_memo("train --steps 6 --seq-len 16 --batch 2 --lr 1e30 --warmup 0 --clip 0 --out " +
                             (dir / "o").string() + " --checkpoint-every 1 --keep-checkpoints 1");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("step 2: the"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("stopping before the update"), std::string::npos) << r.output;
  EXPECT_EQ(checkpoints_in(dir / "o"), (std::vector<std::string>{"step-00000001"}));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace memo
