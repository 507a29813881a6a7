// The hand-written decoder-layer backward against autograd over the same
// mathematics, in float64: input gradient and every parameter gradient; and
// token-wise recompute into preallocated storage against the whole forward.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "model/layer.h"
#include "reference.h"

namespace memo {
namespace {

struct Shape {
  int64_t batch, seq, heads, kv_heads, head_dim, ffn;
  bool rope_scaling;
  int64_t block_tokens = 0;  // RMSNorm/RoPE token blocks (ops.h); 0: the default
};

class LayerBackward : public ::testing::TestWithParam<Shape> {};

TEST_P(LayerBackward, MatchesAutogradInFloat64) {
  const Shape s = GetParam();
  auto cfg = testing::small_config(s.heads, s.kv_heads, s.head_dim, s.ffn);
  if (s.rope_scaling) {
    cfg.rope_theta = 500000.0;
    cfg.rope_scaling = {8.0, 1.0, 4.0, 16};
  }
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  auto w = testing::random_layer_weights(cfg, at::kDouble, 7);
  auto rope = model::RopeTable::build(cfg, s.seq, at::kDouble, at::kCPU);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
  auto x = at::normal(0.0, 1.0, {s.batch, s.seq, cfg.hidden}, gen, f64);
  auto dy = at::normal(0.0, 1.0, {s.batch, s.seq, cfg.hidden}, gen, f64);

  // Hand-written.
  const int64_t block =
      s.block_tokens > 0 ? s.block_tokens * s.batch * cfg.hidden : model::kBlockElements;
  model::DecoderLayer layer(cfg, model::AttentionKernel::CpuFlash, block);
  model::LayerActivations acts;
  auto y = layer.forward(w, rope, x, acts);
  model::LayerWeights grads = w;
  for (auto& [name, t] : grads.named()) *t = at::zeros_like(*t);
  auto dx = layer.backward(w, grads, rope, acts, dy);

  // Autograd reference.
  auto xr = x.clone().set_requires_grad(true);
  model::LayerWeights wr = w;
  for (auto& [name, t] : wr.named()) *t = t->clone().set_requires_grad(true);
  auto yr = testing::ref_layer(cfg, wr, rope, xr);
  yr.backward(dy);

  EXPECT_LE(testing::max_rel_error(y, yr.detach()), 1e-10);
  EXPECT_LE(testing::max_rel_error(dx, xr.grad()), 1e-10) << "input gradient";
  auto got = grads.named();
  auto want = wr.named();
  for (size_t i = 0; i < got.size(); ++i)
    EXPECT_LE(testing::max_rel_error(*got[i].second, want[i].second->grad()), 1e-10)
        << "gradient of " << got[i].first;
}

INSTANTIATE_TEST_SUITE_P(Shapes, LayerBackward,
                         ::testing::Values(Shape{1, 5, 2, 2, 4, 24, false},   // MHA
                                           Shape{2, 7, 4, 2, 4, 24, false},   // GQA, batch 2
                                           Shape{3, 9, 4, 1, 6, 20, true},    // MQA, odd S, scaled RoPE
                                           Shape{2, 16, 8, 2, 8, 40, false},  // GQA 4:1
                                           Shape{1, 1, 4, 2, 4, 12, false},   // a single token
                                           // RMSNorm and RoPE over blocks of 1 and 3 tokens
                                           Shape{2, 7, 4, 2, 4, 24, true, 1},
                                           Shape{3, 10, 4, 1, 6, 20, false, 3}));

// Token-wise recompute of a partial range writes exactly what the whole
// forward wrote: batch 1 (one matmul into the range), batch > 1 (one matmul
// per sequence: the range is strided across sequences), token blocks that
// straddle the range's start.
TEST(LayerForward, TokenRangeRecomputeEqualsTheWholeForward) {
  for (int64_t batch : {1, 2, 3}) {
    for (int64_t block_tokens : {0, 2}) {
      auto cfg = testing::small_config(4, 2, 4, 24);
      const int64_t S = 11;
      auto w = testing::random_layer_weights(cfg, at::kDouble, 5);
      auto rope = model::RopeTable::build(cfg, S, at::kDouble, at::kCPU);
      auto gen = at::make_generator<at::CPUGeneratorImpl>(13);
      auto x = at::normal(0.0, 1.0, {batch, S, cfg.hidden}, gen, at::TensorOptions().dtype(at::kDouble));
      const int64_t block =
          block_tokens > 0 ? block_tokens * batch * cfg.hidden : model::kBlockElements;
      model::DecoderLayer layer(cfg, model::AttentionKernel::CpuFlash, block);
      auto acts = model::allocate_skeletal(cfg, batch, S, at::kDouble, at::kCPU);
      layer.forward(w, rope, x, acts);
      std::vector<at::Tensor> want;
      acts.for_each([&](const char*, const at::Tensor& t) { want.push_back(t.clone()); });
      for (int64_t t0 : {1, 4, 10}) {
        acts.for_each([&](const char* name, at::Tensor& t) {
          const std::string n = name;
          if (n != "x" && n != "o" && n != "lse") t.narrow(1, t0, S - t0).fill_(std::nan(""));
        });
        layer.recompute_tokens(w, rope, acts, t0);
        size_t k = 0;
        acts.for_each([&](const char* name, const at::Tensor& t) {
          EXPECT_LE(testing::max_rel_error(t, want[k++]), 1e-13)
              << name << " batch " << batch << " t0 " << t0 << " block " << block_tokens;
        });
      }
    }
  }
}

TEST(LayerForward, SkeletalTensorsHaveDesignShapes) {
  auto cfg = testing::small_config(4, 2, 4, 24);
  auto w = testing::random_layer_weights(cfg, at::kFloat, 3);
  auto rope = model::RopeTable::build(cfg, 6, at::kFloat, at::kCPU);
  auto x = at::randn({2, 6, cfg.hidden});
  model::DecoderLayer layer(cfg, model::AttentionKernel::CpuFlash);
  model::LayerActivations acts;
  layer.forward(w, rope, x, acts);
  using V = std::vector<int64_t>;
  EXPECT_EQ(acts.n1.sizes().vec(), (V{2, 6, 16}));
  EXPECT_EQ(acts.rstd1.sizes().vec(), (V{2, 6}));
  EXPECT_EQ(acts.qkv.sizes().vec(), (V{2, 6, (4 + 2 * 2) * 4}));
  EXPECT_EQ(acts.o.sizes().vec(), (V{2, 6, 16}));
  EXPECT_EQ(acts.lse.sizes().vec(), (V{2, 4, 6}));
  EXPECT_EQ(acts.gu.sizes().vec(), (V{2, 6, 48}));
  EXPECT_EQ(acts.a.sizes().vec(), (V{2, 6, 24}));
  // Per token: 4h (x, n1, o, x2, n2 is 5h) ... count exactly: x n1 o x2 n2 = 5h,
  // qkv = (nh+2nkv)d, gu = 2f, a = f, rstd1 + rstd2 = 2, lse = nh.
  const int64_t per_token = 5 * 16 + 32 + 48 + 24 + 2 + 4;
  EXPECT_EQ(acts.bytes(), 2 * 6 * per_token * 4);
}

}  // namespace
}  // namespace memo
