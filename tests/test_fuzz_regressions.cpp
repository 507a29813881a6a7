// Every input the fuzzers (fuzz/) ever found a problem with, kept under
// fuzz/regressions/<target>/: each must now parse or throw InputError, and
// the seed corpora must parse.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "model/config.h"
#include "model/safetensors.h"

namespace memo {
namespace {

namespace fs = std::filesystem;

std::vector<std::string> files_in(const std::string& sub) {
  std::vector<std::string> out;
  const fs::path dir = fs::path(MEMO_SOURCE_DIR) / "fuzz" / sub;
  if (fs::is_directory(dir))
    for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().string());
  return out;
}

std::string slurp(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void parse_safetensors(const std::string& bytes) {
  model::parse_safetensors_header(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), bytes.size(),
                                  "regression");
}

TEST(FuzzRegressions, SafetensorsFindingsParseOrThrowInputError) {
  for (const auto& f : files_in("regressions/safetensors")) {
    try {
      parse_safetensors(slurp(f));
    } catch (const InputError&) {
    }
  }
}

TEST(FuzzRegressions, HfConfigFindingsParseOrThrowInputError) {
  const auto files = files_in("regressions/hf_config");
  EXPECT_FALSE(files.empty());
  for (const auto& f : files) {
    try {
      model::parse_hf_config(slurp(f), f);
    } catch (const InputError&) {
    }
  }
}

TEST(FuzzRegressions, NumberOverflowInConfigIsAnInputError) {
  EXPECT_THROW(model::parse_hf_config(R"({"model_type": "llama", "vocab_size": 1e400})", "x.json"), InputError);
}

TEST(FuzzRegressions, HugeFloatForAnIntegerFieldIsAnInputError) {
  try {
    model::parse_hf_config(R"({"model_type": "llama", "vocab_size": 128e256, "hidden_size": 64})", "x.json");
    ADD_FAILURE() << "no InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("\"vocab_size\" must be an integer"), std::string::npos) << e.what();
  }
}

TEST(FuzzRegressions, IntegralFloatForAnIntegerFieldIsAccepted) {
  auto c = model::parse_hf_config(R"({"model_type": "llama", "vocab_size": 96.0, "hidden_size": 64,)"
                                  R"( "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 112})",
                                  "x.json");
  EXPECT_EQ(c.vocab_size, 96);
}

TEST(FuzzRegressions, SeedCorporaParse) {
  for (const auto& f : files_in("corpus/safetensors")) EXPECT_NO_THROW(parse_safetensors(slurp(f))) << f;
  for (const auto& f : files_in("corpus/hf_config")) EXPECT_NO_THROW(model::parse_hf_config(slurp(f), f)) << f;
}

}  // namespace
}  // namespace memo
