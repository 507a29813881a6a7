// safetensors reader/writer and Hugging Face checkpoint mapping: round trips
// (every dtype, tied and untied, sharded through the index, bf16), and
// hostile files (truncated, bad header length, broken JSON, offsets out of
// range or overlapping, dtype/shape mismatches, missing or unexpected tensors)
// each giving an InputError that names the file and tensor.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "cli_runner.h"
#include "core/error.h"
#include "model/hf_checkpoint.h"
#include "model/safetensors.h"

namespace memo {
namespace {

namespace fs = std::filesystem;
using model::ModelConfig;

ModelConfig small_config(bool tied) {
  ModelConfig c;
  c.name = "small";
  c.vocab_size = 64;
  c.hidden = 32;
  c.layers = 2;
  c.heads = 4;
  c.kv_heads = 2;
  c.head_dim = 8;
  c.ffn = 48;
  c.tie_embeddings = tied;
  return c;
}

model::LlamaModel make_model(const ModelConfig& c, uint64_t seed) {
  model::ModelOptions o;
  o.seed = seed;
  return model::LlamaModel(c, o);
}

void expect_same_weights(model::LlamaModel& a, model::LlamaModel& b) {
  auto x = a.master().named();
  auto y = b.master().named();
  ASSERT_EQ(x.size(), y.size());
  for (size_t i = 0; i < x.size(); ++i) EXPECT_TRUE(at::equal(*x[i].second, *y[i].second)) << x[i].first;
}

// A file with this JSON header and `data_bytes` zero bytes after it.
std::string write_raw(const fs::path& p, const std::string& header, size_t data_bytes) {
  std::ofstream out(p, std::ios::binary);
  const uint64_t n = header.size();
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << header << std::string(data_bytes, '\0');
  return p.string();
}

// Expects `fn` to throw InputError whose message holds every fragment.
template <typename Fn>
void expect_input_error(Fn fn, std::vector<std::string> fragments) {
  try {
    fn();
    ADD_FAILURE() << "no InputError";
  } catch (const InputError& e) {
    for (const auto& f : fragments) EXPECT_NE(std::string(e.what()).find(f), std::string::npos) << e.what();
  }
}

// A valid checkpoint directory of small_config(false), seed 1.
fs::path saved_checkpoint(const std::string& name, bool tied = false) {
  auto dir = testing::scratch_dir(name);
  auto m = make_model(small_config(tied), 1);
  model::write_hf_checkpoint(dir.string(), m.config(), m.master());
  return dir;
}

TEST(Safetensors, RoundTripsEveryDtype) {
  auto dir = testing::scratch_dir("st_dtypes");
  std::vector<std::pair<std::string, at::Tensor>> in;
  for (auto t : {at::kFloat, at::kBFloat16, at::kHalf, at::kDouble, at::kLong})
    in.emplace_back(c10::toString(t), (at::randn({3, 5}) * 100).to(t));
  in.emplace_back("scalar", at::ones({}, at::kFloat));
  const auto path = (dir / "t.safetensors").string();
  model::write_tensors(path, in);
  auto out = model::read_tensors(path);
  ASSERT_EQ(out.size(), in.size());
  for (const auto& [name, t] : in) {
    auto it = std::find_if(out.begin(), out.end(), [&](const auto& p) { return p.first == name; });
    ASSERT_NE(it, out.end()) << name;
    EXPECT_EQ(it->second.scalar_type(), t.scalar_type()) << name;
    EXPECT_TRUE(at::equal(it->second, t)) << name;
  }
  fs::remove_all(dir);
}

TEST(Safetensors, HeaderIsPaddedToEightBytes) {
  const std::string h = model::safetensors_header_bytes({{"x", "F32", {1}, nullptr, 4}}, {});
  EXPECT_EQ(h.size() % 8, 0u);
}

TEST(HfCheckpoint, RoundTripUntied) {
  auto dir = saved_checkpoint("hf_untied");
  auto a = make_model(small_config(false), 1);
  auto b = make_model(small_config(false), 2);
  model::load_hf_weights(dir.string(), b.config(), b.master());
  expect_same_weights(a, b);
  EXPECT_EQ(model::resolve_model(dir.string()).qkv_dim(), a.config().qkv_dim());
  fs::remove_all(dir);
}

TEST(HfCheckpoint, RoundTripTiedHasNoLmHead) {
  auto dir = saved_checkpoint("hf_tied", true);
  model::SafetensorsReader r((dir / "model.safetensors").string());
  EXPECT_EQ(r.header().find("lm_head.weight"), nullptr);
  auto a = make_model(small_config(true), 1);
  auto b = make_model(small_config(true), 2);
  model::load_hf_weights(dir.string(), b.config(), b.master());
  expect_same_weights(a, b);
  fs::remove_all(dir);
}

TEST(HfCheckpoint, QkvRowsAreQThenKThenV) {
  auto m = make_model(small_config(false), 1);
  auto named = model::to_hf_tensors(m.config(), m.master(), at::kFloat);
  auto get = [&](const std::string& n) {
    for (auto& [k, t] : named)
      if (k == n) return t;
    return at::Tensor();
  };
  const auto& wqkv = m.master().layers[1].wqkv;
  EXPECT_TRUE(at::equal(get("model.layers.1.self_attn.q_proj.weight"), wqkv.narrow(0, 0, 32)));
  EXPECT_TRUE(at::equal(get("model.layers.1.self_attn.k_proj.weight"), wqkv.narrow(0, 32, 16)));
  EXPECT_TRUE(at::equal(get("model.layers.1.self_attn.v_proj.weight"), wqkv.narrow(0, 48, 16)));
  EXPECT_TRUE(at::equal(get("model.layers.1.mlp.up_proj.weight"), m.master().layers[1].wgu.narrow(0, 48, 48)));
}

TEST(HfCheckpoint, LoadsShardsThroughTheIndex) {
  auto dir = testing::scratch_dir("hf_shards");
  auto a = make_model(small_config(false), 1);
  auto all = model::to_hf_tensors(a.config(), a.master(), at::kFloat);
  std::vector<std::pair<std::string, at::Tensor>> one(all.begin(), all.begin() + 5), two(all.begin() + 5, all.end());
  model::write_tensors((dir / "model-00001-of-00002.safetensors").string(), one);
  model::write_tensors((dir / "model-00002-of-00002.safetensors").string(), two);
  nlohmann::json index;
  for (auto& [n, t] : one) index["weight_map"][n] = "model-00001-of-00002.safetensors";
  for (auto& [n, t] : two) index["weight_map"][n] = "model-00002-of-00002.safetensors";
  std::ofstream(dir / "model.safetensors.index.json") << index.dump();
  auto b = make_model(small_config(false), 2);
  model::load_hf_weights(dir.string(), b.config(), b.master());
  expect_same_weights(a, b);
  fs::remove_all(dir);
}

TEST(HfCheckpoint, LoadsBf16Weights) {
  auto dir = testing::scratch_dir("hf_bf16");
  auto a = make_model(small_config(false), 1);
  model::write_hf_checkpoint(dir.string(), a.config(), a.master(), at::kBFloat16);
  auto b = make_model(small_config(false), 2);
  model::load_hf_weights(dir.string(), b.config(), b.master());
  EXPECT_TRUE(at::equal(b.master().embed, a.master().embed.to(at::kBFloat16).to(at::kFloat)));
  fs::remove_all(dir);
}

TEST(SafetensorsHostile, FileTooShort) {
  auto dir = testing::scratch_dir("st_short");
  std::ofstream(dir / "x.safetensors") << "abc";
  expect_input_error([&] { model::SafetensorsReader r((dir / "x.safetensors").string()); },
                     {"x.safetensors", "too short"});
}

TEST(SafetensorsHostile, HeaderLengthPastTheEnd) {
  auto dir = testing::scratch_dir("st_hlen");
  std::string bytes(16, '\0');
  const uint64_t n = 1000;
  std::memcpy(bytes.data(), &n, 8);
  std::ofstream(dir / "x.safetensors", std::ios::binary) << bytes;
  expect_input_error([&] { model::SafetensorsReader r((dir / "x.safetensors").string()); },
                     {"x.safetensors", "header length 1000 runs past the end"});
}

TEST(SafetensorsHostile, HugeHeaderLength) {
  auto dir = testing::scratch_dir("st_hhuge");
  std::string bytes(16, '\0');
  const uint64_t n = ~0ull;
  std::memcpy(bytes.data(), &n, 8);
  std::ofstream(dir / "x.safetensors", std::ios::binary) << bytes;
  expect_input_error([&] { model::SafetensorsReader r((dir / "x.safetensors").string()); }, {"100 MiB"});
}

TEST(SafetensorsHostile, BrokenJson) {
  auto dir = testing::scratch_dir("st_json");
  auto p = write_raw(dir / "x.safetensors", "{\"a\": {\"dtype\": ", 0);
  expect_input_error([&] { model::SafetensorsReader r(p); }, {"x.safetensors", "not valid JSON"});
}

TEST(SafetensorsHostile, TruncatedFileNamesTheTensor) {
  auto dir = saved_checkpoint("st_trunc");
  const auto p = dir / "model.safetensors";
  fs::resize_file(p, fs::file_size(p) - 100);
  auto b = make_model(small_config(false), 2);
  expect_input_error([&] { model::load_hf_weights(dir.string(), b.config(), b.master()); },
                     {"model.safetensors", "run past the end", "tensor \""});
  fs::remove_all(dir);
}

TEST(SafetensorsHostile, OffsetsOutOfRange) {
  auto dir = testing::scratch_dir("st_range");
  auto p = write_raw(dir / "x.safetensors",
                     R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}})", 16);
  expect_input_error([&] { model::SafetensorsReader r(p); }, {"x.safetensors", "\"w\"", "run past the end"});
}

