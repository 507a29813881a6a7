// Every numeric option is finite and in range, and the message names it
// (issue 15, class 6): inf, nan, out-of-range and non-decimal numbers on the
// command line and in the TOML file, unknown kernel names, a negative
// position limit in a config.json, and file-system errors (a name over 255
// bytes) all exit 2 with a message naming the option or the path, never a
// library's own text and never a silently different value.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "cli_runner.h"

namespace memo {
namespace {

using testing::run_memo;

struct BadNumber {
  const char* name;
  std::string args;
  std::string expect;  // fragment of the message: the option's name
};

std::vector<BadNumber> bad_numbers() {
  auto dir = testing::scratch_dir("cli_numbers");
  auto inf_lr = testing::write_text(dir / "inf_lr.toml", "lr = inf\n");
  auto nan_wd = testing::write_text(dir / "nan_wd.toml", "weight_decay = nan\n");
  auto neg_inf_alpha = testing::write_text(dir / "alpha.toml", "alpha = -inf\n");
  auto neg_pos = testing::write_text(
      dir / "negpos.json",
      R"({"model_type":"llama","vocab_size":256,"hidden_size":64,"num_hidden_layers":1,)"
      R"("num_attention_heads":4,"intermediate_size":64,"max_position_embeddings":-1})");
  auto csv = testing::write_text(dir / "x.csv", "id,lower,upper,size\na,0,2,4\n");
  const std::string q = " --steps 1 --seq-len 16 --batch 1 ";
  const std::string long_name = (dir / std::string(300, 'x')).string();
  return {
      {"train_lr_inf", "train" + q + "--lr inf", "--lr"},
      {"train_lr_overflow", "train" + q + "--lr 1e400", "--lr"},
      {"train_weight_decay_inf", "train" + q + "--weight-decay inf", "--weight-decay"},
      {"train_clip_inf", "train" + q + "--clip inf", "--clip"},
      {"train_host_memory_inf", "train" + q + "--host-memory-gib inf", "--host-memory-gib"},
      {"train_peak_tflops_inf", "train" + q + "--peak-tflops inf", "--peak-tflops"},
      {"train_lr_hex_float", "train" + q + "--lr 0x1p3", "--lr"},
      {"train_seed_negative", "train" + q + "--seed -1", "--seed"},
      {"train_seed_over_uint64", "train" + q + "--seed 18446744073709551616", "--seed"},
      {"train_warmup_over_int64", "train" + q + "--warmup 99999999999999999999", "--warmup"},
      {"train_steps_hex", "train --seq-len 16 --batch 1 --steps 0x10", "--steps"},
      {"train_attention_unknown", "train" + q + "--attention foo", "attention \"foo\""},
      {"train_toml_lr_inf", "train" + q + "--config " + inf_lr, "lr must be a finite number"},
      {"train_toml_weight_decay_nan", "train" + q + "--config " + nan_wd, "weight_decay must be a finite number"},
      {"train_toml_alpha_minus_inf", "train" + q + "--config " + neg_inf_alpha, "alpha must be a finite number"},
      {"train_negative_max_position", "train" + q + "--model " + neg_pos, "max_position_embeddings"},
      {"train_model_name_too_long", "train" + q + "--model " + long_name, long_name},
      {"bench_peak_tflops_inf", "bench --peak-tflops inf", "--peak-tflops"},
      {"bench_seed_negative", "bench --seed -1", "--seed"},
      {"bench_attention_unknown", "bench --layers 1 --seq-len 16 --policies keep --attention foo",
       "attention \"foo\""},
      {"eval_seq_len_over_int64", "eval --model x --data y --seq-len 99999999999999999999", "--seq-len"},
      {"plan_device_memory_inf", "plan --device-gib inf", "--device-gib"},
      {"plan_host_memory_inf", "plan --host-gib inf", "--host-gib"},
      {"plan_peak_tflops_inf", "plan --peak-tflops inf", "--peak-tflops"},
      {"plan_h2d_nan", "plan --h2d-gbps nan", "--h2d-gbps"},
      {"plan_batch_over_int64", "plan --batch 99999999999999999999", "--batch"},
      {"plan_model_name_too_long", "plan --model " + long_name, long_name},
      {"dsa_time_limit_nan", "dsa " + csv + " --time-limit nan", "--time-limit"},
      {"dsa_time_limit_inf", "dsa " + csv + " --time-limit inf", "--time-limit"},
      {"dsa_capacity_over_int64", "dsa " + csv + " --capacity 99999999999999999999", "--capacity"},
      {"dsa_seed_negative", "dsa " + csv + " --seed -1", "--seed"},
  };
}

class BadNumberInput : public ::testing::TestWithParam<BadNumber> {};

TEST_P(BadNumberInput, ExitsWithCode2NamingTheOption) {
  const auto& c = GetParam();
  auto r = run_memo(c.args);
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find(c.expect), std::string::npos) << "expected \"" << c.expect << "\" in:\n" << r.output;
  EXPECT_EQ(r.output.find("filesystem error"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("terminate called"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("step 1/"), std::string::npos) << "it ran:\n" << r.output;
}

INSTANTIATE_TEST_SUITE_P(Cases, BadNumberInput, ::testing::ValuesIn(bad_numbers()),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(Numbers, InRangeValuesStillWorkAndIntegersAreDecimal) {
  // The largest seed, a negative zero and an exponent are fine; "03" is 3
  // (CLI11 alone reads a leading zero as octal: "010" would be 8 steps).
  auto r = run_memo("train --steps 03 --seq-len 16 --batch 1 --seed 18446744073709551615 --lr 3e-3 --alpha -0");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("seed 18446744073709551615"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("step 3/3"), std::string::npos) << r.output;
  r = run_memo("plan --model tiny --seq-len 1024 --tp 010");
  EXPECT_EQ(r.code, 2) << r.output;  // 10 does not divide 4 heads (as 8 would not either)
  EXPECT_NE(r.output.find("--tp 10 must divide"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace memo
