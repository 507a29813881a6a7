// Checkpoints and resume: a run resumed from a mid-run checkpoint gives
// bitwise the losses of the uninterrupted run; only the newest K are kept; an
// interrupted save (a leftover .tmp directory) is never picked up; a diverged
// run stops without writing a checkpoint after the last good one.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <vector>

#include "cli_runner.h"
#include "core/error.h"
#include "train/checkpoint.h"

namespace memo {
namespace {

namespace fs = std::filesystem;
using testing::run_memo;

const std::string kRun = " --steps 20 --seq-len 16 --batch 2 --warmup 3 --log-every 100 ";

std::vector<double> losses_of(const fs::path& json) {
  std::ifstream in(json);
  auto j = nlohmann::json::parse(in);
  std::vector<double> out;
  for (const auto& s : j.at("steps")) out.push_back(s.at("loss").get<double>());
  return out;
}

std::vector<std::string> checkpoints_in(const fs::path& out) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(out / "checkpoints")) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

TEST(Checkpoint, ResumeGivesBitwiseTheUninterruptedLosses) {
  auto dir = testing::scratch_dir("ckpt_resume");
  auto straight = run_memo("train" + kRun + "--json " + (dir / "a.json").string());
  ASSERT_EQ(straight.code, 0) << straight.output;
  auto first = run_memo("train" + kRun + "--out " + (dir / "b").string() +
                        " --checkpoint-every 10 --keep-checkpoints 0");
  ASSERT_EQ(first.code, 0) << first.output;
  auto resumed = run_memo("train" + kRun + "--resume " + (dir / "b/checkpoints/step-00000010").string() +
                          " --json " + (dir / "c.json").string());
  ASSERT_EQ(resumed.code, 0) << resumed.output;
  const auto a = losses_of(dir / "a.json");
  const auto c = losses_of(dir / "c.json");
  ASSERT_EQ(a.size(), 20u);
  ASSERT_EQ(c.size(), 10u);
  for (size_t i = 0; i < 10; ++i) EXPECT_EQ(a[10 + i], c[i]) << "step " << 11 + i;  // bitwise
  fs::remove_all(dir);
}

TEST(Checkpoint, ResumeFromAnOutDirectoryTakesTheNewest) {
  auto dir = testing::scratch_dir("ckpt_newest");
  auto r = run_memo("train --steps 4 --seq-len 16 --batch 2 --out " + (dir / "o").string() +
                    " --checkpoint-every 1 --keep-checkpoints 0");
  ASSERT_EQ(r.code, 0) << r.output;
  fs::create_directories(dir / "o/checkpoints/step-00000099.tmp");  // an interrupted save
  EXPECT_EQ(fs::path(train::find_checkpoint((dir / "o").string())).filename(), "step-00000004");
  fs::remove_all(dir);
}

// Past step 99,999,999 the zero-padded name gains a digit: the newest is
// still found by its step, and a directory whose name is not a step is not
// a checkpoint.
TEST(Checkpoint, TheNewestIsFoundByStepNotByName) {
  auto dir = testing::scratch_dir("ckpt_order");
  auto r = run_memo("train --steps 1 --seq-len 16 --batch 2 --out " + (dir / "o").string() +
                    " --checkpoint-every 1 --keep-checkpoints 0");
  ASSERT_EQ(r.code, 0) << r.output;
  const auto ckpts = dir / "o/checkpoints";
  fs::copy(ckpts / "step-00000001", ckpts / "step-99999999", fs::copy_options::recursive);
  fs::copy(ckpts / "step-00000001", ckpts / "step-100000000", fs::copy_options::recursive);
  fs::copy(ckpts / "step-00000001", ckpts / "step-9x", fs::copy_options::recursive);
  EXPECT_EQ(fs::path(train::find_checkpoint((dir / "o").string())).filename(), "step-100000000");
  fs::remove_all(ckpts / "step-100000000");
  EXPECT_EQ(fs::path(train::find_checkpoint((dir / "o").string())).filename(), "step-99999999");
  fs::remove_all(dir);
}

TEST(Checkpoint, LeftoversOfAnInterruptedSaveAreRemoved) {
  auto dir = testing::scratch_dir("ckpt_leftover");
  fs::create_directories(dir / "o/checkpoints/step-00000007.tmp");
  std::ofstream(dir / "o/checkpoints/step-00000007.tmp/model.safetensors") << "half";
  auto r = run_memo("train --steps 2 --seq-len 16 --batch 2 --out " + (dir / "o").string() + " --checkpoint-every 2");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(checkpoints_in(dir / "o"), (std::vector<std::string>{"step-00000002"}));
  fs::remove_all(dir);
}

TEST(Checkpoint, KeepsOnlyTheNewestK) {
  auto dir = testing::scratch_dir("ckpt_keep");
  auto r = run_memo("train --steps 6 --seq-len 16 --batch 2 --out " + (dir / "o").string() +
                    " --checkpoint-every 2 --keep-checkpoints 2");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(checkpoints_in(dir / "o"), (std::vector<std::string>{"step-00000004", "step-00000006"}));
  fs::remove_all(dir);
}

TEST(Checkpoint, CheckpointHoldsHfWeightsOptimizerAndState) {
  auto dir = testing::scratch_dir("ckpt_files");
  auto r = run_memo("train --steps 1 --seq-len 16 --batch 2 --out " + (dir / "o").string() +
                    " --checkpoint-every 1");
  ASSERT_EQ(r.code, 0) << r.output;
  const auto c = dir / "o/checkpoints/step-00000001";
  for (const char* f : {"model.safetensors", "config.json", "optimizer.safetensors", "trainer_state.json"})
    EXPECT_TRUE(fs::is_regular_file(c / f)) << f;
  fs::remove_all(dir);
}

TEST(Checkpoint, DivergedRunKeepsTheLastGoodCheckpoint) {
  auto dir = testing::scratch_dir("ckpt_nan");
  auto r = run_memo("train --steps 6 --seq-len 16 --batch 2 --lr 1e30 --warmup 0 --clip 0 --out " +
                    (dir / "o").string() + " --checkpoint-every 1 --keep-checkpoints 0");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("stopping"), std::string::npos) << r.output;
  // Step 1 is finite; step 2's gradients are not, so nothing after step 1 is saved.
  EXPECT_EQ(checkpoints_in(dir / "o"), (std::vector<std::string>{"step-00000001"}));
  fs::remove_all(dir);
}

