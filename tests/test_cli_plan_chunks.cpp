// `memo plan --chunk-tokens C|auto` end to end: the chunked split in the table
// and under "chunked" in --json (plan/chunk_plan.h), parts adding up to the
// device bytes, the auto chunk fitting, and bad values refused with exit 2
// before anything is printed or written.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <string>

#include "cli_runner.h"

namespace memo {
namespace {

// `memo plan <args> --json <scratch>/plan.json`: what it printed and the JSON
// it wrote (null when it wrote none).
struct PlanRun {
  testing::CliResult run;
  nlohmann::json json;
};

PlanRun plan_json(const std::string& scratch, const std::string& args) {
  const auto path = (testing::scratch_dir(scratch) / "plan.json").string();
  PlanRun out{testing::run_memo("plan " + args + " --json " + path), nullptr};
  std::ifstream f(path);
  if (f) out.json = nlohmann::json::parse(f);
  return out;
}

TEST(PlanChunksCli, AutoChunkWritesTheSplitPerPolicy) {
  const auto [r, j] = plan_json("plan-chunks", "--model llama3.2-1b --seq-len 1048576 --host-gib 128 "
                                               "--gpus-per-host 1 --chunk-tokens auto");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("chunked execution (--chunk-tokens auto"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("whole-sequence tensors per token"), std::string::npos) << r.output;
  ASSERT_TRUE(j.contains("chunked")) << j.dump(2);
  const auto& c = j["chunked"];
  EXPECT_EQ(c["chunk_tokens"], "auto");
  ASSERT_EQ(c["policies"].size(), 4u);
  const double device = j["hardware"]["device_bytes"].get<double>();
  for (const auto& p : c["policies"]) {
    const std::string name = p["policy"];
    double whole = 0;
    for (const auto& [part, bytes] : p["whole_sequence"].items()) whole += bytes.get<double>();
    EXPECT_DOUBLE_EQ(whole, p["whole_sequence_bytes"].get<double>()) << name;
    EXPECT_DOUBLE_EQ(p["device_bytes"].get<double>(),
                     p["static_bytes"].get<double>() + p["whole_sequence_bytes"].get<double>() +
                         p["chunk_buffer_bytes"].get<double>() + p["chunk_transient_bytes"].get<double>() +
                         p["reserve_bytes"].get<double>() + p.value("fixed_on_device_bytes", 0.0))
        << name;
    if (p["fits_device"].get<bool>()) EXPECT_LE(p["device_bytes"].get<double>(), device) << name;
    EXPECT_GT(p["longest_seq"].get<int64_t>(), 0) << name;
    for (const char* key : {"chunk_tokens", "chunks", "whole_sequence_bytes_per_token", "host_bytes",
                            "fits_host", "longest_chunk_tokens", "longest_limited_by"})
      EXPECT_TRUE(p.contains(key)) << name << " " << key;
  }
  // A million tokens of Llama-3.2-1B do not fit one H200 unchunked under memo;
  // chunked, they do (the whole-sequence part is 14 KiB per token).
  EXPECT_FALSE(j["policies"][3]["fits"].get<bool>());
  EXPECT_EQ(c["policies"][3]["policy"], "memo");
  EXPECT_TRUE(c["policies"][3]["fits_device"].get<bool>());
  EXPECT_LT(c["policies"][3]["chunk_tokens"].get<int64_t>(), 1048576);
  // Chunked memo rebuilds each layer's K and V in backward rather than
  // keeping every layer's on the host (32 KiB per token): its host fits the
  // 128 GiB too (121.9 GiB, was 153.9 GiB), its longest context is ~1.03M
  // (was 828K), and the rebuild's cost is reported, for memo alone. Past
  // that the device tier holds what the host cannot (x, o, lse of whole
  // units) as far as the device has room (~1.76M), and x-only units the
  // rest (o and lse recomputed in backward): memo's longest context is
  // ~2.72M, where even x alone of every unit the tier does not hold is more
  // than the host's 128 GiB.
  const auto& memo = c["policies"][3];
  EXPECT_TRUE(memo["fits_host"].get<bool>()) << memo.dump(2);
  EXPECT_EQ(memo["fixed_on_device_bytes"].get<double>(), 0.0);  // 1M needs no tier
  EXPECT_EQ(memo["attention_recomputed_units"].get<int64_t>(), 0);
  EXPECT_EQ(memo["longest_seq"].get<int64_t>(), 2719744);
  EXPECT_EQ(memo["longest_limited_by"], "host");
  EXPECT_FALSE(memo["host"].contains("every layer's K and V")) << memo.dump(2);
  EXPECT_TRUE(c["policies"][2]["host"].contains("every layer's K and V"));  // offload keeps them
  // Every swapped unit's input once more (4 KiB per token), 16 layers' QKV projection.
  EXPECT_GT(memo["rebuild_h2d_bytes"].get<double>(), 0.0);
  EXPECT_LE(memo["rebuild_h2d_bytes"].get<double>(), 16.0 * 1048576 * 4096);
  EXPECT_DOUBLE_EQ(memo["rebuild_flops"].get<double>(), 16.0 * 1048576 * 2 * 2048 * 3072);
  for (int i = 0; i < 3; ++i) EXPECT_FALSE(c["policies"][i].contains("rebuild_flops")) << i;
  EXPECT_NE(r.output.find("K, V rebuild, memo:"), std::string::npos) << r.output;
}

// At 1.5M tokens in chunks of 1024 the host cannot hold memo's x, o, lse:
// the plan says how many units the device tier holds and their bytes, in
// the text and in memo's JSON row (part of its device bytes), and memo fits.
TEST(PlanChunksCli, MemosDeviceTierIsReported) {
  const auto [r, j] = plan_json("plan-chunks-tier", "--model llama3.2-1b --seq-len 1572864 --host-gib 128 "
                                                    "--gpus-per-host 1 --chunk-tokens 1024");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("device tier, memo:"), std::string::npos) << r.output;
  const auto& memo = j["chunked"]["policies"][3];
  ASSERT_EQ(memo["policy"], "memo");
  EXPECT_GT(memo["fixed_on_device_bytes"].get<double>(), 0.0) << memo.dump(2);
  EXPECT_TRUE(memo["fits_host"].get<bool>()) << memo.dump(2);
  EXPECT_TRUE(memo["fits_device"].get<bool>()) << memo.dump(2);
  EXPECT_LE(memo["host_bytes"].get<double>(), 128.0 * (1ull << 30));
  EXPECT_FALSE(j["chunked"]["policies"][2].contains("fixed_on_device_bytes"));  // offload: none
}

// At 2M tokens memo's x, o, lse (~255 GiB) are more than the host's 128 GiB
// and the device's room together: units that keep only x cover the rest,
// their attention recomputed in backward. The plan prints how many, the
// bytes they leave off the host and the FLOPs (a few percent of the step's
// attention), and writes them in memo's JSON row; memo fits, its host at
// most the share, host, tier and x-only bytes adding up to x, o, lse of
// every swapped unit.
TEST(PlanChunksCli, MemosAttentionRecomputeIsReportedAt2M) {
  const auto [r, j] = plan_json("plan-chunks-x-only", "--model llama3.2-1b --seq-len 2097152 --host-gib 128 "
                                                      "--gpus-per-host 1 --chunk-tokens auto");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("device tier, memo:"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("attention recompute, memo:"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("of the step's attention FLOPs"), std::string::npos) << r.output;
  const auto& memo = j["chunked"]["policies"][3];
  ASSERT_EQ(memo["policy"], "memo");
  EXPECT_TRUE(memo["fits_device"].get<bool>()) << memo.dump(2);
  EXPECT_TRUE(memo["fits_host"].get<bool>()) << memo.dump(2);
  const int64_t units = memo["attention_recomputed_units"].get<int64_t>();
  const int64_t chunk = memo["chunk_tokens"].get<int64_t>();
  EXPECT_GT(units, 0) << memo.dump(2);
  EXPECT_DOUBLE_EQ(memo["attention_recomputed_bytes"].get<double>(),
                   static_cast<double>(units * chunk) * (32 * 64 * 2 + 32 * 4));  // o, lse of full units
  const double step_attention = 3.5 * 16 * 2.0 * 2097152.0 * 2097152.0 * 2048;
  EXPECT_GT(memo["attention_recompute_flops"].get<double>(), 0.0);
  EXPECT_LT(memo["attention_recompute_flops"].get<double>(), 0.1 * step_attention);
  EXPECT_LE(memo["host_bytes"].get<double>(), 128.0 * (1ull << 30));
  const double last = 2097152.0 - static_cast<double>((memo["chunks"].get<int64_t>() - 1) * chunk);
  const double swapped = 16.0 * 2097152 - last - static_cast<double>(chunk);
  EXPECT_DOUBLE_EQ(memo["host_bytes"].get<double>() + memo["fixed_on_device_bytes"].get<double>() +
                       memo["attention_recomputed_bytes"].get<double>(),
                   swapped * (2048 * 2 + 32 * 64 * 2 + 32 * 4));
  EXPECT_FALSE(j["chunked"]["policies"][2].contains("attention_recomputed_units"));  // offload: none
}

// Under --sp 8 the chunked table is of each GPU's shard (it was refused with
// exit 2 before chunks ran under sequence parallelism), with the step's
// all-to-alls at each policy's chunk: keep's, offload's and memo's bytes are
// the unchunked plan's.
TEST(PlanChunksCli, ChunksOfTheShardUnderSp) {
  const auto [r, j] = plan_json("plan-chunks-sp", "--model llama3.2-1b --seq-len 1048576 --sp 8 "
                                                  "--gpus-per-host 8 --chunk-tokens 4096");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("chunks of each GPU's shard"), std::string::npos) << r.output;
  const auto& c = j["chunked"];
  ASSERT_EQ(c["policies"].size(), 4u) << c.dump(2);
  for (size_t i = 0; i < 4; ++i) {
    const auto& p = c["policies"][i];
    EXPECT_EQ(p["chunk_tokens"].get<int64_t>(), 4096) << p.dump();
    EXPECT_EQ(p["chunks"].get<int64_t>(), 1048576 / 8 / 4096) << p.dump();
    // 16 layers x 32 chunks x 11 all-to-alls (recompute 14), whole layers 8 (11).
    EXPECT_EQ(p["all_to_all_calls"].get<double>(), 16.0 * 32 * (i == 1 ? 14 : 11)) << p.dump();
    // keep, offload and memo move the unchunked plan's bytes.
    if (i != 1)
      EXPECT_EQ(p["all_to_all_bytes"].get<double>(), j["policies"][i]["comm"]["all_to_all_bytes"].get<double>());
  }
}

TEST(PlanChunksCli, BadChunkTokensExit2BeforeAnyOutput) {
  auto dir = testing::scratch_dir("plan-chunks-bad");
  auto path = (dir / "plan.json").string();
  for (const char* bad : {"-3", "lots", "1.5", ""}) {
    auto r = testing::run_memo(std::string("plan --model tiny --seq-len 4096 --json ") + path +
                               " --chunk-tokens '" + bad + "'");
    EXPECT_EQ(r.code, 2) << bad << ": " << r.output;
    EXPECT_NE(r.output.find("--chunk-tokens"), std::string::npos) << bad << ": " << r.output;
    EXPECT_EQ(r.output.find("verdict"), std::string::npos) << bad << ": " << r.output;
    EXPECT_FALSE(std::filesystem::exists(path)) << bad;
  }
  auto r = testing::run_memo("plan --model tiny --seq-len 4096 --tp 2 --chunk-tokens 512");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("--tp 2"), std::string::npos) << r.output;
  r = testing::run_memo("plan --model tiny --seq-len 4096 --chunk-tokens 512");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("--chunk-tokens 512"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace memo
