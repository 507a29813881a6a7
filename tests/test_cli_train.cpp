// `memo train` from the outside: bad input gives a message naming the problem
// and exit code 2 (never a crash or a stack trace); flags override the TOML
// file; --json writes the documented report.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <vector>

#include "cli_runner.h"

namespace memo {
namespace {

using testing::run_memo;

struct BadInput {
  const char* name;
  std::string args;
  std::string expect;  // fragment of the message
};

std::vector<BadInput> bad_inputs() {
  auto dir = testing::scratch_dir("cli_train");
  auto unknown_key = testing::write_text(dir / "unknown.toml", "steps = 2\nfoo = 1\n");
  auto wrong_type = testing::write_text(dir / "type.toml", "steps = \"ten\"\n");
  auto bad_syntax = testing::write_text(dir / "syntax.toml", "steps = = 2\n");
  auto not_div = testing::write_text(
      dir / "notdiv.json",
      R"({"model_type":"llama","vocab_size":256,"hidden_size":130,"num_hidden_layers":1,)"
      R"("num_attention_heads":4,"intermediate_size":64})");
  auto kv = testing::write_text(
      dir / "kv.json",
      R"({"model_type":"llama","vocab_size":256,"hidden_size":128,"num_hidden_layers":1,)"
      R"("num_attention_heads":4,"num_key_value_heads":3,"intermediate_size":64})");
  auto empty = testing::write_text(dir / "empty.bin", "");
  std::string big_ids;
  for (int i = 0; i < 64; ++i) big_ids += std::string("\x2c\x01", 2);  // uint16 300
  auto big = testing::write_text(dir / "big.bin", big_ids);
  auto tiny_text = testing::write_text(dir / "tiny.txt", "hello");
  const std::string quick = " --steps 1 --seq-len 16 --batch 1 ";
  return {
      {"unknown_key", "train --config " + unknown_key, "unknown key \"foo\""},
      {"wrong_type", "train --config " + wrong_type, "\"steps\" must be an integer"},
      {"toml_syntax", "train --config " + bad_syntax, "syntax.toml:1"},
      {"zero_seq_len", "train --seq-len 0", "seq_len must be a positive integer, got 0"},
      {"negative_batch", "train --batch -3", "batch must be a positive integer, got -3"},
      {"zero_steps", "train --steps 0", "steps must be a positive integer"},
      {"not_an_integer", "train --steps ten", "--steps"},
      {"hidden_not_divisible", "train --model " + not_div + quick, "not divisible by num_attention_heads"},
      {"kv_not_dividing", "train --model " + kv + quick, "num_key_value_heads (3) must divide"},
      {"unknown_model", "train --model llama9-1t", "unknown model \"llama9-1t\""},
      {"gpt_for_training", "train --model gpt-7b --layers 1" + quick, "for planning"},
      {"missing_data", "train --data /nonexistent/tokens.bin" + quick, "not found"},
      {"empty_data", "train --data " + empty + quick, "is empty"},
      {"id_over_vocab", "train --data " + big + " --data-dtype uint16" + quick,
       "token id 300 at position 0 is >= the model's vocabulary size 256"},
      {"seq_longer_than_data", "train --data " + tiny_text + " --steps 1 --seq-len 64",
       "fewer than seq_len + 1 = 65"},
      {"unknown_policy", "train --policy swapall" + quick, "unknown policy \"swapall\""},
      {"unknown_device", "train --device tpu" + quick, "device \"tpu\" is unknown"},
      {"unknown_dtype", "train --data-dtype int7" + quick, "data_dtype \"int7\" is unknown"},
      {"unknown_attention", "train --attention fast" + quick, "attention \"fast\" is unknown"},
      {"unknown_flag", "train --sequence-length 5", "--sequence-length"},
      {"negative_chunk", "train --chunk-tokens -1" + quick, "--chunk-tokens -1: expected a chunk of at least 1"},
      {"chunk_not_a_number", "train --chunk-tokens many" + quick, "--chunk-tokens 'many'"},
      {"chunk_list_for_train", "train --chunk-tokens 4,8" + quick, "a list compares chunk sizes in `memo bench`"},
      {"kv_on_host_unchunked", "train --kv-on-host" + quick, "--kv-on-host streams K and V of chunked layers: it needs --chunk-tokens"},
      {"kv_on_host_sp", "train --kv-on-host --chunk-tokens 4 --sp 2" + quick, "--kv-on-host is not built for sequence parallelism: it needs --sp 1, got --sp 2"},
      {"kv_blocks_over_host_budget", "train --policy recompute --chunk-tokens 64 --kv-on-host --host-memory-gib 0.001 --steps 1",
       "2.00 MiB of it the K, V host blocks of --kv-on-host) and --host-memory-gib 0.001 allows"},
      {"no_command", "", "subcommand is required"},
  };
}

class TrainBadInput : public ::testing::TestWithParam<BadInput> {};

TEST_P(TrainBadInput, ExitsWithCode2AndNamesTheProblem) {
  const auto& c = GetParam();
  auto r = run_memo(c.args);
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find(c.expect), std::string::npos) << "expected \"" << c.expect << "\" in:\n"
                                                        << r.output;
  EXPECT_EQ(r.output.find("Exception raised from"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("terminate called"), std::string::npos) << r.output;
}

INSTANTIATE_TEST_SUITE_P(Cases, TrainBadInput, ::testing::ValuesIn(bad_inputs()),
                         [](const auto& info) { return std::string(info.param.name); });

// --chunk-tokens: the header names the chunks and the whole-sequence tensors,
// the config has the chunk as run, the summary splits the peak; a chunk of
// the whole sequence (or more) runs whole layers, and so does auto when the
// whole layer fits.
TEST(TrainCli, ChunkedRunReportsItsChunksAndThePeakSplit) {
  auto dir = testing::scratch_dir("cli_chunks");
  const std::string base = "train --steps 2 --seq-len 64 --batch 1 --policy recompute --json ";
  for (const auto& [flag, want] : std::vector<std::pair<std::string, int64_t>>{{"16", 16}, {"64", 0}, {"1000", 0},
                                                                               {"auto", 0}}) {
    SCOPED_TRACE(flag);
    auto json_path = (dir / ("report-" + flag + ".json")).string();
    auto r = run_memo(base + json_path + " --chunk-tokens " + flag);
    ASSERT_EQ(r.code, 0) << r.output;
    std::ifstream in(json_path);
    auto j = nlohmann::json::parse(in);
    EXPECT_EQ(j["config"]["chunk_tokens"], want);
    if (want > 0) {
      EXPECT_NE(r.output.find("16 tokens per chunk, 4 chunks per layer (--chunk-tokens 16); whole-sequence tensors "
                              "on the device: hidden state"),
                std::string::npos)
          << r.output;
    } else {
      EXPECT_NE(r.output.find("whole layers (--chunk-tokens " + flag + ")"), std::string::npos) << r.output;
    }
    const auto& split = j["summary"]["peak_split"];
    int64_t sum = 0;
    for (const char* key : {"static_bytes", "whole_sequence_bytes", "chunk_buffer_bytes", "transient_bytes"})
      sum += split[key].get<int64_t>();
    EXPECT_LE(sum, j["summary"]["peak_device_bytes"].get<int64_t>());
    EXPECT_GT(split["static_bytes"].get<int64_t>(), 0);
    EXPECT_NE(r.output.find("peak split       weights and optimizer state"), std::string::npos) << r.output;
  }
  // auto with --kv-on-host where the whole layer fits: whole layers, and the
  // header says the option went unused rather than dropping it silently.
  auto r = run_memo(base + (dir / "report-kv.json").string() + " --chunk-tokens auto --kv-on-host");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("whole layers (--chunk-tokens auto); --kv-on-host unused"), std::string::npos) << r.output;
}

// memo on a host budget short of x, o, lse of every swapped chunk (on CPU,
// no device tier): the fit check lets it run, the header says which units
// keep only x, and the run's losses are those of the all-host run, its host
// pool smaller.
TEST(TrainCli, MemoOnAShortHostKeepsOnlyXOfSomeChunks) {
  auto dir = testing::scratch_dir("cli_x_only");
  const std::string base = "train --steps 2 --seq-len 1024 --batch 1 --layers 4 --policy memo --alpha 0 "
                            "--chunk-tokens 128 --json ";
  auto run = [&](const std::string& name, const std::string& gib) {
    const auto path = (dir / (name + ".json")).string();
    auto r = run_memo(base + path + " --host-memory-gib " + gib);
    EXPECT_EQ(r.code, 0) << r.output;
    std::ifstream in(path);
    return std::make_pair(r.output, nlohmann::json::parse(in));
  };
  const auto [host_out, host] = run("all-host", "1");
  const auto [short_out, short_host] = run("short", "0.0028");  // ~3.0 MB of the ~4.0 MB pool
  EXPECT_EQ(host_out.find("only x for"), std::string::npos) << host_out;
  EXPECT_NE(short_out.find("only x for 15 units, the earliest chunks, their attention recomputed in backward"),
            std::string::npos)
      << short_out;
  EXPECT_EQ(host["config"]["policy_split"]["attention_recomputed_units"], 0);
  EXPECT_EQ(short_host["config"]["policy_split"]["attention_recomputed_units"], 15);
  EXPECT_EQ(short_host["config"]["policy_split"]["swapped_units"], 30);
  EXPECT_EQ(short_host["summary"]["first_loss"], host["summary"]["first_loss"]);
  EXPECT_EQ(short_host["summary"]["final_loss"], host["summary"]["final_loss"]);
  EXPECT_LT(short_host["summary"]["host_bytes"].get<int64_t>(), host["summary"]["host_bytes"].get<int64_t>());
  EXPECT_LE(short_host["summary"]["host_bytes"].get<double>(), 0.0028 * 1024 * 1024 * 1024);
}

TEST(TrainCli, FlagsOverrideConfigAndJsonHasTheDocumentedShape) {
  auto dir = testing::scratch_dir("cli_json");
  auto cfg = testing::write_text(dir / "run.toml", "steps = 1\nseq_len = 32\nbatch = 2\n");
  auto json_path = (dir / "report.json").string();
  auto out_dir = (dir / "out").string();
  auto r = run_memo("train --config " + cfg + " --steps 3 --json " + json_path + " --out " + out_dir);
  ASSERT_EQ(r.code, 0) << r.output;
  std::ifstream in(json_path);
  auto j = nlohmann::json::parse(in);
  ASSERT_EQ(j["steps"].size(), 3u);  // the flag won over the file
  EXPECT_EQ(j["config"]["seq_len"], 32);  // the file won over the default
  for (const char* key : {"step", "loss", "tokens_per_s", "mfu", "peak_device_bytes"})
    EXPECT_TRUE(j["steps"][0].contains(key)) << key;
  EXPECT_GT(j["steps"][0]["peak_device_bytes"].get<int64_t>(), 0);
  EXPECT_TRUE(j["summary"].contains("final_loss"));
  EXPECT_TRUE(std::filesystem::exists(out_dir + "/summary.json"));
  std::ifstream metrics(out_dir + "/metrics.jsonl");
  int lines = 0;
  for (std::string line; std::getline(metrics, line);) ++lines;
  EXPECT_EQ(lines, 3);
}

TEST(TrainCli, HelpExplainsEveryOption) {
  auto r = run_memo("train --help");
  EXPECT_EQ(r.code, 0);
  for (const char* flag : {"--config", "--model", "--seq-len", "--batch", "--steps", "--policy", "--lr",
                           "--data", "--data-dtype", "--device", "--out", "--json"})
    EXPECT_NE(r.output.find(flag), std::string::npos) << flag;
}

}  // namespace
}  // namespace memo