TEST(Checkpoint, ResumeFromNothingIsAnInputError) {
  auto dir = testing::scratch_dir("ckpt_none");
  auto r = run_memo("train --steps 2 --resume " + dir.string());
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("holds no checkpoint"), std::string::npos) << r.output;
  fs::remove_all(dir);
}

TEST(Checkpoint, ResumeWithADifferentModelIsAnInputError) {
  auto dir = testing::scratch_dir("ckpt_other_model");
  auto r = run_memo("train --steps 2 --seq-len 16 --batch 2 --out " + (dir / "o").string() +
                    " --checkpoint-every 1");
  ASSERT_EQ(r.code, 0) << r.output;
  auto bad = run_memo("train --steps 4 --seq-len 16 --batch 2 --layers 3 --resume " + (dir / "o").string());
  EXPECT_EQ(bad.code, 2) << bad.output;
  EXPECT_NE(bad.output.find("num_hidden_layers = 2, the model given (--model, --layers) has 3"), std::string::npos)
      << bad.output;
  fs::remove_all(dir);
}

TEST(Checkpoint, DamagedOptimizerStateIsAnInputError) {
  auto dir = testing::scratch_dir("ckpt_damaged");
  auto r = run_memo("train --steps 2 --seq-len 16 --batch 2 --out " + (dir / "o").string() + " --checkpoint-every 1");
  ASSERT_EQ(r.code, 0) << r.output;
  const auto opt = dir / "o/checkpoints/step-00000002/optimizer.safetensors";
  fs::resize_file(opt, fs::file_size(opt) - 8);
  auto bad = run_memo("train --steps 4 --seq-len 16 --batch 2 --resume " + (dir / "o").string());
  EXPECT_EQ(bad.code, 2) << bad.output;
  EXPECT_NE(bad.output.find("optimizer.safetensors"), std::string::npos) << bad.output;
  fs::remove_all(dir);
}

TEST(Checkpoint, DamagedTrainerStateIsAnInputError) {
  auto dir = testing::scratch_dir("ckpt_state");
  auto r = run_memo("train --steps 2 --seq-len 16 --batch 2 --out " + (dir / "o").string() + " --checkpoint-every 1");
  ASSERT_EQ(r.code, 0) << r.output;
  std::ofstream(dir / "o/checkpoints/step-00000002/trainer_state.json") << "{\"step\": 2";
  auto bad = run_memo("train --steps 4 --seq-len 16 --batch 2 --resume " + (dir / "o").string());
  EXPECT_EQ(bad.code, 2) << bad.output;
  EXPECT_NE(bad.output.find("trainer_state.json"), std::string::npos) << bad.output;
  fs::remove_all(dir);
}

TEST(Checkpoint, CheckpointEveryNeedsOut) {
  auto r = run_memo("train --steps 2 --checkpoint-every 1");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("checkpoint_every needs --out"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace memo
