// No silent wrong start. `--model DIR` names a checkpoint, so a directory
// without loadable safetensors weights is an error, never a fine-tuning run
// from random initialisation (a config.json file still trains from scratch);
// `memo eval` never reports a NaN loss with exit 0. (Megatron ids are checked
// at start-up: test_data_megatron.cpp.)
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <filesystem>
#include <fstream>

#include "cli_runner.h"
#include "model/hf_checkpoint.h"

namespace memo {
namespace {

namespace fs = std::filesystem;
using testing::run_memo;

const std::string kQuick = " --steps 1 --seq-len 16 --batch 1 ";
const std::string kConfig =
    R"({"model_type":"llama","vocab_size":256,"hidden_size":64,"num_hidden_layers":1,)"
    R"("num_attention_heads":4,"num_key_value_heads":2,"intermediate_size":96})";

struct WeightlessDir {
  const char* name;
  const char* extra_file;  // besides config.json; nullptr: none
  std::string expect;
};

void PrintTo(const WeightlessDir& c, std::ostream* os) { *os << c.name; }


class ModelDirectoryWithoutWeights : public ::testing::TestWithParam<WeightlessDir> {};

TEST_P(ModelDirectoryWithoutWeights, IsAnInputErrorNotARandomStart) {
  const auto& c = GetParam();
  auto dir = testing::scratch_dir(std::string("weightless_") + c.name);
  testing::write_text(dir / "config.json", kConfig);
  if (c.extra_file) testing::write_text(dir / c.extra_file, "{}");
  auto r = run_memo("train --model " + dir.string() + kQuick);
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("holds no *.safetensors weights"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(c.expect), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("step 1/"), std::string::npos) << "trained from random weights: " << r.output;
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, ModelDirectoryWithoutWeights,
    ::testing::Values(WeightlessDir{"config_only", nullptr, "give " },
                      WeightlessDir{"pytorch_bin", "pytorch_model.bin", "memo reads safetensors only"},
                      WeightlessDir{"index_without_shards", "model.safetensors.index.json",
                                    "none of the shards it lists"}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(ModelConfigFile, StillTrainsFromScratch) {
  auto dir = testing::scratch_dir("config_file");
  auto cfg = testing::write_text(dir / "config.json", kConfig);
  auto r = run_memo("train --model " + cfg + kQuick);
  EXPECT_EQ(r.code, 0) << r.output;
  fs::remove_all(dir);
}

TEST(Eval, ACheckpointWithANanWeightIsAnInputErrorNotANanLoss) {
  auto dir = testing::scratch_dir("eval_nan");
  auto r = run_memo("train" + kQuick + "--out " + (dir / "o").string() + " --checkpoint-every 1");
  ASSERT_EQ(r.code, 0) << r.output;
  const auto ckpt = dir / "o/checkpoints/step-00000001";
  auto t = model::read_tensors((ckpt / "model.safetensors").string());
  t[0].second.view(-1)[3] = std::nan("");
  model::write_tensors((ckpt / "model.safetensors").string(), t);
  auto data = testing::write_text(dir / "d.txt", std::string(200, 'z'));
  auto e = run_memo("eval --model " + ckpt.string() + " --data " + data + " --seq-len 16 --json " +
                    (dir / "e.json").string());
  EXPECT_EQ(e.code, 2) << e.output;
  EXPECT_NE(e.output.find("holds NaN or infinite values"), std::string::npos) << e.output;
  EXPECT_EQ(e.output.find("perplexity"), std::string::npos) << e.output;
  EXPECT_FALSE(fs::exists(dir / "e.json"));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace memo
