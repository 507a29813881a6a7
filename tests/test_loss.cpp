// Chunked cross-entropy equals the unchunked loss and gradients, for chunk
// sizes that do and do not divide the token count.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "reference.h"
#include "train/loss.h"

namespace memo {
namespace {

class ChunkedLoss : public ::testing::TestWithParam<int64_t> {};

TEST_P(ChunkedLoss, EqualsUnchunkedLossAndGradients) {
  const int64_t T = 23, H = 8, V = 19;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(1);
  auto f64 = at::TensorOptions().dtype(at::kDouble);
  auto h = at::normal(0, 1, {T, H}, gen, f64);
  auto W = at::normal(0, 1, {V, H}, gen, f64);
  auto targets = at::randint(V, {T}, gen, at::kLong);
  targets.index_put_({3}, train::kIgnoreTarget);
  targets.index_put_({17}, train::kIgnoreTarget);
  const double scale = 0.7;

  auto dW = at::zeros_like(W);
  auto got = train::chunked_cross_entropy(h, W, targets, GetParam(), scale, &dW);

  auto hr = h.clone().set_requires_grad(true);
  auto Wr = W.clone().set_requires_grad(true);
  auto sum = at::cross_entropy_loss(at::matmul(hr, Wr.t()), targets, {}, at::Reduction::Sum,
                                    train::kIgnoreTarget);
  (sum * scale).backward();

  EXPECT_EQ(got.count, T - 2);
  EXPECT_NEAR(got.loss_sum, sum.item<double>(), 1e-12 * std::abs(sum.item<double>()));
  EXPECT_LE(testing::max_rel_error(got.dh, hr.grad()), 1e-12);
  EXPECT_LE(testing::max_rel_error(dW, Wr.grad()), 1e-12);
}

INSTANTIATE_TEST_SUITE_P(ChunkSizes, ChunkedLoss, ::testing::Values(1, 4, 5, 7, 23, 64));

TEST(ChunkedLossNoGrad, ForwardOnlyLeavesGradientUndefined) {
  auto h = at::randn({6, 4});
  auto W = at::randn({9, 4});
  auto t = at::randint(9, {6}, at::kLong);
  auto r = train::chunked_cross_entropy(h, W, t, 4, 0.0, nullptr);
  EXPECT_FALSE(r.dh.defined());
  auto full = at::cross_entropy_loss(at::matmul(h, W.t()), t, {}, at::Reduction::Sum);
  EXPECT_NEAR(r.loss_sum, full.item<double>(), 1e-4);
}

TEST(ChunkedLossBudget, DefaultChunkKeepsLogitsNearBudget) {
  // 128K vocabulary: a chunk's float32 logits + probabilities stay within 256 MiB.
  const int64_t chunk = train::default_loss_chunk(128256);
  EXPECT_GT(chunk, 0);
  EXPECT_LE(chunk * 128256 * 8, 256ll << 20);
}

}  // namespace
}  // namespace memo
