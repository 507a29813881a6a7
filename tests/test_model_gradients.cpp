// Whole-model loss and gradients against an autograd reference (float32 and
// float64), and `keep` vs `recompute` giving identical gradients.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "model/llama.h"
#include "reference.h"
#include "runtime/policy.h"
#include "train/loss.h"
#include "train/step.h"

namespace memo {
namespace {

train::MicroBatch random_batch(int64_t vocab, int64_t B, int64_t S, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto tokens = at::randint(vocab, {B, S}, gen, at::kLong);
  auto targets = at::randint(vocab, {B, S}, gen, at::kLong);
  targets.index_put_({0, 0}, train::kIgnoreTarget);  // an ignored position
  return {tokens, targets};
}

// Autograd over the reference mathematics; returns the mean loss and leaves
// gradients in the .grad() of `w`'s tensors (which must require grad).
at::Tensor reference_loss(const model::ModelConfig& c, model::ModelWeights& w,
                          const model::RopeTable& rope, const train::MicroBatch& b) {
  const int64_t B = b.tokens.size(0), S = b.tokens.size(1);
  auto x = w.embed.index_select(0, b.tokens.reshape({-1})).view({B, S, c.hidden});
  for (auto& lw : w.layers) x = testing::ref_layer(c, lw, rope, x);
  auto h = testing::ref_rmsnorm(x, w.final_norm, c.rms_eps);
  auto logits = at::matmul(h, w.head().t()).reshape({B * S, c.vocab_size});
  return at::cross_entropy_loss(logits, b.targets.reshape({-1}), {}, at::Reduction::Mean,
                                train::kIgnoreTarget);
}

void check_against_autograd(at::ScalarType dtype, bool tied, int64_t layers, double tol) {
  auto cfg = testing::small_config(4, 2, 4, 24, layers, 37);
  cfg.tie_embeddings = tied;
  model::ModelOptions mo;
  mo.master_dtype = dtype;
  mo.compute_dtype = dtype;
  mo.seed = 5;
  model::LlamaModel model(cfg, mo);
  auto batch = random_batch(cfg.vocab_size, 2, 9, 17);

  auto policy = runtime::make_policy("keep");
  auto got = train::forward_backward(model, *policy, batch, 1.0, /*loss_chunk=*/5);

  model::ModelWeights ref = model.master();
  for (auto& [name, t] : ref.named()) *t = t->detach().clone().set_requires_grad(true);
  auto loss = reference_loss(cfg, ref, model.rope(9), batch);
  loss.backward();

  EXPECT_NEAR(got.mean(), loss.item<double>(), tol * std::abs(loss.item<double>()));
  auto mine = model.grads().named();
  auto want = ref.named();
  ASSERT_EQ(mine.size(), want.size());
  for (size_t i = 0; i < mine.size(); ++i)
    EXPECT_LE(testing::max_rel_error(*mine[i].second, want[i].second->grad()), tol)
        << "gradient of " << mine[i].first;
}

TEST(ModelGradients, MatchAutogradFloat32Untied) { check_against_autograd(at::kFloat, false, 2, 2e-5); }
TEST(ModelGradients, MatchAutogradFloat32Tied) { check_against_autograd(at::kFloat, true, 3, 2e-5); }
TEST(ModelGradients, MatchAutogradFloat64) { check_against_autograd(at::kDouble, false, 2, 1e-10); }

TEST(ModelGradients, KeepAndRecomputeAreIdentical) {
  auto cfg = testing::small_config(4, 2, 4, 24, 3, 41);
  model::LlamaModel keep_model(cfg, {});
  model::LlamaModel rec_model(cfg, {});
  auto batch = random_batch(cfg.vocab_size, 2, 11, 3);
  auto keep = runtime::make_policy("keep");
  auto rec = runtime::make_policy("recompute");
  auto lk = train::forward_backward(keep_model, *keep, batch, 1.0);
  auto lr = train::forward_backward(rec_model, *rec, batch, 1.0);
  EXPECT_EQ(lk.total(), lr.total());
  auto a = keep_model.grads().named();
  auto b = rec_model.grads().named();
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_TRUE(at::equal(*a[i].second, *b[i].second)) << a[i].first;
}

TEST(ModelGradients, RecomputeHoldsOnlyLayerInputs) {
  auto cfg = testing::small_config(4, 2, 4, 24, 3, 41);
  model::LlamaModel model(cfg, {});
  auto batch = random_batch(cfg.vocab_size, 2, 11, 3);
  auto keep = runtime::make_policy("keep");
  auto rec = runtime::make_policy("recompute");
  train::forward_backward(model, *keep, batch, 1.0);
  train::forward_backward(model, *rec, batch, 1.0);
  const int64_t x_bytes = 2 * 11 * cfg.hidden * 4;
  EXPECT_EQ(rec->peak_held().device, cfg.layers * x_bytes);
  // keep: x, n1, o, x2, n2 (5h), qkv, gu (2f), a (f), rstd1, rstd2, lse (nh) per token.
  const int64_t per_token = 5 * cfg.hidden + cfg.qkv_dim() + 3 * cfg.ffn + 2 + cfg.heads;
  EXPECT_EQ(keep->peak_held().device, cfg.layers * 2 * 11 * per_token * 4);
  EXPECT_EQ(keep->held().device, 0);  // all released after backward
  EXPECT_EQ(rec->held().device, 0);
}

TEST(ModelGradients, GradAccumulationAddsScaledGradients) {
  auto cfg = testing::small_config(2, 1, 4, 16, 2, 30);
  model::LlamaModel once(cfg, {});
  model::LlamaModel twice(cfg, {});
  auto batch = random_batch(cfg.vocab_size, 1, 6, 9);
  auto p = runtime::make_policy("keep");
  train::forward_backward(once, *p, batch, 1.0);
  train::forward_backward(twice, *p, batch, 0.5);
  train::forward_backward(twice, *p, batch, 0.5);
  auto a = once.grads().named();
  auto b = twice.grads().named();
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_LE(testing::max_rel_error(*b[i].second, *a[i].second), 1e-6) << a[i].first;
}

}  // namespace
}  // namespace memo
