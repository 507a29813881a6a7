// Know the size before allocating it. A run whose estimate (weights,
// gradients, AdamW state, the activations the policy keeps, the working set,
// the pinned pool) exceeds the machine's memory stops with exit 2 before
// allocating, saying what it needs, what there is and what would fit; sizes
// beyond int64 are an InputError naming the quantity. The estimate is checked
// against the bytes a run really holds (the CPU memory meter), and the
// suggestions it makes are checked to fit.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <regex>
#include <string>

#include "cli_runner.h"
#include "core/error.h"
#include "memory/host_memory.h"
#include "model/config.h"
#include "plan/cost_model.h"
#include "train/fit_check.h"
#include "train/trainer.h"

namespace memo {
namespace {

using testing::run_memo;

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// Every CLI case runs under an address-space limit it sets up itself, so a
// build without the check fails with an allocation error instead of
// exhausting the machine.
const std::string kLimit = "ulimit -v 8000000; ";  // 8 GB (KiB)

struct TooBig {
  const char* name;
  std::string args;
  std::vector<std::string> expect;  // fragments of the message
};

void PrintTo(const TooBig& c, std::ostream* os) { *os << c.name; }


std::vector<TooBig> too_big() {
  auto dir = testing::scratch_dir("fit_cli");
  const std::string llama = R"({"model_type":"llama","num_hidden_layers":2,"num_attention_heads":4,)"
                            R"("num_key_value_heads":2,"intermediate_size":352,)";
  auto vocab = testing::write_text(dir / "vocab.json", llama + R"("vocab_size":1000000000000,"hidden_size":128})");
  auto hidden = testing::write_text(dir / "hidden.json", llama + R"("vocab_size":256,"hidden_size":1099511627776})");
  return {
      {"seq_len_1e8", "train --seq-len 100000000 --steps 1",
       {"does not fit in memory", "needs about", "activations kept for backward", "the longest --seq-len that fits is"}},
      {"a_billion_layers", "train --layers 1000000000 --steps 1 --seq-len 16 --batch 1",
       {"does not fit in memory", "alone do not fit", "layers do (--layers"}},
      {"vocab_1e12", "train --model " + vocab + " --steps 1 --seq-len 16 --batch 1",
       {"does not fit in memory", "T parameters", "not even with one layer"}},
      {"hidden_2_40", "train --model " + hidden + " --steps 1 --seq-len 16 --batch 1",
       {"the parameter count of model", "overflows"}},
      {"seq_len_2_63", "train --seq-len 9223372036854775807 --steps 1", {"seq_len + 1 overflows"}},
      {"batch_2_32_by_grad_accum_2_32", "train --batch 4294967296 --grad-accum 4294967296 --steps 1 --seq-len 16",
       {"tokens per step (batch x seq_len x grad_accum) overflows"}},
      {"llama3_8b_on_a_cpu", "train --model llama3-8b --device cpu --steps 1 --seq-len 16 --batch 1",
       {"does not fit in memory", "AdamW state 59.", "alone do not fit"}},
      {"bench_seq_len_1e8", "bench --seq-len 100000000 --steps 1", {"memo bench: this run does not fit"}},
  };
}

class TooBigForTheMachine : public ::testing::TestWithParam<TooBig> {};

TEST_P(TooBigForTheMachine, StopsWithExit2BeforeAllocatingAndSaysWhatFits) {
  const auto& c = GetParam();
  auto r = run_memo(c.args, kLimit);
  EXPECT_EQ(r.code, 2) << r.output;
  for (const auto& e : c.expect)
    EXPECT_NE(r.output.find(e), std::string::npos) << "expected \"" << e << "\" in:\n" << r.output;
  EXPECT_EQ(r.output.find("step 1/"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("(torch)"), std::string::npos) << "an allocation was tried: " << r.output;
}

INSTANTIATE_TEST_SUITE_P(Cases, TooBigForTheMachine, ::testing::ValuesIn(too_big()),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(FitCheck, EvalOfAHugeWindowStopsBeforeAllocating) {
  auto dir = testing::scratch_dir("fit_eval");
  auto r = run_memo("train --steps 1 --seq-len 16 --batch 1 --out " + (dir / "o").string() + " --checkpoint-every 1");
  ASSERT_EQ(r.code, 0) << r.output;
  auto data = testing::write_text(dir / "d.txt", std::string(4096, 'a'));
  auto e = run_memo("eval --model " + (dir / "o/checkpoints/step-00000001").string() + " --data " + data +
                        " --seq-len 100000000",
                    kLimit);
  EXPECT_EQ(e.code, 2) << e.output;
  EXPECT_NE(e.output.find("memo eval: this run does not fit in memory"), std::string::npos) << e.output;
  std::filesystem::remove_all(dir);
}

TEST(FitCheck, AnAddressSpaceLimitIsHonouredAndAnotherPolicyIsSuggested) {
  // 8 layers of the tiny model at 32K tokens keep about 2 GiB of activations
  // under keep; with 2.5 GB of address space (a libtorch process maps about
  // 0.7 GB at start) that does not fit, recompute (about 0.7 GiB) does.
  auto r = run_memo("train --layers 8 --seq-len 32768 --batch 1 --steps 1", "ulimit -v 2500000; ");
  EXPECT_EQ(r.code, 2) << r.output;
  if (memory::host_memory().mem_available > (int64_t{3} << 30))  // else MemAvailable is the tighter limit
    EXPECT_NE(r.output.find("ulimit -v (RLIMIT_AS)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("--policy recompute fits"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("(torch)"), std::string::npos) << r.output;
}

TEST(FitCheck, TheDefaultRunAndTheTestShapesPassTheCheckOnThisMachine) {
  train::TrainOptions o;  // memo train with no options
  auto cfg = model::resolve_model(o.model);
  auto r = train::fit_request(o, cfg, c10::Device(c10::DeviceType::CPU), c10::ScalarType::Float);
  EXPECT_TRUE(train::fit_problem(r, train::measure_memory(r)).empty());
  // Even in 1 GiB.
  train::MemoryAvailable small{1 * kGiB, "test", 1 * kGiB, "test", 0.5 * kGiB, "test"};
  EXPECT_TRUE(train::estimate_fit(r, small).fits);
}

// The run's real peak (the CPU memory meter counts every byte the trainer
// allocates) against the estimate: the estimate must not be below it (the
// check would let through runs that fail) nor far above it (it would refuse
// runs that fit).
class EstimateAgainstMeasured : public ::testing::TestWithParam<std::string> {};

TEST_P(EstimateAgainstMeasured, BoundsThePeakFromAboveWithinAFactorOfTwo) {
  train::TrainOptions o;
  o.seq_len = 512;
  o.batch = 4;
  o.layers = 4;
  o.steps = 2;
  o.policy = GetParam();
  o.alpha = 0.5;
  o.host_memory_gib = 1;
  o.device = "cpu";
  train::Trainer t(o);
  train::TrainSummary s = t.run([](const train::StepRecord&) {});
  auto cfg = model::resolve_model(o.model);
  cfg.layers = o.layers;
  auto r = train::fit_request(o, cfg, c10::Device(c10::DeviceType::CPU), c10::ScalarType::Float);
  train::MemoryAvailable lots{64 * kGiB, "test", 64 * kGiB, "test", 1 * kGiB, "test"};
  const auto e = train::estimate_fit(r, lots);
  // On CPU the estimate holds the host pool too (host RAM holds both), the
  // meter only device allocations (the pool is memo's own mapping).
  const double estimate = e.device_need - e.reserve - e.pool;
  const double measured = static_cast<double>(s.peak_device_bytes);
  std::printf("%-10s estimate %.2f MiB (without the reserve), measured peak %.2f MiB, ratio %.3f\n",
              GetParam().c_str(), estimate / (1 << 20), measured / (1 << 20), estimate / measured);
  EXPECT_GE(estimate, measured) << "estimate " << estimate << " measured " << measured;
  EXPECT_LE(estimate, 2.0 * measured) << "estimate " << estimate << " measured " << measured;
}

INSTANTIATE_TEST_SUITE_P(Policies, EstimateAgainstMeasured, ::testing::Values("keep", "recompute", "offload", "memo"));

TEST(FitCheck, TheLongestSeqLenItSuggestsFitsAndOneMoreTokenDoesNot) {
  train::TrainOptions o;
  o.seq_len = 1 << 20;
  o.batch = 2;
  auto cfg = model::resolve_model("tiny");
  auto r = train::fit_request(o, cfg, c10::Device(c10::DeviceType::CPU), c10::ScalarType::Float);
  // Batch 1 at 1M tokens needs about 26 GiB, batch 2 about 52 GiB.
  train::MemoryAvailable have{40 * kGiB, "test RAM", 40 * kGiB, "test RAM", 1 * kGiB, "test pool"};
  const auto msg = train::fit_problem(r, have);
  ASSERT_FALSE(msg.empty());
  EXPECT_NE(msg.find("there is 40.00 GiB (test RAM)"), std::string::npos) << msg;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(msg, m, std::regex("longest --seq-len that fits is (\\d+) with keep"))) << msg;
  r.seq_len = std::stoll(m[1]);
  EXPECT_TRUE(train::estimate_fit(r, have).fits) << msg;
  r.seq_len += 1;
  EXPECT_FALSE(train::estimate_fit(r, have).fits) << msg;
  ASSERT_TRUE(std::regex_search(msg, m, std::regex("--batch (\\d+) fits at this seq_len"))) << msg;
  r.seq_len = o.seq_len;
  r.batch = std::stoll(m[1]);
  EXPECT_TRUE(train::estimate_fit(r, have).fits) << msg;
}

// A run on whole layers that does not fit, where chunks would: the check
// suggests the largest power-of-two chunk that fits, and twice that does not.
TEST(FitCheck, TheChunkSizeItSuggestsFitsAndTwiceItDoesNot) {
  train::TrainOptions o;
  o.seq_len = 1 << 16;
  o.batch = 1;
  o.policy = "recompute";
  auto cfg = model::resolve_model("tiny");
  auto r = train::fit_request(o, cfg, c10::Device(c10::DeviceType::CPU), c10::ScalarType::Float);
  auto chunked = r;
  chunked.chunk_tokens = 1024;
  const double whole = train::estimate_fit(r, train::MemoryAvailable{}).device_need;
  const double small = train::estimate_fit(chunked, train::MemoryAvailable{}).device_need;
  ASSERT_LT(small, whole);
  const double room = (whole + small) / 2;
  train::MemoryAvailable have{room, "test RAM", room, "test RAM", 1 * kGiB, "test pool"};
  const auto msg = train::fit_problem(r, have);
  std::smatch m;
  ASSERT_TRUE(std::regex_search(msg, m, std::regex("What fits: --chunk-tokens (\\d+) fits"))) << msg;
  r.chunk_tokens = std::stoll(m[1]);
  EXPECT_GE(r.chunk_tokens, 1024) << msg;
  EXPECT_TRUE(train::estimate_fit(r, have).fits) << msg;
  r.chunk_tokens *= 2;
  if (r.chunk_tokens < r.seq_len) EXPECT_FALSE(train::estimate_fit(r, have).fits) << msg;
}

TEST(FitCheck, APoolBeyondItsBudgetIsNamed) {
  train::TrainOptions o;
  o.policy = "offload";
  o.host_memory_gib = 0.001;  // about 1 MiB; offload keeps every layer's 32 MiB skeletal set there
  auto cfg = model::resolve_model("tiny");
  auto r = train::fit_request(o, cfg, c10::Device(c10::DeviceType::CPU), c10::ScalarType::Float);
  const auto msg = train::fit_problem(r, train::measure_memory(r));
  EXPECT_NE(msg.find("The pinned host pool of offload needs"), std::string::npos) << msg;
  EXPECT_NE(msg.find("--host-memory-gib 0.001"), std::string::npos) << msg;
  EXPECT_NE(msg.find("--policy memo fits"), std::string::npos) << msg;
}

TEST(FitCheck, ForMemoWithAnAlphaTheLargestAlphaThatFitsIsSuggested) {
  train::TrainOptions o;
  o.policy = "memo";
  o.layers = 4;
  o.alpha = 1.0;
  auto cfg = model::resolve_model("tiny");
  cfg.layers = 4;
  auto r = train::fit_request(o, cfg, c10::Device(c10::DeviceType::CPU), c10::ScalarType::Float);
  train::MemoryAvailable have{8 * kGiB, "test RAM", 8 * kGiB, "test RAM", 10.0 * (1 << 20), "a 10 MiB pool"};
  const auto msg = train::fit_problem(r, have);
  std::smatch m;
  ASSERT_TRUE(std::regex_search(msg, m, std::regex("--alpha (0\\.\\d+) fits"))) << msg;
  r.alpha = std::stod(m[1]);
  EXPECT_TRUE(train::estimate_fit(r, have).fits) << msg;
  r.alpha = *r.alpha + 0.001;
  EXPECT_FALSE(train::estimate_fit(r, have).fits) << msg;
}

// memo's device tier on CUDA (the check is pure: a CUDA device need not
// exist): a pool budget short of memo's x, o, lse moves the fewest whole
// units' onto the device side, as many as the device has room for; what it
// cannot take, x-only units leave off the pool (o and lse of a unit each,
// recomputed in backward): the run fits, and pool, tier and x-only bytes add
// up to the all-host pool, under sp 2 too. A budget short even of that
// stops the run, the message naming them. On CPU (no spare device apart from the host) x-only units cover all
// of the shortfall.
TEST(FitCheck, MemosDeviceTierMovesTheBudgetsShortfallToTheDevice) {
  train::TrainOptions o;
  o.policy = "memo";
  o.layers = 4;
  o.seq_len = 1024;
  o.chunk_tokens = "256";
  auto cfg = model::resolve_model("tiny");
  cfg.layers = 4;
  const auto cuda = c10::Device(c10::DeviceType::CUDA, 0);
  auto r = train::fit_request(o, cfg, cuda, c10::ScalarType::BFloat16);
  r.chunk_tokens = 256;
  const double roomy_pool = 64 * kGiB;
  train::MemoryAvailable have{8 * kGiB, "test GPU", 64 * kGiB, "test RAM", roomy_pool, "a roomy pool"};
  const auto all_host = train::estimate_fit(r, have);
  ASSERT_TRUE(all_host.fits);
  ASSERT_GT(all_host.pool, 0.0);
  EXPECT_EQ(all_host.fixed_on_device, 0.0);
  EXPECT_EQ(all_host.attention_recomputed, 0.0);
  have.pool_budget = 0.5 * all_host.pool;  // half the pool
  have.pool_what = "half the pool";
  const auto tier = train::estimate_fit(r, have);
  EXPECT_TRUE(tier.fits);
  EXPECT_GT(tier.fixed_on_device, 0.0);
  EXPECT_EQ(tier.attention_recomputed, 0.0);  // 8 GiB hold all of it
  EXPECT_LE(tier.pool, have.pool_budget);
  EXPECT_NEAR(tier.pool + tier.fixed_on_device, all_host.pool, 1.0);
  EXPECT_NEAR(tier.activations - all_host.activations, tier.fixed_on_device, 1.0);
  // A device with room for part of the tier: the tier takes what fits (the
  // device is full to within a unit), x-only units the rest.
  const double unit_tokens = static_cast<double>(r.batch) * 256;
  const double unit_ol = unit_tokens * (2.0 * static_cast<double>(cfg.heads * cfg.head_dim) + 4.0 * cfg.heads);  // o, lse
  const double unit_xol = unit_ol + unit_tokens * 2.0 * static_cast<double>(cfg.hidden);                        // and x
  have.device = tier.device_need - 2.5 * unit_xol;
  const auto part = train::estimate_fit(r, have);
  EXPECT_TRUE(part.fits) << train::fit_problem(r, have);
  EXPECT_NEAR(part.fixed_on_device, tier.fixed_on_device - 3 * unit_xol, 1.0);
  EXPECT_LE(part.device_need, have.device);
  EXPECT_GT(part.device_need + unit_xol, have.device);
  EXPECT_GT(part.attention_recomputed, 0.0);
  EXPECT_NEAR(std::fmod(part.attention_recomputed, unit_ol), 0.0, 1.0);  // whole units
  EXPECT_LE(part.pool, have.pool_budget);
  EXPECT_GT(part.pool + unit_ol, have.pool_budget);  // the fewest x-only units
  EXPECT_NEAR(part.pool + part.fixed_on_device + part.attention_recomputed, all_host.pool, 1.0);
  // A budget short even with every unit the tier does not hold x-only: the message names them.
  have.pool_budget = 0.05 * all_host.pool;
  auto msg = train::fit_problem(r, have);
  EXPECT_FALSE(train::estimate_fit(r, have).fits);
  EXPECT_NE(msg.find("its device tier"), std::string::npos) << msg;
  EXPECT_NE(msg.find("memo's x-only units"), std::string::npos) << msg;
  // Under sp 2 (the ranks agree on the units) the same: the half pool fits.
  have.pool_budget = 0.5 * all_host.pool;
  auto sp = r;
  sp.sp = 2;
  const auto under_sp = train::estimate_fit(sp, have);
  EXPECT_TRUE(under_sp.fits);
  EXPECT_NEAR(under_sp.attention_recomputed, part.attention_recomputed, 1.0);
  EXPECT_NEAR(under_sp.fixed_on_device, part.fixed_on_device, 1.0);
  // On CPU (no tier) x-only units cover all of the shortfall: o and lse are
  // about half of x, o, lse here (float32: a 4 + nh 4 of h 4 + a 4 + nh 4
  // per token), so 60% of the pool fits with the fewest of them, 40% does not.
  auto cpu = train::fit_request(o, cfg, c10::Device(c10::DeviceType::CPU), c10::ScalarType::Float);
  cpu.chunk_tokens = 256;
  have.device = 8 * kGiB;
  const double cpu_pool = train::estimate_fit(cpu, train::MemoryAvailable{8 * kGiB, "", 64 * kGiB, "", roomy_pool, ""}).pool;
  const double cpu_unit_ol = unit_tokens * (4.0 * static_cast<double>(cfg.heads * cfg.head_dim) + 4.0 * cfg.heads);
  have.pool_budget = 0.6 * cpu_pool;
  const auto on_cpu = train::estimate_fit(cpu, have);
  EXPECT_TRUE(on_cpu.fits) << train::fit_problem(cpu, have);
  EXPECT_EQ(on_cpu.fixed_on_device, 0.0);
  EXPECT_NEAR(std::fmod(on_cpu.attention_recomputed, cpu_unit_ol), 0.0, 1.0);  // whole units
  EXPECT_LE(on_cpu.pool, have.pool_budget);
  EXPECT_GT(on_cpu.pool + cpu_unit_ol, have.pool_budget);  // the fewest x-only units
  EXPECT_NEAR(on_cpu.pool + on_cpu.attention_recomputed, cpu_pool, 1.0);
  have.pool_budget = 0.4 * cpu_pool;
  EXPECT_FALSE(train::estimate_fit(cpu, have).fits);
  EXPECT_NE(train::fit_problem(cpu, have).find("memo's x-only units"), std::string::npos) << train::fit_problem(cpu, have);
}

// On many ranks the check counts this rank's model state as memo train
// holds it at ZeRO 1-3 (plan::model_state_bytes and what a step adds), less
// at each stage: a run of Llama-3-8B that does not fit one H200-sized device
// at stage 0 on 8 ranks fits at stage 3. One rank (or stage 0) counts the
// whole model as before.
TEST(FitCheck, ZeroOnManyRanksCountsThisRanksShards) {
  using train::estimate_fit;
  using train::FitEstimate;
  using train::fit_problem;
  train::FitRequest r;
  r.config = model::resolve_model("llama3-8b");
  r.seq_len = 4096;
  r.policy = "keep";
  r.device = c10::Device(c10::DeviceType::CUDA, 0);
  r.compute_dtype = c10::ScalarType::BFloat16;
  r.zero_world = 8;
  train::MemoryAvailable have;
  have.device = have.host = 1e15;
  std::vector<FitEstimate> by_stage;
  for (int zero = 0; zero <= 3; ++zero) {
    r.zero = zero;
    by_stage.push_back(estimate_fit(r, have));
  }
  const auto shape = model::to_plan_shape(r.config);
  const double P = static_cast<double>(r.config.total_params());
  EXPECT_DOUBLE_EQ(by_stage[0].weights + by_stage[0].grads + by_stage[0].optimizer, P * (2 + 4 + 4 + 8));
  for (int zero = 1; zero <= 3; ++zero) {
    const auto& e = by_stage[static_cast<size_t>(zero)];
    const auto held = plan::model_state_bytes(shape, zero, 8, 2, 4);
    const auto step = plan::model_state_step_bytes(shape, zero, 8, 2, 4);
    EXPECT_DOUBLE_EQ(e.weights, static_cast<double>(held.weights + held.master + step.weights)) << zero;
    EXPECT_DOUBLE_EQ(e.grads, static_cast<double>(held.grads + step.grads)) << zero;
    EXPECT_DOUBLE_EQ(e.optimizer, static_cast<double>(held.moments)) << zero;
    EXPECT_LT(e.device_need, by_stage[static_cast<size_t>(zero - 1)].device_need) << zero;
  }
  // Between stage 3's need and stage 0's: refused at 0, accepted at 3.
  have.device = (by_stage[0].device_need + by_stage[3].device_need) / 2;
  r.zero = 0;
  EXPECT_FALSE(estimate_fit(r, have).fits);
  EXPECT_NE(fit_problem(r, have), "");
  r.zero = 3;
  EXPECT_TRUE(estimate_fit(r, have).fits);
  // One rank has nothing to shard.
  r.zero_world = 1;
  EXPECT_DOUBLE_EQ(estimate_fit(r, have).device_need, by_stage[0].device_need);
}

TEST(FitCheck, SizesBeyondInt64AreInputErrorsNamingTheQuantity) {
  auto cfg = model::resolve_model("tiny");
  train::FitRequest r;
  r.config = cfg;
  r.batch = int64_t{1} << 40;
  r.seq_len = int64_t{1} << 30;
  train::MemoryAvailable have{kGiB, "", kGiB, "", kGiB, ""};
  try {
    train::estimate_fit(r, have);
    FAIL() << "no InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("the activations of batch 1099511627776 x seq_len 1073741824 overflows"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace memo
