// The table of skeletal tensors (model/skeletal.h): one row per member of
// LayerActivations, the specs derived from it equal to the hand-kept list
// they replace (order, shapes, dtypes, bytes), allocation and token slices
// derived from it too (a slice is a view of exactly the tokens asked for).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <set>
#include <string>

#include "core/error.h"
#include "model/ops.h"
#include "model/skeletal.h"
#include "reference.h"

namespace memo {
namespace {

using model::LayerActivations;

// Every member of LayerActivations, by hand, in declaration order.
const std::vector<std::pair<const char*, at::Tensor LayerActivations::*>> kMembers = {
    {"x", &LayerActivations::x},   {"n1", &LayerActivations::n1},   {"rstd1", &LayerActivations::rstd1},
    {"qkv", &LayerActivations::qkv}, {"o", &LayerActivations::o},   {"lse", &LayerActivations::lse},
    {"x2", &LayerActivations::x2}, {"n2", &LayerActivations::n2},   {"rstd2", &LayerActivations::rstd2},
    {"gu", &LayerActivations::gu}, {"a", &LayerActivations::a}};

TEST(SkeletalTable, OneRowPerTensorInMemberOrder) {
  // A member added without a row changes the struct's size and fails here.
  ASSERT_EQ(sizeof(LayerActivations), kMembers.size() * sizeof(at::Tensor));
  const auto table = model::skeletal_table();
  ASSERT_EQ(table.size(), kMembers.size());
  for (size_t i = 0; i < table.size(); ++i) {
    EXPECT_STREQ(table[i].name, kMembers[i].first);
    EXPECT_EQ(table[i].member, kMembers[i].second) << table[i].name;
    EXPECT_EQ(&model::skeletal_row(kMembers[i].second), &table[i]);
  }
  // for_each visits each member once, with its row's name.
  LayerActivations acts;
  for (size_t i = 0; i < kMembers.size(); ++i) acts.*kMembers[i].second = at::full({1}, static_cast<double>(i), at::kDouble);
  std::vector<std::string> names;
  acts.for_each([&](const char* name, at::Tensor& t) {
    EXPECT_EQ(t.item<double>(), static_cast<double>(names.size())) << name;
    names.push_back(name);
  });
  ASSERT_EQ(names.size(), kMembers.size());
  const LayerActivations& cacts = acts;
  size_t k = 0;
  cacts.for_each([&](const char* name, const at::Tensor&) { EXPECT_EQ(names[k++], name); });
  EXPECT_EQ(acts.bytes(), static_cast<int64_t>(kMembers.size() * sizeof(double)));
}

// The list skeletal_specs kept by hand before the table (layer.cpp, d10e936).
std::vector<model::SkeletalSpec> old_hand_list(const model::ModelConfig& c, int64_t B, int64_t S,
                                               at::ScalarType compute) {
  const auto st = model::stat_dtype(compute);
  return {
      {"x", {B, S, c.hidden}, compute, 1, true},
      {"n1", {B, S, c.hidden}, compute, 1, false},
      {"rstd1", {B, S}, st, 1, false},
      {"qkv", {B, S, c.qkv_dim()}, compute, 1, false},
      {"o", {B, S, c.attn_dim()}, compute, 1, true},
      {"lse", {B, c.heads, S}, st, 2, true},
      {"x2", {B, S, c.hidden}, compute, 1, false},
      {"n2", {B, S, c.hidden}, compute, 1, false},
      {"rstd2", {B, S}, st, 1, false},
      {"gu", {B, S, 2 * c.ffn}, compute, 1, false},
      {"a", {B, S, c.ffn}, compute, 1, false},
  };
}

TEST(SkeletalTable, SpecsEqualTheOldHandList) {
  for (auto compute : {at::kBFloat16, at::kFloat, at::kDouble}) {
    for (auto [heads, kv] : {std::pair<int64_t, int64_t>{4, 2}, {4, 1}, {2, 2}}) {
      SCOPED_TRACE(std::string(c10::toString(compute)) + " heads " + std::to_string(heads) + "/" + std::to_string(kv));
      const auto cfg = testing::small_config(heads, kv, 8, 40);
      const auto got = model::skeletal_specs(cfg, 3, 17, compute);
      const auto want = old_hand_list(cfg, 3, 17, compute);
      ASSERT_EQ(got.size(), want.size());
      for (size_t i = 0; i < got.size(); ++i) {
        EXPECT_STREQ(got[i].name, want[i].name);
        EXPECT_EQ(got[i].shape, want[i].shape) << want[i].name;
        EXPECT_EQ(got[i].dtype, want[i].dtype) << want[i].name;
        EXPECT_EQ(got[i].token_dim, want[i].token_dim) << want[i].name;
        EXPECT_EQ(got[i].always_offloaded, want[i].always_offloaded) << want[i].name;
        EXPECT_EQ(got[i].bytes(), want[i].bytes()) << want[i].name;
        EXPECT_EQ(got[i].member, kMembers[i].second) << want[i].name;
        EXPECT_EQ(got[i].layer_input, std::string(want[i].name) == "x") << want[i].name;
      }
    }
  }
}

TEST(SkeletalTable, HeadDimensionsAreWhereTheHeadsAre) {
  const auto cfg = testing::small_config(4, 2, 8, 40);  // qkv (4 + 2 * 2) * 8, o 4 * 8, lse 4 heads
  for (const auto& s : model::skeletal_specs(cfg, 2, 5, at::kFloat)) {
    const std::string name = s.name;
    if (name == "qkv" || name == "o" || name == "lse") {
      ASSERT_GE(s.heads_dim, 0) << name;
      const int64_t want = name == "qkv" ? cfg.qkv_dim() : name == "o" ? cfg.attn_dim() : cfg.heads;
      EXPECT_EQ(s.shape[static_cast<size_t>(s.heads_dim)], want) << name;
      EXPECT_NE(s.heads_dim, s.token_dim) << name;
    } else {
      EXPECT_EQ(s.heads_dim, -1) << name;
    }
  }
}

TEST(SkeletalTable, AllocationFollowsTheSpecsWithoutTheInput) {
  const auto cfg = testing::small_config(4, 1, 4, 24);
  const auto specs = model::skeletal_specs(cfg, 2, 9, at::kBFloat16);
  const auto acts = model::allocate_skeletal(cfg, 2, 9, at::kBFloat16, at::kCPU);
  int64_t want_bytes = 0;
  for (const auto& s : specs) {
    const auto& t = acts.*s.member;
    if (s.layer_input) {
      EXPECT_FALSE(t.defined()) << s.name << ": forward never writes the input";
      continue;
    }
    ASSERT_TRUE(t.defined()) << s.name;
    EXPECT_EQ(t.sizes().vec(), s.shape) << s.name;
    EXPECT_EQ(t.scalar_type(), s.dtype) << s.name;
    want_bytes += s.bytes();
  }
  EXPECT_EQ(acts.bytes(), want_bytes);
}

TEST(TokenSlice, ViewsOfExactlyTheTokensAskedFor) {
  const auto cfg = testing::small_config(4, 2, 4, 24);
  const int64_t B = 2, S = 11, t0 = 3, n = 5;
  auto acts = model::allocate_skeletal(cfg, B, S, at::kDouble, at::kCPU);
  acts.x = at::empty({B, S, cfg.hidden}, at::kDouble);
  // Every element its own value, so a wrong token or dimension shows.
  double next = 0;
  acts.for_each([&](const char*, at::Tensor& t) {
    t.copy_(at::arange(next, next + static_cast<double>(t.numel()), at::kDouble).view(t.sizes()));
    next += static_cast<double>(t.numel());
  });
  auto slice = model::token_slice(acts, t0, n);
  for (const auto& r : model::skeletal_table()) {
    const auto& whole = acts.*r.member;
    const auto& part = slice.*r.member;
    ASSERT_TRUE(part.defined()) << r.name;
    EXPECT_EQ(part.size(r.token_dim), n) << r.name;
    for (int64_t d = 0; d < whole.dim(); ++d)
      if (d != r.token_dim) EXPECT_EQ(part.size(d), whole.size(d)) << r.name << " dim " << d;
    // The same values as the tokens [t0, t0 + n) picked out by index ...
    auto idx = at::arange(t0, t0 + n, at::kLong);
    EXPECT_TRUE(at::equal(part, whole.index_select(r.token_dim, idx))) << r.name;
    // ... and a view: writing it writes the set.
    EXPECT_TRUE(part.is_alias_of(whole)) << r.name;
    part.fill_(-1.0);
    EXPECT_EQ(whole.narrow(r.token_dim, t0, n).max().item<double>(), -1.0) << r.name;
    EXPECT_GE(whole.narrow(r.token_dim, 0, t0).min().item<double>(), 0.0) << r.name;
    EXPECT_GE(whole.narrow(r.token_dim, t0 + n, S - t0 - n).min().item<double>(), 0.0) << r.name;
  }
  // Undefined tensors stay undefined; a range past the end is refused.
  LayerActivations partial;
  partial.lse = at::zeros({B, cfg.heads, S}, at::kDouble);
  auto ps = model::token_slice(partial, 0, 2);
  EXPECT_FALSE(ps.x.defined());
  EXPECT_EQ(ps.lse.size(2), 2);
  EXPECT_THROW(model::token_slice(acts, S - 2, 3), Error);
}

}  // namespace
}  // namespace memo
