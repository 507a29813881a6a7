// Files memo wrote itself are still input. A cached memory plan whose
// placements were edited (negative or out-of-arena offsets, a tiny, negative
// or huge arena, overlapping buffers, wrong types) is rejected with a
// warning and planned afresh: the run exits 0 with the losses of an
// unplanned run, never a crash or an out-of-bounds write. A checkpoint whose
// trainer_state.json or optimizer.safetensors was edited, or a resume with
// options that change the math, is an InputError naming the file and field;
// a resume that changes only the policy continues bitwise.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <ATen/ATen.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <vector>

#include "cli_runner.h"
#include "core/error.h"
#include "memory/planned_allocator.h"
#include "model/hf_checkpoint.h"
#include "plan/bilevel.h"

namespace memo {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::run_memo;

std::vector<double> losses_of(const fs::path& report) {
  std::ifstream in(report);
  auto j = json::parse(in);
  std::vector<double> out;
  for (const auto& s : j.at("steps")) out.push_back(s.at("loss").get<double>());
  return out;
}

json read_json(const fs::path& p) {
  std::ifstream in(p);
  return json::parse(in);
}

void write_json(const fs::path& p, const json& j) { std::ofstream(p) << j.dump(); }

// ---------------------------------------------------------------- the plan cache

const std::string kPlanned = "train --steps 4 --seq-len 32 --batch 2 --log-every 100 --planned-memory ";

struct PlanEdit {
  const char* name;
  std::function<void(json&)> edit;
};

void PrintTo(const PlanEdit& c, std::ostream* os) { *os << c.name; }


// The first arena placement of more than 1 KiB.
json& big_placement(json& j) {
  for (auto& p : j["placements"])
    if (p[0] == 1 && p[1].get<int64_t>() > 1024) return p;
  throw std::runtime_error("no arena placement above 1 KiB");
}

std::vector<PlanEdit> plan_edits() {
  return {
      {"negative_offset", [](json& j) { big_placement(j)[2] = -4096; }},
      {"offset_beyond_the_arena", [](json& j) { big_placement(j)[2] = j["arena_bytes"].get<int64_t>() * 4; }},
      {"offset_2_62", [](json& j) { big_placement(j)[2] = int64_t{1} << 62; }},
      {"tiny_arena", [](json& j) { j["arena_bytes"] = 64; }},
      {"negative_arena", [](json& j) { j["arena_bytes"] = -1000; }},
      {"huge_arena", [](json& j) { j["arena_bytes"] = int64_t{1} << 50; }},
      {"negative_bytes", [](json& j) { big_placement(j)[1] = -512; }},
      {"overlapping_buffers",
       [](json& j) {
         for (auto& p : j["placements"])
           if (p[0] == 1) p[2] = 0;
       }},
      {"offset_is_a_string", [](json& j) { big_placement(j)[2] = "abc"; }},
      {"offset_is_fractional", [](json& j) { big_placement(j)[2] = 1.5; }},
      {"arena_is_a_string", [](json& j) { j["arena_bytes"] = "big"; }},
      {"placements_not_a_list", [](json& j) { j["placements"] = json{{"a", 1}}; }},
      {"short_placement", [](json& j) { j["placements"][0] = json::array({1}); }},
      {"kind_7", [](json& j) { big_placement(j)[0] = 7; }},
      {"empty_lifetime", [](json& j) { big_placement(j)[4] = big_placement(j)[3]; }},
      {"edited_load", [](json& j) { j["flat_load"] = j["flat_load"].get<int64_t>() + 1; }},
      {"not_an_object", [](json& j) { j = json::array({1, 2}); }},
  };
}

class EditedPlanCache : public ::testing::TestWithParam<PlanEdit> {};

TEST_P(EditedPlanCache, IsRejectedWithAWarningAndPlannedAfresh) {
  auto dir = testing::scratch_dir(std::string("plan_edit_") + GetParam().name);
  const auto cache = dir / "plans";
  auto plain = run_memo("train --steps 4 --seq-len 32 --batch 2 --log-every 100 --json " + (dir / "plain.json").string());
  ASSERT_EQ(plain.code, 0) << plain.output;
  auto first = run_memo(kPlanned + "--plan-cache " + cache.string());
  ASSERT_EQ(first.code, 0) << first.output;
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(cache)) files.push_back(e.path());
  ASSERT_EQ(files.size(), 1u);
  // Unless the edit breaks the key itself, the cached plan would be reused as is.
  auto j = read_json(files[0]);
  GetParam().edit(j);
  if (!j.is_object() || !j.contains("key")) {  // a file that is not even a plan
    std::ofstream(files[0]) << j.dump();
  } else {
    write_json(files[0], j);
  }

