// Model configuration: presets, Hugging Face config.json parsing, RoPE tables
// (with Llama 3.1 scaling) computed independently here, FLOP counting.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <numbers>

#include "core/error.h"
#include "model/config.h"
#include "model/ops.h"
#include "train/flops.h"
#include "train/optimizer.h"

namespace memo {
namespace {

TEST(Presets, Llama3_8bHasItsPublishedShape) {
  auto c = model::resolve_model("llama3-8b");
  EXPECT_EQ(c.hidden, 4096);
  EXPECT_EQ(c.layers, 32);
  EXPECT_EQ(c.heads, 32);
  EXPECT_EQ(c.kv_heads, 8);
  EXPECT_EQ(c.ffn, 14336);
  EXPECT_EQ(c.vocab_size, 128256);
  // 8.03B parameters, the published count.
  EXPECT_NEAR(static_cast<double>(c.total_params()), 8.03e9, 0.01e9);
}

TEST(Presets, EveryPresetValidates) {
  for (const auto& name : model::preset_names()) {
    auto c = model::resolve_model(name);
    EXPECT_NO_THROW(c.validate(name)) << name;
  }
  EXPECT_EQ(model::resolve_model("llama3.2-1b").total_params() / 1000000, 1235);  // 1.24B
  EXPECT_EQ(model::resolve_model("gpt-65b").arch, model::Arch::Gpt);
}

TEST(HfConfig, ParsesLlama31Fields) {
  auto c = model::parse_hf_config(R"({
    "model_type": "llama", "vocab_size": 1000, "hidden_size": 64, "num_hidden_layers": 3,
    "num_attention_heads": 8, "num_key_value_heads": 2, "intermediate_size": 172,
    "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": true,
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}})",
                                  "cfg.json");
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.kv_heads, 2);
  EXPECT_TRUE(c.tie_embeddings);
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 8.0);
  EXPECT_EQ(c.rope_scaling.original_max_position, 8192);
}

TEST(HfConfig, ErrorsNameTheFileAndField) {
  auto expect = [](const std::string& text, const std::string& fragment) {
    try {
      model::parse_hf_config(text, "cfg.json");
      ADD_FAILURE() << "no error for " << text;
    } catch (const InputError& e) {
      std::string msg = e.what();
      EXPECT_NE(msg.find("cfg.json"), std::string::npos) << msg;
      EXPECT_NE(msg.find(fragment), std::string::npos) << msg;
    }
  };
  expect("{", "not valid JSON");
  expect(R"({"model_type":"gpt2"})", "model_type \"gpt2\"");
  expect(R"({"vocab_size":10})", "missing field \"hidden_size\"");
  expect(R"({"vocab_size":"ten","hidden_size":8})", "\"vocab_size\" has the wrong type");
  expect(R"({"vocab_size":10,"hidden_size":8,"num_hidden_layers":0,"num_attention_heads":2,"intermediate_size":4})",
         "num_hidden_layers must be a positive integer");
}

TEST(Rope, TableMatchesDirectFormula) {
  auto c = model::resolve_model("tiny");
  auto t = model::RopeTable::build(c, 50, at::kDouble, at::kCPU);
  for (int64_t pos : {0, 1, 17, 49})
    for (int64_t i : {0, 3, 15}) {
      double angle = pos / std::pow(c.rope_theta, 2.0 * i / c.head_dim);
      EXPECT_NEAR(t.cos[pos][i].item<double>(), std::cos(angle), 1e-12);
      EXPECT_NEAR(t.sin[pos][i].item<double>(), std::sin(angle), 1e-12);
    }
}

TEST(Rope, Llama31ScalingKeepsHighAndDividesLowFrequencies) {
  auto c = model::resolve_model("llama3.2-1b");  // factor 32, original 8192, d = 64
  auto scaled = model::RopeTable::build(c, 2, at::kDouble, at::kCPU);
  c.rope_scaling.factor = 0.0;
  auto plain = model::RopeTable::build(c, 2, at::kDouble, at::kCPU);
  auto angle = [](const model::RopeTable& t, int64_t i) {
    return std::atan2(t.sin[1][i].item<double>(), t.cos[1][i].item<double>());
  };
  // i = 0: wavelength 2 pi < 8192 / 4: unchanged.
  EXPECT_NEAR(angle(scaled, 0), angle(plain, 0), 1e-12);
  // i = 31: wavelength far above 8192: divided by the factor.
  EXPECT_NEAR(angle(scaled, 31), angle(plain, 31) / 32.0, 1e-15);
}

TEST(Flops, FollowDesignConvention) {
  auto c = model::resolve_model("llama3-8b");
  c.layers = 4;
  const double s = 32768;
  double expected = 6 * s * static_cast<double>(c.matmul_params()) + 3.5 * 4 * (4 * s * s * 4096 / 2);
  EXPECT_DOUBLE_EQ(train::model_flops_per_step(c, 1, 32768), expected);
}

TEST(Schedule, WarmsUpThenDecaysToTheFloor) {
  EXPECT_DOUBLE_EQ(train::lr_at(0, 100, 10, 1.0, 0.1), 0.1);
  EXPECT_DOUBLE_EQ(train::lr_at(9, 100, 10, 1.0, 0.1), 1.0);
  EXPECT_DOUBLE_EQ(train::lr_at(10, 100, 10, 1.0, 0.1), 1.0);
  EXPECT_NEAR(train::lr_at(55, 100, 10, 1.0, 0.1), 0.55, 1e-12);
  EXPECT_NEAR(train::lr_at(100, 100, 10, 1.0, 0.1), 0.1, 1e-12);
}

TEST(Optimizer, AdamWFirstStepMovesEachWeightByLr) {
  auto p = at::tensor({1.0, -2.0, 3.0}, at::kDouble).reshape({1, 3});
  auto g = at::tensor({0.5, -0.1, 0.0}, at::kDouble).reshape({1, 3});
  train::AdamW opt({&p}, {&g}, {0.9, 0.999, 0.0, 0.0});
  opt.step(0.01);
  // Bias-corrected m / sqrt(v) = sign(g) on the first step.
  EXPECT_NEAR(p[0][0].item<double>(), 0.99, 1e-12);
  EXPECT_NEAR(p[0][1].item<double>(), -1.99, 1e-12);
  EXPECT_TRUE(std::isnan(p[0][2].item<double>()) || std::abs(p[0][2].item<double>() - 3.0) < 1e-12);
}

TEST(Optimizer, ClippingScalesToTheMaxNorm) {
  auto a = at::full({4}, 3.0, at::kDouble);
  auto b = at::full({1}, 4.0, at::kDouble);
  // norm = sqrt(4 * 9 + 16) = sqrt(52)
  double norm = train::clip_grad_norm({&a, &b}, 1.0);
  EXPECT_NEAR(norm, std::sqrt(52.0), 1e-12);
  double after = std::sqrt(a.square().sum().item<double>() + b.square().sum().item<double>());
  EXPECT_NEAR(after, 1.0, 1e-5);
}

}  // namespace
}  // namespace memo
