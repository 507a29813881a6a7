// dist::flat_layout: a unit of tensors as one padded flat buffer, sharded.
// Over every rank the pieces tile each tensor exactly once, in order, and
// copying through the shards rebuilds the tensors (no process group needed).
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include "dist/flat_layout.h"

namespace {

using memo::dist::flat_layout;

TEST(FlatLayout, PiecesOfEveryRankTileTheTensorsOnce) {
  const std::vector<std::vector<int64_t>> shapes = {{7}, {3, 5}, {1}, {4, 2, 3}};  // 7 + 15 + 1 + 24 = 47
  for (int world : {1, 2, 3, 4, 5, 8, 47, 50}) {
    std::vector<at::Tensor> covered;  // per tensor: how often each element is held
    for (const auto& s : shapes) covered.push_back(at::zeros(s, at::kInt).reshape({-1}));
    for (int rank = 0; rank < world; ++rank) {
      const auto l = flat_layout(shapes, world, rank);
      EXPECT_EQ(l.numel(), 47);
      EXPECT_EQ(l.shard.padded, world * l.shard.shard);
      EXPECT_GE(l.shard.padded, 47);
      EXPECT_LT(l.shard.padded, 47 + world);
      int64_t in_shard = 0;
      for (const auto& p : l.pieces) {
        EXPECT_GT(p.length, 0);
        EXPECT_EQ(p.shard_begin, in_shard) << "pieces are contiguous in the shard";
        EXPECT_EQ(l.offsets[p.tensor] + p.tensor_begin, l.shard.begin + p.shard_begin);
        covered[p.tensor].narrow(0, p.tensor_begin, p.length).add_(1);
        in_shard += p.length;
      }
      EXPECT_EQ(in_shard, l.shard.end - l.shard.begin);
    }
    for (size_t i = 0; i < covered.size(); ++i)
      EXPECT_TRUE(at::equal(covered[i], at::ones_like(covered[i]))) << "world " << world << ", tensor " << i;
  }
}

TEST(FlatLayout, ShardsConcatenatedAreTheFlattenedTensors) {
  const std::vector<std::vector<int64_t>> shapes = {{6, 3}, {5}, {2, 2}};  // 27 elements
  std::vector<at::Tensor> tensors;
  std::vector<const at::Tensor*> ptrs;
  for (size_t i = 0; i < shapes.size(); ++i) tensors.push_back(at::randn(shapes[i], at::kDouble));
  for (auto& t : tensors) ptrs.push_back(&t);
  for (int world : {1, 2, 4, 5}) {
    std::vector<at::Tensor> shards;
    for (int rank = 0; rank < world; ++rank) {
      const auto l = flat_layout(shapes, world, rank);
      auto shard = at::full({l.shard.shard}, 99.0, at::kDouble);  // [shard]
      memo::dist::shard_from_tensors(shard, ptrs, l);
      // The piece views are the tensors' parts.
      const auto views = memo::dist::piece_views(shard, l);
      for (size_t k = 0; k < views.size(); ++k) {
        const auto& p = l.pieces[k];
        EXPECT_TRUE(at::equal(views[k], tensors[p.tensor].reshape({-1}).narrow(0, p.tensor_begin, p.length)));
      }
      shards.push_back(shard);
    }
    const auto l0 = flat_layout(shapes, world, 0);
    auto flat = at::empty({l0.shard.padded}, at::kDouble);  // [padded]
    memo::dist::flatten_into(flat, ptrs, l0);
    EXPECT_TRUE(at::equal(at::cat(shards), flat)) << "world " << world;
    EXPECT_TRUE(at::equal(flat.narrow(0, 27, l0.shard.padded - 27), at::zeros({l0.shard.padded - 27}, at::kDouble)))
        << "padding is zero";
    const auto views = memo::dist::unflatten_views(flat, l0);
    for (size_t i = 0; i < tensors.size(); ++i) EXPECT_TRUE(at::equal(views[i], tensors[i]));
  }
}

}  // namespace
