// --chunk-tokens auto under --sp > 1 (train/chunking.h): the chunk memory
// model it resolves with is the whole sequence over sp GPUs (the head-layout
// K, V and dK, dV and the waiting dq and inputs counted), and the chunk it
// picks fits that model while one unit more does not; on a device sized so
// that the single-device model of the shard fits a chunk, the sp model picks
// a smaller one. Also the parts the run's header lists under sp.
#include <gtest/gtest.h>

#include <string>

#include "model/config.h"
#include "plan/chunk_plan.h"
#include "train/chunking.h"

namespace memo {
namespace {

// The tiny model (4 heads, 2 kv heads) at 4096 tokens per rank, recompute.
train::ChunkContext context(int64_t sp, double device_bytes) {
  train::ChunkContext ctx;
  ctx.config = model::resolve_model("tiny");
  ctx.batch = 1;
  ctx.seq_len = 4096;  // the rank's shard
  ctx.policy = "recompute";
  ctx.sp = sp;
  ctx.device_bytes = device_bytes;
  return ctx;
}

TEST(ChunkingUnderSp, PlanInputsAreTheWholeSequenceOverSpGpus) {
  auto ctx = context(2, 1e9);
  ctx.dp = 2;
  ctx.zero = 2;
  const auto in = train::chunk_plan_inputs(ctx);
  EXPECT_EQ(in.parallel.sp, 2);
  EXPECT_EQ(in.parallel.dp, 2);
  EXPECT_EQ(in.zero, 2);
  EXPECT_EQ(in.seq_len, 2 * 4096);
  EXPECT_EQ(in.batch, 1);
  // The plan's shard is the run's.
  EXPECT_EQ(plan::chunk_memory(in, "recompute", 0).chunk_tokens, 4096);
}

TEST(ChunkingUnderSp, AutoFitsTheSpModelAndIsSmallerThanTheSingleDeviceOnes) {
  const int64_t unit = 512;  // 4096 / 8
  // A device that the single-device model of the shard fills at 2048 tokens.
  const auto single_in = train::chunk_plan_inputs(context(1, 1e12));
  const double device = plan::chunk_memory(single_in, "recompute", 2048).device_bytes;
  const int64_t single = train::resolve_chunk_tokens({true, 0}, context(1, device));
  EXPECT_EQ(single, 2048);

  const auto ctx = context(2, device);
  const int64_t chosen = train::resolve_chunk_tokens({true, 0}, ctx);
  const auto in = train::chunk_plan_inputs(ctx);
  EXPECT_EQ(chosen, plan::auto_chunk_tokens(in, "recompute", unit));
  ASSERT_GT(chosen, 0);
  EXPECT_LT(chosen, single);  // the sp parts take what the single-device model gave the chunk
  EXPECT_EQ(chosen % unit, 0);
  EXPECT_TRUE(plan::chunk_memory(in, "recompute", chosen).fits_device);
  EXPECT_FALSE(plan::chunk_memory(in, "recompute", chosen + unit).fits_device);
  // The single-device chunk does not fit under sp.
  EXPECT_FALSE(plan::chunk_memory(in, "recompute", single).fits_device);
}

TEST(ChunkingUnderSp, NothingFitsNamesTheSpDegree) {
  const auto ctx = context(2, 1.0);
  try {
    train::resolve_chunk_tokens({true, 0}, ctx);
    FAIL() << "a 1-byte device fit a chunk";
  } catch (const std::exception& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("--chunk-tokens auto"), std::string::npos) << what;
    EXPECT_NE(what.find("--sp 2"), std::string::npos) << what;
  }
}

// The header's parts under sp are the plan's, by name, with per-token bytes
// from the shapes: tiny's kv heads (2) split over sp 2, replicated over sp 4.
TEST(ChunkingUnderSp, WholeSequenceTensorsListTheHeadLayoutParts) {
  const auto c = model::resolve_model("tiny");
  const int64_t d = c.head_dim, kv = 2 * c.kv_heads * d, f = 4;  // float32
  const auto one = train::whole_sequence_tensors(c, c10::ScalarType::Float, 1);
  ASSERT_EQ(one.size(), 3u);
  EXPECT_EQ(one[2].name, plan::whole_part::kKvAccumulators);
  for (int64_t sp : {2, 4}) {
    const auto parts = train::whole_sequence_tensors(c, c10::ScalarType::Float, sp);
    ASSERT_EQ(parts.size(), 5u) << sp;
    EXPECT_EQ(parts[0].name, plan::whole_part::kHidden);
    EXPECT_EQ(parts[0].bytes_per_token, 2 * c.hidden * f);
    EXPECT_EQ(parts[1].name, plan::whole_part::kLayerKv);
    EXPECT_EQ(parts[1].bytes_per_token, kv * f);
    const int64_t head_kv = 2 * std::max<int64_t>(c.kv_heads, sp) * d;
    EXPECT_EQ(parts[2].name, plan::whole_part::kHeadKv);
    EXPECT_EQ(parts[2].bytes_per_token, head_kv * f) << sp;
    EXPECT_EQ(parts[3].name, plan::whole_part::kHeadKvAccumulators);
    EXPECT_EQ(parts[3].bytes_per_token, head_kv * f) << sp;
    EXPECT_EQ(parts[4].name, plan::whole_part::kWaiting);
    EXPECT_EQ(parts[4].bytes_per_token, (c.heads * d + c.hidden) * f);
    const auto line = train::describe_whole_sequence(c, c10::ScalarType::Float, sp);
    EXPECT_NE(line.find("K and V in head layout"), std::string::npos) << line;
    EXPECT_NE(line.find("per token of a rank's shard"), std::string::npos) << line;
  }
  EXPECT_EQ(train::whole_sequence_tensors(c, c10::ScalarType::Float, 2, false).size(), 1u);  // whole layers
}

}  // namespace
}  // namespace memo