TEST(SafetensorsHostile, OverlappingTensors) {
  auto dir = testing::scratch_dir("st_overlap");
  auto p = write_raw(dir / "x.safetensors",
                     R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},)"
                     R"( "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}})",
                     24);
  expect_input_error([&] { model::SafetensorsReader r(p); }, {"x.safetensors", "\"a\" and \"b\" overlap"});
}

TEST(SafetensorsHostile, SpanDoesNotMatchShape) {
  auto dir = testing::scratch_dir("st_span");
  auto p = write_raw(dir / "x.safetensors", R"({"w": {"dtype": "BF16", "shape": [3, 3], "data_offsets": [0, 16]}})",
                     16);
  expect_input_error([&] { model::SafetensorsReader r(p); }, {"\"w\"", "needs 18"});
}

TEST(SafetensorsHostile, UnknownDtype) {
  auto dir = testing::scratch_dir("st_dtype");
  auto p = write_raw(dir / "x.safetensors", R"({"w": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}})", 2);
  expect_input_error([&] { model::SafetensorsReader r(p); }, {"\"w\"", "F8_E4M3", "not supported"});
}

TEST(SafetensorsHostile, NegativeShape) {
  auto dir = testing::scratch_dir("st_neg");
  auto p = write_raw(dir / "x.safetensors", R"({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}})", 0);
  expect_input_error([&] { model::SafetensorsReader r(p); }, {"\"w\"", "non-negative"});
}

