// The plan's peak split (plan/chunk_plan.h: static, whole-sequence, chunk
// buffers, transients) against what a run measures (train/memory_split.h,
// `peak_split` in memo train's summary), on CPU with the memory meter, under
// keep, recompute, offload and memo, whole layers and chunks of 64 of 512
// tokens (float32, a model whose hidden width differs from its K, V width).
// Static, whole-sequence and chunk buffers agree to the byte (static within
// 64 KiB: what the plan does not list, e.g. the RoPE table); the transients,
// which the run gives as the rest of its peak and the plan as the largest
// working set from per-token formulas, within 2x either way.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "cli_runner.h"
#include "model/config.h"
#include "plan/chunk_plan.h"
#include "plan/hardware.h"
#include "train/trainer.h"

namespace memo {
namespace {

struct SplitCase {
  const char* policy;
  int64_t chunk;  // 0: whole layers
};

std::string case_name(const SplitCase& c) { return std::string(c.policy) + "_c" + std::to_string(c.chunk); }

// A small Llama whose hidden width (128) differs from its K, V width per
// token (2 nkv d = 64), so that a part counted with one in place of the
// other shows.
std::string model_file() {
  static const std::string path = [] {
    const auto dir = testing::scratch_dir("peak_split_plan");
    std::filesystem::create_directories(dir);
    std::ofstream(dir / "config.json")
        << R"({"model_type":"llama","vocab_size":256,"hidden_size":128,"num_hidden_layers":3,)"
        << R"("num_attention_heads":4,"num_key_value_heads":1,"intermediate_size":352,"tie_word_embeddings":true})";
    return (dir / "config.json").string();
  }();
  return path;
}

class PeakSplitAgainstPlan : public ::testing::TestWithParam<SplitCase> {};

TEST_P(PeakSplitAgainstPlan, MeasuredPartsAreThePlans) {
  const auto& p = GetParam();
  train::TrainOptions o;
  o.model = model_file();
  o.layers = 3;
  o.seq_len = 512;
  o.batch = 1;
  o.steps = 2;
  o.warmup = 0;
  o.device = "cpu";
  o.dtype = "float32";
  o.policy = p.policy;
  o.chunk_tokens = std::to_string(p.chunk);
  o.memory_check = false;
  if (std::string(p.policy) == "memo") o.alpha = 0.5;
  train::Trainer trainer(o);
  const auto summary = trainer.run([](const train::StepRecord&) {});
  const auto& got = summary.peak_split;

  auto config = model::resolve_model(o.model);
  config.layers = o.layers;
  plan::PlanInputs in;
  in.model = model::to_plan_shape(config);
  in.seq_len = o.seq_len;
  in.batch = o.batch;
  in.compute_bytes = 4;
  in.master_bytes = 4;
  in.zero = 0;
  in.hardware = plan::hardware_preset("h200-141gb");
  in.loss_chunk_bytes = 0;
  const auto want = plan::chunk_memory(in, p.policy, p.chunk);
  std::printf("%s chunk %lld: static %lld / %.0f, whole %lld / %.0f, buffers %lld / %.0f, transient %lld / %.0f, "
              "peak %lld / %.0f\n",
              p.policy, (long long)p.chunk, (long long)got.static_bytes, want.static_bytes,
              (long long)got.whole_sequence_bytes, want.whole_sequence_bytes, (long long)got.chunk_buffer_bytes,
              want.chunk_buffer_bytes, (long long)got.transient_bytes, want.chunk_transient_bytes,
              (long long)summary.peak_device_bytes, want.device_bytes - want.reserve_bytes);
  EXPECT_NEAR(static_cast<double>(got.static_bytes), want.static_bytes, 64.0 * 1024);
  EXPECT_EQ(static_cast<double>(got.whole_sequence_bytes), want.whole_sequence_bytes);
  EXPECT_EQ(static_cast<double>(got.chunk_buffer_bytes), want.chunk_buffer_bytes);
  EXPECT_LE(static_cast<double>(got.transient_bytes), 2.0 * want.chunk_transient_bytes);
  EXPECT_GE(static_cast<double>(got.transient_bytes), 0.5 * want.chunk_transient_bytes);
}

INSTANTIATE_TEST_SUITE_P(Policies, PeakSplitAgainstPlan,
                         ::testing::Values(SplitCase{"keep", 0}, SplitCase{"keep", 64}, SplitCase{"recompute", 0},
                                           SplitCase{"recompute", 64}, SplitCase{"offload", 0},
                                           SplitCase{"offload", 64}, SplitCase{"memo", 0}, SplitCase{"memo", 64}),
                         [](const auto& info) { return case_name(info.param); });

}  // namespace
}  // namespace memo
