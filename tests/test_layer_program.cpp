// The per-layer program (train/layer_program.*): a step through it equals,
// bit for bit in float64, a hand-written stack that calls the decoder layer's
// stages in their old order under every activation policy; the exchange sits
// between the stages; a layer's gradients are complete when its hook runs;
// RoPE positions are separate from the local token index.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "model/llama.h"
#include "reference.h"
#include "runtime/policy.h"
#include "runtime/stage_exchange.h"
#include "runtime/weight_source.h"
#include "train/layer_program.h"
#include "train/loss.h"
#include "train/step.h"

namespace memo {
namespace {

model::LlamaModel float64_model(int64_t layers) {
  auto cfg = testing::small_config(4, 2, 4, 20, layers, 31);
  model::ModelOptions mo;
  mo.master_dtype = at::kDouble;
  mo.compute_dtype = at::kDouble;
  mo.seed = 11;
  return model::LlamaModel(cfg, mo);
}

train::MicroBatch batch_of(int64_t vocab, int64_t B, int64_t S) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(23);
  auto tokens = at::randint(vocab, {B, S}, gen, at::kLong);
  auto targets = at::randint(vocab, {B, S}, gen, at::kLong);
  targets.index_put_({0, 1}, train::kIgnoreTarget);
  return {tokens, targets};
}

// The step as it was written before the executor: embedding, each layer's
// forward as pre-attention, attention, post-attention and the output
// projection into the policy's storage, the loss, then each layer's
// backward on what the policy restores.
train::LossSum hand_written_step(model::LlamaModel& model, runtime::ActivationPolicy& policy,
                                 const train::MicroBatch& batch, int64_t loss_chunk) {
  const auto& cfg = model.config();
  const auto& w = model.compute();
  const auto& layer = model.layer();
  auto& g = model.grads();
  const int64_t B = batch.tokens.size(0), S = batch.tokens.size(1);
  const auto rope = model.rope(S);
  auto x = w.embed.index_select(0, batch.tokens.reshape({-1})).view({B, S, cfg.hidden});  // [B, S, h]
  policy.begin_step({cfg.layers, B, S});
  for (int64_t i = 0; i < cfg.layers; ++i) {
    const auto& lw = w.layers[static_cast<size_t>(i)];
    model::LayerActivations acts;
    if (const auto* storage = policy.forward_storage(i)) acts = *storage;
    acts.x = x;
    layer.forward_pre_attention(lw, rope, x, acts);
    layer.forward_attention(acts);
    layer.forward_post_attention(lw, x, acts);
    auto y = at::matmul(acts.a, lw.wdown.t()).add_(acts.x2);  // [B, S, h]
    policy.save(i, std::move(acts));
    x = y;
  }
  const int64_t count = batch.targets.ne(train::kIgnoreTarget).sum().item<int64_t>();
  at::Tensor nf, rstdf;
  model::rmsnorm_forward(x, w.final_norm, cfg.rms_eps, nf, rstdf);
  auto ce = train::chunked_cross_entropy(nf.view({B * S, cfg.hidden}), w.head(), batch.targets.reshape({-1}),
                                         loss_chunk, 1.0 / static_cast<double>(count), &g.head());
  auto dx = model::rmsnorm_backward(ce.dh.view({B, S, cfg.hidden}), x, rstdf, w.final_norm, g.final_norm);
  for (int64_t i = cfg.layers - 1; i >= 0; --i) {
    const auto& lw = w.layers[static_cast<size_t>(i)];
    auto acts = policy.restore(i, runtime::LayerContext{layer, lw, rope, {}, 0, 0, nullptr, {}});
    dx = layer.backward(lw, g.layers[static_cast<size_t>(i)], rope, acts, dx);
  }
  policy.end_step();
  g.embed.index_add_(0, batch.tokens.reshape({-1}), dx.reshape({B * S, cfg.hidden}));
  return {ce.loss_sum, count};
}

struct PolicyCase {
  const char* name;
  double alpha;  // memo only
};

std::unique_ptr<runtime::ActivationPolicy> prepared(const PolicyCase& p, model::LlamaModel& model,
                                                    int64_t B, int64_t S) {
  runtime::PolicyOptions opts;
  opts.host_memory_bytes = 1 << 30;
  if (std::string(p.name) == "memo") opts.alpha = p.alpha;
  auto policy = runtime::make_policy(p.name, opts);
  policy->prepare(model, B, S);
  return policy;
}

class LayerProgramSteps : public ::testing::TestWithParam<PolicyCase> {};

TEST_P(LayerProgramSteps, EqualTheHandWrittenStackBitwiseInFloat64) {
  const auto p = GetParam();
  const int64_t B = 2, S = 9, layers = 4, loss_chunk = 7;
  auto mine = float64_model(layers);
  auto theirs = float64_model(layers);
  auto batch = batch_of(mine.config().vocab_size, B, S);
  auto mine_policy = prepared(p, mine, B, S);
  auto theirs_policy = prepared(p, theirs, B, S);
  // Two steps, so that the second runs on rounding buffers the first used.
  for (int step = 0; step < 2; ++step) {
    auto got = train::forward_backward(mine, *mine_policy, batch, 1.0, loss_chunk);
    auto want = hand_written_step(theirs, *theirs_policy, batch, loss_chunk);
    EXPECT_EQ(got.count, want.count);
    EXPECT_EQ(got.total(), want.total()) << "step " << step;  // bitwise: the same double
  }
  auto a = mine.grads().named();
  auto b = theirs.grads().named();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(at::equal(*a[i].second, *b[i].second)) << "gradient of " << a[i].first;
    EXPECT_GT(a[i].second->abs().max().item<double>(), 0.0) << a[i].first;  // a real gradient
  }
}

