// AdamW on ATen's fused kernel against a plain float64 AdamW written here
// (both parameter groups, several steps, float64 and float32 masters), a
// resumed optimizer continuing bitwise, and the bytes one optimizer step and
// one clipping allocate (the memory meter): nothing parameter-sized.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "memory/device_memory.h"
#include "reference.h"
#include "train/optimizer.h"

namespace memo {
namespace {

// AdamW as torch.optim.AdamW defines it, one parameter, float64 throughout.
struct ReferenceAdamW {
  at::Tensor p, m, v;
  void step(const at::Tensor& g, double lr, int64_t t, const train::AdamWOptions& o, double weight_decay) {
    p.mul_(1.0 - lr * weight_decay);
    m = o.beta1 * m + (1.0 - o.beta1) * g;
    v = o.beta2 * v + (1.0 - o.beta2) * g * g;
    const double bc1 = 1.0 - std::pow(o.beta1, static_cast<double>(t));
    const double bc2 = 1.0 - std::pow(o.beta2, static_cast<double>(t));
    p -= (lr / bc1) * m / (v.sqrt() / std::sqrt(bc2) + o.eps);
  }
};

struct Params {
  at::Tensor matrix, vector, gm, gv;  // a decayed matrix, an undecayed vector, their gradients
};

Params make_params(at::ScalarType dtype) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
  auto f64 = at::TensorOptions().dtype(at::kDouble);
  return {at::normal(0, 1, {5, 7}, gen, f64).to(dtype), at::normal(1, 0.1, {7}, gen, f64).to(dtype),
          at::zeros({5, 7}, dtype), at::zeros({7}, dtype)};
}

void check_against_reference(at::ScalarType dtype, double tol) {
  const train::AdamWOptions o{0.9, 0.95, 1e-8, 0.1};
  auto ps = make_params(dtype);
  train::AdamW opt({&ps.matrix, &ps.vector}, {&ps.gm, &ps.gv}, o);
  ReferenceAdamW rm{ps.matrix.to(at::kDouble), at::zeros({5, 7}, at::kDouble), at::zeros({5, 7}, at::kDouble)};
  ReferenceAdamW rv{ps.vector.to(at::kDouble), at::zeros({7}, at::kDouble), at::zeros({7}, at::kDouble)};
  auto gen = at::make_generator<at::CPUGeneratorImpl>(12);
  for (int64_t t = 1; t <= 6; ++t) {
    const double lr = 1e-2 * static_cast<double>(t);  // a changing learning rate
    auto gm = at::normal(0, 1, {5, 7}, gen, at::TensorOptions().dtype(at::kDouble));
    auto gv = at::normal(0, 1, {7}, gen, at::TensorOptions().dtype(at::kDouble));
    ps.gm.copy_(gm);
    ps.gv.copy_(gv);
    opt.step(lr);
    rm.step(ps.gm.to(at::kDouble), lr, t, o, o.weight_decay);
    rv.step(ps.gv.to(at::kDouble), lr, t, o, 0.0);  // vectors are not decayed
  }
  EXPECT_EQ(opt.steps_taken(), 6);
  EXPECT_LE(testing::max_rel_error(ps.matrix, rm.p), tol);
  EXPECT_LE(testing::max_rel_error(ps.vector, rv.p), tol);
  EXPECT_LE(testing::max_rel_error(opt.first_moments()[0], rm.m), tol);
  EXPECT_LE(testing::max_rel_error(opt.second_moments()[0], rm.v), tol);
  EXPECT_LE(testing::max_rel_error(opt.first_moments()[1], rv.m), tol);
  EXPECT_LE(testing::max_rel_error(opt.second_moments()[1], rv.v), tol);
}

TEST(FusedAdamW, MatchesAFloat64ReferenceInFloat64) { check_against_reference(at::kDouble, 1e-12); }

// float32 state: each step's update carries float32 rounding (2^-24 relative).
TEST(FusedAdamW, MatchesAFloat64ReferenceInFloat32) { check_against_reference(at::kFloat, 2e-6); }

TEST(FusedAdamW, ResumedFromItsStateContinuesBitwise) {
  const train::AdamWOptions o{0.9, 0.95, 1e-8, 0.1};
  auto a = make_params(at::kFloat);
  train::AdamW straight({&a.matrix, &a.vector}, {&a.gm, &a.gv}, o);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(13);
  std::vector<std::pair<at::Tensor, at::Tensor>> grads;
  for (int i = 0; i < 5; ++i) grads.push_back({at::randn({5, 7}, gen), at::randn({7}, gen)});
  auto run = [&](train::AdamW& opt, Params& p, int from, int to) {
    for (int i = from; i < to; ++i) {
      p.gm.copy_(grads[i].first);
      p.gv.copy_(grads[i].second);
      opt.step(1e-2);
    }
  };
  run(straight, a, 0, 3);
  // A checkpoint: weights, moments and the step count, into a fresh optimizer.
  auto b = make_params(at::kFloat);
  b.matrix.copy_(a.matrix);
  b.vector.copy_(a.vector);
  train::AdamW resumed({&b.matrix, &b.vector}, {&b.gm, &b.gv}, o);
  for (size_t i = 0; i < 2; ++i) {
    resumed.first_moments()[i].copy_(straight.first_moments()[i]);
    resumed.second_moments()[i].copy_(straight.second_moments()[i]);
  }
  resumed.set_steps_taken(straight.steps_taken());
  run(straight, a, 3, 5);
  run(resumed, b, 3, 5);
  EXPECT_TRUE(at::equal(a.matrix, b.matrix));
  EXPECT_TRUE(at::equal(a.vector, b.vector));
}

// Peak bytes allocated while fn runs, beyond what was allocated before.
template <typename Fn>
int64_t peak_during(Fn&& fn) {
  const at::Device cpu(at::kCPU);
  memory::reset_peak_memory(cpu);
  const auto before = memory::memory_stats(cpu).allocated;
  fn();
  return memory::memory_stats(cpu).peak_allocated - before;
}

TEST(FusedAdamW, AStepAllocatesNothingParameterSized) {
  memory::install_cpu_memory_meter();
  auto p = at::randn({512, 256});
  auto g = at::randn({512, 256});
  auto bias = at::randn({256});
  auto gb = at::randn({256});
  train::AdamW opt({&p, &bias}, {&g, &gb}, {});
  opt.step(1e-3);  // the first step outside the measurement
  const int64_t param_bytes = p.numel() * 4;
  EXPECT_LT(peak_during([&] { opt.step(1e-3); }), param_bytes / 16);
}

TEST(GradClipping, MeasuresAndScalesWithoutCopyingTheGradients) {
  memory::install_cpu_memory_meter();
  auto a = at::randn({512, 256});
  auto b = at::randn({256});
  const double want = std::sqrt(a.to(at::kDouble).square().sum().item<double>() +
                                b.to(at::kDouble).square().sum().item<double>());
  double norm = 0.0;
  EXPECT_LT(peak_during([&] { norm = train::clip_grad_norm({&a, &b}, 1.0); }), a.numel() * 4 / 16);
  // float32 accumulation over 131K squares: a few eps x log2(n), ~1e-6, was
  // seen just past 1e-6; leaving out b (0.2% of the terms) moves it ~1e-3.
  EXPECT_NEAR(norm, want, 1e-5 * want);
  const double after = std::sqrt(a.to(at::kDouble).square().sum().item<double>() +
                                 b.to(at::kDouble).square().sum().item<double>());
  EXPECT_NEAR(after, 1.0, 1e-5);
}

TEST(GradClipping, NoClippingWithinTheLimitOrWhenNotFinite) {
  EXPECT_EQ(train::clip_factor(0.5, 1.0), 1.0);
  EXPECT_EQ(train::clip_factor(5.0, 0.0), 1.0);  // clipping off
  EXPECT_EQ(train::clip_factor(std::nan(""), 1.0), 1.0);
  EXPECT_NEAR(train::clip_factor(4.0, 1.0), 0.25, 1e-6);
}

}  // namespace
}  // namespace memo