// `n` uint16 tokens of id 1.
void write_ones(const fs::path& p, int n) {
  std::ofstream out(p, std::ios::binary);
  for (int i = 0; i < n; ++i) out.write("\x01\x00", 2);
}

// Rewrites the checkpoint's model.safetensors through `edit` on its tensors.
void rewrite(const fs::path& dir,
             const std::function<void(std::vector<std::pair<std::string, at::Tensor>>&)>& edit) {
  auto t = model::read_tensors((dir / "model.safetensors").string());
  edit(t);
  model::write_tensors((dir / "model.safetensors").string(), t);
}

TEST(HfCheckpointHostile, IntegerDtypeForAWeight) {
  auto dir = saved_checkpoint("hf_int");
  rewrite(dir, [](auto& t) { t[0].second = t[0].second.to(at::kLong); });
  auto b = make_model(small_config(false), 2);
  expect_input_error([&] { model::load_hf_weights(dir.string(), b.config(), b.master()); },
                     {"model.safetensors", "I64", "not a floating-point"});
  fs::remove_all(dir);
}

TEST(HfCheckpointHostile, ShapeDoesNotMatchTheConfig) {
  auto dir = saved_checkpoint("hf_shape");
  auto c = small_config(false);
  c.ffn = 40;
  auto b = make_model(c, 2);
  expect_input_error([&] { model::load_hf_weights(dir.string(), c, b.master()); },
                     {"model.safetensors", "mlp.", "does not match the config's"});
  fs::remove_all(dir);
}

TEST(HfCheckpointHostile, MissingTensor) {
  auto dir = saved_checkpoint("hf_missing");
  rewrite(dir, [](auto& t) {
    std::erase_if(t, [](const auto& p) { return p.first == "model.layers.1.self_attn.v_proj.weight"; });
  });
  auto b = make_model(small_config(false), 2);
  expect_input_error([&] { model::load_hf_weights(dir.string(), b.config(), b.master()); },
                     {"\"model.layers.1.self_attn.v_proj.weight\" is missing"});
  fs::remove_all(dir);
}