INSTANTIATE_TEST_SUITE_P(Policies, LayerProgramSteps,
                         ::testing::Values(PolicyCase{"keep", 0}, PolicyCase{"recompute", 0},
                                           PolicyCase{"offload", 1}, PolicyCase{"memo", 0.0},
                                           PolicyCase{"memo", 0.37}, PolicyCase{"memo", 1.0}),
                         [](const auto& info) {
                           return std::string(info.param.name) + "_a" +
                                  std::to_string(static_cast<int>(info.param.alpha * 100));
                         });

// forward_loss (evaluation) runs the same program: the loss of a step.
TEST(LayerProgram, ForwardLossEqualsTheTrainingStepsLoss) {
  auto model = float64_model(3);
  auto batch = batch_of(model.config().vocab_size, 2, 8);
  auto eval = train::forward_loss(model, batch, 5);
  auto keep = runtime::make_policy("keep");
  auto step = train::forward_backward(model, *keep, batch, 1.0, 5);
  EXPECT_EQ(eval.total(), step.total());
  EXPECT_EQ(eval.count, step.count);
}

// An exchange that copies every tensor it passes and counts the calls: the
// program routes q, k, v and o through it around attention, forward and
// backward, and nothing else changes.
class CopyingExchange final : public runtime::StageExchange {
 public:
  int qkv_heads = 0, o_tokens = 0, o_heads = 0, qkv_tokens = 0, lse_tokens = 0, lse_heads = 0;
  at::Tensor qkv_to_heads(const at::Tensor& t) override { return ++qkv_heads, t.clone(); }
  at::Tensor o_to_tokens(const at::Tensor& t) override { return ++o_tokens, t.clone(); }
  at::Tensor o_to_heads(const at::Tensor& t) override { return ++o_heads, t.clone(); }
  at::Tensor qkv_to_tokens(const at::Tensor& t) override { return ++qkv_tokens, t.clone(); }
  at::Tensor kv_to_heads(const at::Tensor& t) override { return t.clone(); }
  at::Tensor kv_to_tokens(const at::Tensor& t) override { return t.clone(); }
  at::Tensor lse_to_tokens(const at::Tensor& t) override { return ++lse_tokens, t.clone(); }
  at::Tensor lse_to_heads(const at::Tensor& t) override { return ++lse_heads, t.clone(); }
  model::HeadCounts local_heads() const override { return {}; }
};

// Records the weight source's calls: (kind, layer).
class RecordingWeights final : public runtime::WeightSource {
 public:
  explicit RecordingWeights(const model::ModelWeights& w) : replica_(w) {}
  std::vector<std::pair<char, int64_t>> calls;
  void prefetch(int64_t layer) override { calls.emplace_back('p', layer); }
  const model::LayerWeights& acquire(int64_t layer) override {
    calls.emplace_back('a', layer);
    return replica_.acquire(layer);
  }
  void release(int64_t layer) override { calls.emplace_back('r', layer); }

 private:
  runtime::ReplicaWeights replica_;
};