  auto r = run_memo(kPlanned + "--plan-cache " + cache.string() + " --json " + (dir / "planned.json").string());
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("the cached memory plan was not used"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("(profiled)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("0 fallbacks"), std::string::npos) << r.output;
  EXPECT_EQ(losses_of(dir / "plain.json"), losses_of(dir / "planned.json"));  // bitwise
  // The rejected file was replaced by a valid plan: the next run uses it.
  auto again = run_memo(kPlanned + "--plan-cache " + cache.string());
  ASSERT_EQ(again.code, 0) << again.output;
  EXPECT_NE(again.output.find("(cache)"), std::string::npos) << again.output;
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Edits, EditedPlanCache, ::testing::ValuesIn(plan_edits()),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(PlannedAllocatorArm, APlacementOutsideTheArenaIsRefusedBeforeAnythingIsServed) {
  auto& a = memory::PlannedAllocator::install();
  plan::BilevelPlan p;
  p.arena_bytes = 1024;
  p.placements = {{plan::Placement::Kind::Arena, 512, 768, 0, 1}};  // ends at 1280
  EXPECT_THROW(a.arm(p), InputError);
  EXPECT_FALSE(a.armed());
  p.placements = {{plan::Placement::Kind::Arena, 512, -512, 0, 1}};
  EXPECT_THROW(a.arm(p), InputError);
  p.placements = {{plan::Placement::Kind::Arena, 512, INT64_MAX - 8, 0, 1}};  // offset + bytes overflows
  EXPECT_THROW(a.arm(p), InputError);
  EXPECT_FALSE(a.armed());
}

// ---------------------------------------------------------------- checkpoints

using Flags = std::map<std::string, std::string>;
const Flags kRun = {{"--steps", "6"}, {"--seq-len", "16"}, {"--batch", "2"}, {"--warmup", "2"}, {"--log-every", "100"}};

// "train" and kRun's flags, `changes` replacing or adding some.
std::string train_args(const Flags& changes) {
  Flags f = kRun;
  for (const auto& [k, v] : changes) f[k] = v;
  std::string out = "train";
  for (const auto& [k, v] : f) out += " " + k + " " + v;
  return out;
}

// A run of 6 steps with a checkpoint at step 3 (and 6), once per test binary.
struct Saved {
  fs::path dir, data, ckpt;
  std::vector<double> losses;  // the uninterrupted run's
};

const Saved& saved_run() {
  static const Saved s = [] {
    Saved s;
    s.dir = testing::scratch_dir("resume_contract");
    std::string text;
    for (int i = 0; i < 400; ++i) text += "the quick brown fox jumps over the lazy dog " + std::to_string(i) + "\n";
    s.data = testing::write_text(s.dir / "corpus.txt", text);
    auto r = run_memo(train_args({{"--data", s.data.string()}, {"--out", (s.dir / "o").string()},
                                  {"--checkpoint-every", "3"}, {"--keep-checkpoints", "0"},
                                  {"--json", (s.dir / "full.json").string()}}));
    EXPECT_EQ(r.code, 0) << r.output;
    s.ckpt = s.dir / "o/checkpoints/step-00000003";
    s.losses = losses_of(s.dir / "full.json");
    return s;
  }();
  return s;
}

// A copy of the step-3 checkpoint to edit.
fs::path copy_checkpoint(const std::string& name) {
  const auto& s = saved_run();
  auto dst = testing::scratch_dir("resume_" + name) / "ckpt";
  fs::copy(s.ckpt, dst, fs::copy_options::recursive);
  return dst;
}

struct ResumeCase {
  const char* name;
  Flags changes;  // flags replacing or added to the saved run's
  std::string expect;
  std::function<void(const fs::path& ckpt)> edit = nullptr;
};

void PrintTo(const ResumeCase& c, std::ostream* os) { *os << c.name; }


std::vector<ResumeCase> resume_cases() {
  auto edit_state = [](std::function<void(json&)> f) {
    return [f](const fs::path& c) {
      auto j = read_json(c / "trainer_state.json");
      f(j);
      write_json(c / "trainer_state.json", j);
    };
  };
  auto edit_moments = [](std::function<void(std::vector<std::pair<std::string, at::Tensor>>&)> f) {
    return [f](const fs::path& c) {
      auto t = model::read_tensors((c / "optimizer.safetensors").string());
      f(t);
      model::write_tensors((c / "optimizer.safetensors").string(), t);
    };
  };
  return {
      {"other_seq_len", {{"--seq-len", "32"}}, "--seq-len 16, this run has 32"},
      {"other_batch", {{"--batch", "3"}}, "--batch 2, this run has 3"},
      {"other_grad_accum", {{"--grad-accum", "2"}}, "--grad-accum 1, this run has 2"},
      {"other_lr", {{"--lr", "0.01"}}, "--lr 0.003, this run has 0.01"},
      {"other_min_lr_ratio", {{"--min-lr-ratio", "0.5"}}, "--min-lr-ratio 0.1, this run has 0.5"},
      {"other_warmup", {{"--warmup", "5"}}, "--warmup 2, this run has 5"},
      {"other_beta2", {{"--beta2", "0.99"}}, "--beta1 and --beta2"},
      {"other_weight_decay", {{"--weight-decay", "0"}}, "--weight-decay"},
      {"other_clip", {{"--clip", "0.5"}}, "--clip 1.0, this run has 0.5"},
      {"other_seed", {{"--seed", "7"}}, "--seed 1234, this run has 7"},
      {"other_layers", {{"--layers", "3"}}, "num_hidden_layers = 2, the model given (--model, --layers) has 3"},
      {"other_data", {{"--data", "OTHER"}}, "trained on other data"},
      {"step_as_string", {}, "\"step\" must be an integer", edit_state([](json& j) { j["step"] = "3"; })},
      {"step_zero", {}, "step 0 is not a step count",
       edit_state([](json& j) { j["step"] = 0; j["optimizer_steps"] = 0; })},
      {"optimizer_steps_differ", {}, "optimizer_steps 9 differs from step 3",
       edit_state([](json& j) { j["optimizer_steps"] = 9; })},
      {"negative_data_state", {}, "data_state[0] must be a string of decimal digits",
       edit_state([](json& j) { j["data_state"][0] = "-1"; })},
      {"edited_lr_in_state", {}, "--lr 0.5, this run has 0.003",
       edit_state([](json& j) { j["info"]["lr"] = 0.5; })},
      {"no_info", {}, "\"info\"", edit_state([](json& j) { j.erase("info"); })},
      {"moment_in_float64", {}, "has dtype F64, expected F32",
       edit_moments([](auto& t) { t[0].second = t[0].second.to(at::kDouble); })},
      {"moment_misshapen", {}, "has shape", edit_moments([](auto& t) { t[0].second = t[0].second.flatten(); })},
      {"extra_moment", {}, "is not a moment of this model's parameters",
       edit_moments([](auto& t) { t.emplace_back("m.layers.9.wqkv", at::zeros({2})); })},
      {"missing_moment", {}, "is missing", edit_moments([](auto& t) { t.pop_back(); })},
      {"nan_moment", {}, "holds NaN or infinite values",
       edit_moments([](auto& t) { t[0].second.view(-1)[0] = std::nan(""); })},
      {"negative_second_moment", {}, "negative second moments",
       edit_moments([](auto& t) {
         for (auto& [name, x] : t)
           if (name.starts_with("v.")) x.view(-1)[0] = -1.0;
       })},
      {"nan_weight", {}, "holds NaN or infinite values",
       [](const fs::path& c) {
         auto t = model::read_tensors((c / "model.safetensors").string());
         t[0].second.view(-1)[0] = std::nan("");
         model::write_tensors((c / "model.safetensors").string(), t);
       }},
  };
}

class ResumeRefused : public ::testing::TestWithParam<ResumeCase> {};

TEST_P(ResumeRefused, WithAnInputErrorNamingTheFileAndField) {
  const auto& c = GetParam();
  const auto& s = saved_run();
  auto ckpt = copy_checkpoint(c.name);
  if (c.edit) c.edit(ckpt);
  Flags f = {{"--data", s.data.string()}, {"--resume", ckpt.string()}};
  for (const auto& [k, v] : c.changes) f[k] = v;
  if (f["--data"] == "OTHER")  // the same kind and length of data, other text
    f["--data"] = testing::write_text(ckpt.parent_path() / "other.txt",
                                      std::string(fs::file_size(s.data), 'x'));
  auto r = run_memo(train_args(f));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find(c.expect), std::string::npos) << "expected \"" << c.expect << "\" in:\n" << r.output;
  EXPECT_EQ(r.output.find("step 4/"), std::string::npos) << "trained: " << r.output;
  fs::remove_all(ckpt.parent_path());
}

INSTANTIATE_TEST_SUITE_P(Cases, ResumeRefused, ::testing::ValuesIn(resume_cases()),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(ResumeAllowed, AnotherPolicyAndTheSameDataElsewhereContinueBitwise) {
  // recompute gives keep's gradients bit for bit, and the data is identified
  // by its contents, not its path.
  const auto& s = saved_run();
  auto dir = testing::scratch_dir("resume_allowed");
  fs::copy_file(s.data, dir / "moved.txt");
  auto r = run_memo(train_args({{"--data", (dir / "moved.txt").string()}, {"--policy", "recompute"},
                                {"--resume", s.ckpt.string()}, {"--json", (dir / "resumed.json").string()}}));
  ASSERT_EQ(r.code, 0) << r.output;
  const auto resumed = losses_of(dir / "resumed.json");
  ASSERT_EQ(resumed.size(), 3u);
  ASSERT_EQ(s.losses.size(), 6u);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(resumed[i], s.losses[3 + i]) << "step " << 4 + i;
  fs::remove_all(dir);
}

}  // namespace
}  // namespace memo