TEST(HfCheckpointHostile, UnexpectedTensor) {
  auto dir = saved_checkpoint("hf_extra");
  rewrite(dir, [](auto& t) { t.emplace_back("model.layers.0.self_attn.q_proj.bias", at::zeros({32})); });
  auto b = make_model(small_config(false), 2);
  expect_input_error([&] { model::load_hf_weights(dir.string(), b.config(), b.master()); },
                     {"q_proj.bias", "not part of a Llama model"});
  fs::remove_all(dir);
}

TEST(HfCheckpointHostile, MissingShard) {
  auto dir = saved_checkpoint("hf_noshard");
  std::ofstream(dir / "model.safetensors.index.json") << R"({"weight_map": {"x": "gone.safetensors"}})";
  auto b = make_model(small_config(false), 2);
  expect_input_error([&] { model::load_hf_weights(dir.string(), b.config(), b.master()); },
                     {"gone.safetensors", "missing"});
  fs::remove_all(dir);
}

TEST(HfCheckpointHostile, EvalOnACorruptCheckpointExitsWithTwo) {
  auto dir = saved_checkpoint("hf_cli");
  const auto p = dir / "model.safetensors";
  fs::resize_file(p, fs::file_size(p) / 2);
  write_ones(dir / "tok.bin", 100);
  auto r = testing::run_memo("eval --model " + dir.string() + " --data " + (dir / "tok.bin").string() +
                             " --data-dtype uint16 --seq-len 8");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("model.safetensors"), std::string::npos) << r.output;
  fs::remove_all(dir);
}

TEST(HfCheckpoint, EvalWritesLossAndPerplexity) {
  auto dir = saved_checkpoint("hf_eval");
  write_ones(dir / "tok.bin", 100);
  auto r = testing::run_memo("eval --model " + dir.string() + " --data " + (dir / "tok.bin").string() +
                             " --data-dtype uint16 --seq-len 8 --batch 3 --json " + (dir / "e.json").string());
  ASSERT_EQ(r.code, 0) << r.output;
  auto j = nlohmann::json::parse(std::ifstream(dir / "e.json"));
  EXPECT_EQ(j.at("tokens").get<int64_t>(), 96);  // (100 - 1) / 8 = 12 windows of 8
  EXPECT_NEAR(j.at("perplexity").get<double>(), std::exp(j.at("loss").get<double>()), 1e-9);
  fs::remove_all(dir);
}

TEST(HfCheckpoint, Transformers5RopeParametersParse) {
  auto c = model::parse_hf_config(
      R"({"model_type": "llama", "vocab_size": 96, "hidden_size": 64, "num_hidden_layers": 2,)"
      R"( "num_attention_heads": 4, "intermediate_size": 112, "rope_parameters": {"rope_type": "llama3",)"
      R"( "rope_theta": 500000.0, "factor": 8.0, "original_max_position_embeddings": 16}})",
      "v5.json");
  EXPECT_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling.factor, 8.0);
  EXPECT_EQ(c.rope_scaling.original_max_position, 16);
}

TEST(HfCheckpoint, WrittenConfigParsesBackToTheSameShape) {
  auto c = small_config(true);
  c.rope_scaling = {8.0, 1.0, 4.0, 16};
  auto back = model::parse_hf_config(model::hf_config_json(c, at::kFloat).dump(), "memo.json");
  EXPECT_EQ(back.qkv_dim(), c.qkv_dim());
  EXPECT_EQ(back.ffn, c.ffn);
  EXPECT_EQ(back.tie_embeddings, true);
  EXPECT_EQ(back.rope_scaling.factor, 8.0);
  EXPECT_EQ(back.rms_eps, c.rms_eps);
}

TEST(HfCheckpoint, TrainingStartsFromTheHfWeights) {
  auto dir = saved_checkpoint("hf_train");
  write_ones(dir / "tok.bin", 400);
  auto r = testing::run_memo("train --model " + dir.string() + " --data " + (dir / "tok.bin").string() +
                             " --data-dtype uint16 --steps 1 --seq-len 8 --batch 2 --lr 1e-12 --out " +
                             (dir / "o").string() + " --checkpoint-every 1");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("(Hugging Face safetensors)"), std::string::npos) << r.output;
  auto a = make_model(small_config(false), 1);  // what was saved
  auto b = make_model(small_config(false), 2);
  model::load_hf_weights((dir / "o/checkpoints/step-00000001").string(), b.config(), b.master());
  auto x = a.master().named();
  auto y = b.master().named();
  for (size_t i = 0; i < x.size(); ++i)  // a step of lr 1e-12 moves nothing visibly
    EXPECT_TRUE(at::allclose(*x[i].second, *y[i].second, 0, 1e-9)) << x[i].first;
  fs::remove_all(dir);
}

}  // namespace
}  // namespace memo