TEST(LayerProgram, ExchangeWeightSourceAndGradientHookAroundEachLayer) {
  const int64_t B = 2, S = 7, layers = 3;
  auto model = float64_model(layers);
  const auto& cfg = model.config();
  auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
  auto opts = at::TensorOptions().dtype(at::kDouble);
  auto x = at::normal(0.0, 1.0, {B, S, cfg.hidden}, gen, opts);   // [B, S, h]
  auto dy = at::normal(0.0, 1.0, {B, S, cfg.hidden}, gen, opts);  // [B, S, h]
  const train::TokenPositions positions{model.rope(S), 0};

  // Reference: the plain program (replica, no exchange).
  runtime::ReplicaWeights replica(model.compute());
  runtime::NoExchange none;
  train::LayerProgram plain({model.layer(), layers, replica, none, nullptr, {}});
  auto keep = runtime::make_policy("keep");
  keep->begin_step({layers, B, S});
  auto y_want = plain.forward(x, positions, keep.get());
  auto dx_want = plain.backward(dy, positions, *keep, model.grads());
  std::vector<at::Tensor> grads_want;
  for (auto& lw : model.grads().layers)
    for (auto& [n, t] : lw.named()) grads_want.push_back(t->clone());
  model.zero_grads();

  RecordingWeights weights(model.compute());
  CopyingExchange exchange;
  std::vector<int64_t> hooked;
  std::vector<std::vector<at::Tensor>> at_hook(layers);
  auto hook = [&](int64_t layer, model::LayerWeights& grads) {
    hooked.push_back(layer);
    for (auto& [n, t] : grads.named()) at_hook[static_cast<size_t>(layer)].push_back(t->clone());
    // The layers below have not run their backward yet.
    for (int64_t j = 0; j < layer; ++j)
      for (auto& [n, t] : model.grads().layers[static_cast<size_t>(j)].named())
        EXPECT_EQ(t->abs().max().item<double>(), 0.0) << "layer " << j << " " << n << " at layer " << layer;
  };
  train::LayerProgram program({model.layer(), layers, weights, exchange, nullptr, hook});
  keep->begin_step({layers, B, S});
  auto y = program.forward(x, positions, keep.get());
  EXPECT_EQ(exchange.qkv_heads, layers);
  EXPECT_EQ(exchange.o_tokens, layers);
  auto dx = program.backward(dy, positions, *keep, model.grads());
  EXPECT_EQ(exchange.qkv_heads, 2 * layers);  // and once more in backward for attention's inputs
  EXPECT_EQ(exchange.o_heads, 2 * layers);    // o and d_o
  EXPECT_EQ(exchange.qkv_tokens, layers);
  EXPECT_EQ(exchange.lse_tokens, layers);  // lse lives in token layout too
  EXPECT_EQ(exchange.lse_heads, layers);
  EXPECT_TRUE(at::equal(y, y_want));
  EXPECT_TRUE(at::equal(dx, dx_want));

  // The hook ran once per layer, top down, each time with that layer's final gradients.
  EXPECT_EQ(hooked, (std::vector<int64_t>{2, 1, 0}));
  size_t k = 0;
  for (int64_t i = 0; i < layers; ++i) {
    auto final_grads = model.grads().layers[static_cast<size_t>(i)].named();
    for (size_t j = 0; j < final_grads.size(); ++j, ++k) {
      EXPECT_TRUE(at::equal(at_hook[static_cast<size_t>(i)][j], *final_grads[j].second)) << i;
      EXPECT_TRUE(at::equal(*final_grads[j].second, grads_want[k])) << i;
    }
  }

  // Every acquire of a layer follows a prefetch of it and precedes its release;
  // forward goes up, backward down.
  std::vector<int64_t> acquired;
  for (size_t c = 0; c < weights.calls.size(); ++c) {
    const auto [kind, layer] = weights.calls[c];
    if (kind != 'a') continue;
    acquired.push_back(layer);
    bool prefetched = false, released = false;
    for (size_t e = 0; e < c; ++e) prefetched |= weights.calls[e] == std::make_pair('p', layer);
    for (size_t e = c + 1; e < weights.calls.size(); ++e) {
      if (weights.calls[e] == std::make_pair('a', layer)) break;
      released |= weights.calls[e] == std::make_pair('r', layer);
    }
    EXPECT_TRUE(prefetched) << "layer " << layer;
    EXPECT_TRUE(released) << "layer " << layer;
  }
  EXPECT_EQ(acquired, (std::vector<int64_t>{0, 1, 2, 2, 1, 0}));
}

