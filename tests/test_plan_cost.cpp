// The cost model behind `memo plan` (plan/cost_model.h): skeletal bytes worked
// out by hand and checked against the runtime's own specs and the keep
// policy's held bytes, monotonicity in the sequence length, the host bound on
// alpha, the MFU convention, max_seq, and bad input; plus the CLI end to end.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fstream>

#include "cli_runner.h"
#include "core/error.h"
#include "model/config.h"
#include "model/layer.h"
#include "model/llama.h"
#include "plan/cost_model.h"
#include "runtime/policy.h"
#include "train/flops.h"
#include "train/step.h"

namespace memo {
namespace {

plan::PlanInputs inputs(const std::string& model, int64_t seq_len, int64_t batch = 1,
                        const std::string& hardware = "h200-141gb") {
  plan::PlanInputs in;
  in.model = model::to_plan_shape(model::resolve_model(model));
  in.seq_len = seq_len;
  in.batch = batch;
  in.hardware = plan::hardware_preset(hardware);
  return in;
}

double per_layer(const plan::PlanInputs& in) {
  double sum = 0;
  for (const auto& t : plan::skeletal_bytes(in)) sum += t.bytes;
  return sum;
}

TEST(PlanCost, TinySkeletalBytesByHand) {
  // tiny: h 128, nh 4, nkv 2, d 32, f 352. Per token in float32:
  // x, n1, x2, n2 and o: 5 x 128 x 4 = 2560; rstd1, rstd2: 8; qkv (4 + 4) x 32 x 4 = 1024;
  // lse 4 x 4 = 16; gu 704 x 4 = 2816; a 352 x 4 = 1408. Total 7832.
  auto in = inputs("tiny", 256, 3);
  in.compute_bytes = 4;
  EXPECT_EQ(per_layer(in), 7832.0 * 256 * 3);
  // bf16: 5 x 256 + 8 + 512 + 16 + 1408 + 704 = 3928 (statistics stay fp32).
  in.compute_bytes = 2;
  EXPECT_EQ(per_layer(in), 3928.0 * 256 * 3);
}

TEST(PlanCost, Llama3_8bSkeletalBytesByHand) {
  // h 4096, nh 32, nkv 8, d 128, f 14336, bf16. Per token:
  // x, n1, x2, n2, o: 5 x 8192; rstd 2 x 4; qkv 6144 x 2 = 12288; lse 128; gu 57344; a 28672.
  const double per_token = 5 * 8192 + 8 + 12288 + 128 + 57344 + 28672;
  EXPECT_EQ(per_token, 139400.0);
  auto in = inputs("llama3-8b", 131072);
  EXPECT_EQ(per_layer(in), per_token * 131072);
  // tp 8 without sp: x, n1, x2, n2 and the rstd rows are replicated, the rest split 8 ways.
  in.parallel.tp = 8;
  EXPECT_EQ(per_layer(in), (4 * 8192 + 8 + (12288 + 8192 + 128 + 57344 + 28672) / 8.0) * 131072);
  // tp 8 with sequence parallelism: everything split 8 ways.
  in.parallel.sp = 8;
  EXPECT_EQ(per_layer(in), per_token / 8 * 131072);
}

TEST(PlanCost, GptSkeletalIs16HPlusLse) {
  auto in = inputs("gpt-7b", 4096);
  EXPECT_EQ(per_layer(in), (16.0 * 4096 * 2 + 32 * 4) * 4096);
}

TEST(PlanCost, SkeletalMatchesRuntimeSpecsExactly) {
  for (const char* name : {"tiny", "llama3.2-1b", "llama3-8b", "llama2-7b"}) {
    const auto cfg = model::resolve_model(name);
    for (auto dtype : {at::kFloat, at::kBFloat16, at::kDouble}) {
      for (int64_t S : {1, 37, 4096}) {
        auto in = inputs(name, S, 2);
        in.compute_bytes = static_cast<int>(c10::elementSize(dtype));
        auto mine = plan::skeletal_bytes(in);
        auto specs = model::skeletal_specs(cfg, 2, S, dtype);
        ASSERT_EQ(mine.size(), specs.size()) << name;
        for (size_t i = 0; i < specs.size(); ++i) {
          EXPECT_EQ(mine[i].name, specs[i].name) << name;
          EXPECT_EQ(mine[i].bytes, static_cast<double>(specs[i].bytes())) << name << " " << specs[i].name;
          EXPECT_EQ(mine[i].always_offloaded, specs[i].always_offloaded) << name << " " << specs[i].name;
        }
      }
    }
  }
}

TEST(PlanCost, KeepPredictionEqualsRuntimeHeldBytesOnCpu) {
  auto cfg = model::resolve_model("tiny");
  cfg.layers = 3;
  model::LlamaModel model(cfg, {});  // CPU, float32
  const int64_t B = 2, S = 48;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
  train::MicroBatch batch{at::randint(cfg.vocab_size, {B, S}, gen, at::kLong),
                          at::randint(cfg.vocab_size, {B, S}, gen, at::kLong)};
  auto keep = runtime::make_policy("keep");
  train::forward_backward(model, *keep, batch, 1.0);

  auto in = inputs("tiny", S, B);
  in.model.layers = 3;
  in.compute_bytes = 4;
  auto pl = plan::make_plan(in);
  EXPECT_EQ(static_cast<double>(keep->peak_held().device), 3 * pl.per_layer_skeletal_bytes);
  EXPECT_EQ(pl.policy("keep").activation_bytes, 3 * pl.per_layer_skeletal_bytes);
}

TEST(PlanCost, LongerSequenceNeverNeedsLessMemory) {
  for (const char* hw : {"h200-141gb", "a800-80gb"}) {
    auto in = inputs("llama3-8b", 1024, 1, hw);
    in.parallel.tp = 8;
    in.parallel.sp = 8;
    double last_skel = 0, last_transient = 0;
    std::vector<double> last_device(4, 0), last_host(4, 0);
    for (int64_t s = 1024; s <= (int64_t{1} << 22); s += 8 * 1024 * 3) {
      in.seq_len = s;
      auto pl = plan::make_plan(in);
      EXPECT_GE(pl.per_layer_skeletal_bytes, last_skel) << s;
      EXPECT_GE(pl.transient_bytes, last_transient) << s;
      last_skel = pl.per_layer_skeletal_bytes;
      last_transient = pl.transient_bytes;
      for (size_t i = 0; i < 4; ++i) {
        const auto& p = pl.policies[i];
        // memo's resident share is opportunistic (it fills what is spare), so its need is the rest.
        const double need = p.device_bytes - p.resident_bytes;
        EXPECT_GE(need, last_device[i]) << p.policy << " at " << s;
        last_device[i] = need;
        if (p.policy != "memo") {
          EXPECT_GE(p.host_bytes, last_host[i]) << p.policy << " at " << s;
          last_host[i] = p.host_bytes;
        }
      }
    }
  }
}

TEST(PlanCost, MemoAlphaNeverExceedsTheHostBound) {
  for (double host_gib : {64.0, 512.0, 2048.0, 16384.0}) {
    for (int64_t s : {8192, 65536, 262144, 1048576}) {
      auto in = inputs("llama3-8b", s);
      in.parallel.tp = 8;
      in.parallel.sp = 8;
      in.hardware.host_bytes = host_gib * (1ull << 30);
      auto pl = plan::make_plan(in);
      const auto& memo = pl.policy("memo");
      if (!memo.alpha) continue;  // does not fit the device at all
      const double share = in.hardware.host_share();
      EXPECT_GE(*memo.alpha, 0.0);
      EXPECT_LE(*memo.alpha, 1.0);
      EXPECT_LE(30 * (pl.fixed_bytes + *memo.alpha * pl.rest_bytes), share * (1 + 1e-12)) << host_gib << " " << s;
      EXPECT_LE(memo.host_bytes, share * (1 + 1e-12));
      EXPECT_LE(*memo.alpha + memo.resident, 1.0 + 1e-12);
    }
  }
}

TEST(PlanCost, ModelFlopsFollowSection7) {
  for (const char* name : {"llama3-8b", "gpt-7b", "llama3.2-1b"}) {
    auto cfg = model::resolve_model(name);
    auto in = inputs(name, 32768, 2);
    auto pl = plan::make_plan(in);
    EXPECT_DOUBLE_EQ(pl.model_flops, train::model_flops_per_step(cfg, 2, 32768)) << name;
    EXPECT_EQ(in.model.total_params(), cfg.total_params()) << name;
    for (const auto& p : pl.policies)
      EXPECT_DOUBLE_EQ(p.mfu, pl.model_flops / (p.step_s * 989e12)) << name << " " << p.policy;
  }
}

TEST(PlanCost, MaxSeqIsTheLongestThatFits) {
  auto in = inputs("llama3-8b", 8192);
  in.parallel.tp = 8;
  in.parallel.sp = 8;
  auto pl = plan::make_plan(in);
  for (const auto& p : pl.policies) {
    ASSERT_GT(p.max_seq, 0) << p.policy;
    EXPECT_EQ(p.max_seq % 8, 0) << p.policy;
    auto at = in;
    at.seq_len = p.max_seq;
    EXPECT_TRUE(plan::make_plan(at).policy(p.policy).fits) << p.policy;
    at.seq_len = p.max_seq + 8;
    EXPECT_FALSE(plan::make_plan(at).policy(p.policy).fits) << p.policy;
  }
  // memo reaches further than recompute, which reaches further than keep.
  EXPECT_GT(pl.policy("memo").max_seq, pl.policy("recompute").max_seq);
  EXPECT_GT(pl.policy("recompute").max_seq, pl.policy("keep").max_seq);
}

TEST(PlanCost, BestIsTheFastestPolicyThatFits) {
  auto in = inputs("llama3-8b", 262144);
  in.parallel.tp = 8;
  in.parallel.sp = 8;
  auto pl = plan::make_plan(in);
  ASSERT_NE(pl.chosen_plan(), nullptr);
  EXPECT_TRUE(pl.chosen_plan()->fits);
  for (const auto& p : pl.policies)
    if (p.fits) EXPECT_LE(pl.chosen_plan()->step_s, p.step_s) << p.policy;
  EXPECT_NE(pl.verdict.find("fits"), std::string::npos) << pl.verdict;
}

template <typename Fn>
std::string input_error(Fn&& fn) {
  try {
    fn();
  } catch (const InputError& e) {
    return e.what();
  }
  return "(no InputError)";
}

TEST(PlanCost, UnknownHardwareIsAnInputError) {
  auto msg = input_error([] { plan::hardware_preset("tpu-v9"); });
  EXPECT_NE(msg.find("unknown hardware \"tpu-v9\""), std::string::npos) << msg;
}

TEST(PlanCost, NonPositiveDegreeIsAnInputError) {
  auto in = inputs("llama3-8b", 4096);
  in.parallel.tp = 0;
  EXPECT_NE(input_error([&] { plan::make_plan(in); }).find("--tp"), std::string::npos);
  in.parallel.tp = 1;
  in.parallel.dp = -2;
  EXPECT_NE(input_error([&] { plan::make_plan(in); }).find("--dp"), std::string::npos);
}

TEST(PlanCost, TpNotDividingKvHeadsIsAnInputError) {
  auto in = inputs("llama3-8b", 4096);  // 32 heads, 8 kv heads
  in.parallel.tp = 16;
  auto msg = input_error([&] { plan::make_plan(in); });
  EXPECT_NE(msg.find("kv heads"), std::string::npos) << msg;
}

TEST(PlanCost, SpOrCpNotDividingSeqLenIsAnInputError) {
  auto in = inputs("llama3-8b", 4100);
  in.parallel.cp = 8;
  EXPECT_NE(input_error([&] { plan::make_plan(in); }).find("--cp 8 must divide --seq-len"), std::string::npos);
  in.parallel.cp = 1;
  in.parallel.tp = 8;
  in.parallel.sp = 8;
  EXPECT_NE(input_error([&] { plan::make_plan(in); }).find("--sp 8 must divide --seq-len"), std::string::npos);
}

TEST(PlanCost, BadHardwareFieldIsAnInputError) {
  auto in = inputs("llama3-8b", 4096);
  in.hardware.h2d_bytes_per_s = 0;
  EXPECT_NE(input_error([&] { plan::make_plan(in); }).find("--h2d-gbps"), std::string::npos);
}

TEST(PlanCli, WritesJsonWithTheDocumentedKeys) {
  auto dir = testing::scratch_dir("plan");
  auto path = (dir / "plan.json").string();
  auto r = testing::run_memo("plan --model llama3-8b --seq-len 262144 --tp 8 --sp 8 --json " + path);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("verdict:"), std::string::npos) << r.output;
  std::ifstream f(path);
  auto j = nlohmann::json::parse(f);
  for (const char* key : {"per_layer_skeletal_bytes", "host_bytes", "alpha", "step_s", "mfu", "max_seq",
                          "weight_bytes", "grad_bytes", "optimizer_bytes", "transient_bytes", "policies"})
    EXPECT_TRUE(j.contains(key)) << key;
  for (const char* p : {"keep", "recompute", "offload", "memo"}) EXPECT_TRUE(j["max_seq"].contains(p)) << p;
  EXPECT_EQ(j["per_layer_skeletal_bytes"].get<double>(), 139400.0 / 8 * 262144);
}

TEST(PlanCli, ProfileMeasuresThePresentDevice) {
  auto r = testing::run_memo("plan --model tiny --seq-len 1024 --profile");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("profile    measured on"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("(profiled)"), std::string::npos) << r.output;
}

TEST(PlanCli, BadInputExits2NamingTheField) {
  auto r = testing::run_memo("plan --hardware tpu-v9");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("--hardware"), std::string::npos) << r.output;
  r = testing::run_memo("plan --tp 3");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("--tp 3"), std::string::npos) << r.output;
}

// Every stage outside 0-3 is refused, -1 included (the planner's internal
// "default" is not a value the command takes).
TEST(PlanCli, ZeroStageOutsideZeroToThreeExits2) {
  for (const char* stage : {"-1", "4"}) {
    auto r = testing::run_memo(std::string("plan --model tiny --seq-len 1024 --zero ") + stage);
    EXPECT_EQ(r.code, 2) << r.output;
    EXPECT_NE(r.output.find("--zero must be 0, 1, 2 or 3"), std::string::npos) << r.output;
  }
}

}  // namespace
}  // namespace memo