// RoPE positions are separate from the local token index: the tokens
// [t0, t0 + n) run as a sequence of their own at position t0 give what the
// whole-sequence run gives those tokens, in the token-wise stages forward
// (pre-attention, post-attention) and backward (pre-attention); at position 0
// they do not (the rotation is a different one).
TEST(LayerPositions, ShiftRoPEToTheTokensGlobalPositions) {
  auto cfg = testing::small_config(4, 2, 4, 24);
  const int64_t B = 2, S = 11, t0 = 4, n = 5;
  auto w = testing::random_layer_weights(cfg, at::kDouble, 7);
  auto rope = model::RopeTable::build(cfg, S, at::kDouble, at::kCPU);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
  auto opts = at::TensorOptions().dtype(at::kDouble);
  auto x = at::normal(0.0, 1.0, {B, S, cfg.hidden}, gen, opts);   // [B, S, h]
  auto dy = at::normal(0.0, 1.0, {B, S, cfg.hidden}, gen, opts);  // [B, S, h]
  model::DecoderLayer layer(cfg, model::AttentionKernel::CpuFlash);
  auto part = [&](const at::Tensor& t) { return t.narrow(1, t0, n).contiguous(); };

  // The whole sequence, stage by stage.
  model::LayerActivations whole;
  layer.forward(w, rope, x, whole);
  auto wg = w;
  for (auto& [name, t] : wg.named()) *t = at::zeros_like(*t);
  auto post = layer.backward_post_attention(w, wg, whole, dy);
  auto dx2 = post.dx2.clone();
  auto dqkv = layer.backward_attention(std::move(post.d_o), whole.qkv, whole.o, whole.lse);
  auto dqkv_part = part(dqkv);
  auto dx = layer.backward_pre_attention(w, wg, rope, whole, dqkv, post.dx2);

  // The tokens [t0, t0 + n) alone, at global position t0.
  auto xs = part(x);
  model::LayerActivations shard;
  shard.x = xs;
  layer.forward_pre_attention(w, rope, xs, shard, 0, 0, /*position=*/t0);
  EXPECT_LE(testing::max_rel_error(shard.n1, part(whole.n1)), 1e-15);
  EXPECT_LE(testing::max_rel_error(shard.rstd1, part(whole.rstd1)), 1e-15);
  EXPECT_LE(testing::max_rel_error(shard.qkv, part(whole.qkv)), 1e-15);
  shard.o = part(whole.o);  // attention is over the whole sequence (the exchange's job)
  layer.forward_post_attention(w, xs, shard);
  EXPECT_LE(testing::max_rel_error(shard.x2, part(whole.x2)), 1e-15);
  EXPECT_LE(testing::max_rel_error(shard.a, part(whole.a)), 1e-15);
  auto sg = w;
  for (auto& [name, t] : sg.named()) *t = at::zeros_like(*t);
  auto dxs = layer.backward_pre_attention(w, sg, rope, shard, dqkv_part.clone(), part(dx2), /*position=*/t0);
  EXPECT_LE(testing::max_rel_error(dxs, part(dx)), 1e-14);

  // At position 0 (the local index taken for the position) q and k rotate
  // by the wrong angles, and so does the gradient.
  model::LayerActivations wrong;
  layer.forward_pre_attention(w, rope, xs, wrong, 0, 0, /*position=*/0);
  EXPECT_GT(testing::max_rel_error(wrong.qkv, part(whole.qkv)), 1e-3);
  auto dx_wrong = layer.backward_pre_attention(w, sg, rope, shard, dqkv_part.clone(), part(dx2), 0);
  EXPECT_GT(testing::max_rel_error(dx_wrong, part(dx)), 1e-3);
}

// The same shift through the model's own table for a position beyond the
// micro-batch (a shard at p needs rows up to p + S): a layer run at position
// p on the last S tokens of a p + S sequence equals that run's tail.
TEST(LayerPositions, ModelRopeCoversAShardsGlobalPositions) {
  auto model = float64_model(1);
  const auto& cfg = model.config();
  const int64_t p = 6, S = 5;
  auto w = model.compute().layers[0];
  auto gen = at::make_generator<at::CPUGeneratorImpl>(9);
  auto x = at::normal(0.0, 1.0, {1, p + S, cfg.hidden}, gen, at::TensorOptions().dtype(at::kDouble));
  model::LayerActivations whole, tail;
  model.layer().forward_pre_attention(w, model.rope(p + S), x, whole);
  auto xs = x.narrow(1, p, S).contiguous();
  model.layer().forward_pre_attention(w, model.rope(p + S), xs, tail, 0, 0, p);
  EXPECT_LE(testing::max_rel_error(tail.qkv, whole.qkv.narrow(1, p, S)), 1e-15);
}

}  // namespace
}  // namespace memo
