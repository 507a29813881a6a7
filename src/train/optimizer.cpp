// AdamW, gradient clipping and the learning-rate schedule.
#include "train/optimizer.h"

#include <ATen/ATen.h>

#include <cmath>
#include <numbers>

#include "core/error.h"

namespace memo::train {

namespace {

std::vector<bool> matrices(const std::vector<at::Tensor*>& params) {
  std::vector<bool> out;
  for (auto* p : params) out.push_back(p->dim() >= 2);
  return out;
}

}  // namespace

AdamW::AdamW(std::vector<at::Tensor*> params, std::vector<at::Tensor*> grads, AdamWOptions options)
    : AdamW(params, grads, options, matrices(params)) {}

AdamW::AdamW(std::vector<at::Tensor*> params, std::vector<at::Tensor*> grads, AdamWOptions options,
             const std::vector<bool>& decayed)
    : params_(std::move(params)), grads_(std::move(grads)), options_(options) {
  if (params_.size() != grads_.size() || params_.size() != decayed.size())
    throw Error("AdamW: params, grads and decay flags differ in count");
  for (size_t i = 0; i < params_.size(); ++i) {
    auto* p = params_[i];
    m_.push_back(at::zeros_like(*p));
    v_.push_back(at::zeros_like(*p));
    steps_.push_back(at::zeros({}, p->options().dtype(at::kFloat)));
    (decayed[i] ? decayed_ : plain_).push_back(i);
  }
}

void AdamW::set_steps_taken(int64_t t) {
  t_ = t;
  for (auto& s : steps_) s.fill_(static_cast<double>(t));
}

void AdamW::step(double lr) {
  ++t_;
  // The kernel reads the step count (for the bias correction) from the
  // device; like torch.optim, the caller advances it.
  if (!steps_.empty()) at::_foreach_add_(steps_, 1);
  const auto& o = options_;
  auto run = [&](const std::vector<size_t>& group, double weight_decay) {
    if (group.empty()) return;
    // The model's tensors are read through their pointers each step: a
    // tensor the model replaced is never stepped stale.
    std::vector<at::Tensor> p, g, m, v, s;
    for (size_t i : group) {
      p.push_back(*params_[i]);
      g.push_back(*grads_[i]);
      m.push_back(m_[i]);
      v.push_back(v_[i]);
      s.push_back(steps_[i]);
    }
    at::_fused_adamw_(p, g, m, v, /*max_exp_avg_sqs=*/{}, s, lr, o.beta1, o.beta2, weight_decay, o.eps,
                      /*amsgrad=*/false, /*maximize=*/false);
  };
  run(decayed_, o.weight_decay);
  run(plain_, 0.0);
}

at::Tensor grad_norm(const std::vector<at::Tensor*>& grads) {
  if (grads.empty()) return at::zeros({}, at::kDouble);
  std::vector<at::Tensor> list;
  for (auto* g : grads) list.push_back(*g);
  // Per-tensor norms in one multi-tensor kernel (CUDA), then the norm of
  // those few numbers in float64.
  auto norms = at::_foreach_norm(list, 2);
  return at::stack(norms).to(at::kDouble).norm();
}

void scale_grads(const std::vector<at::Tensor*>& grads, double factor) {
  std::vector<at::Tensor> list;
  for (auto* g : grads) list.push_back(*g);
  if (!list.empty()) at::_foreach_mul_(list, factor);
}

double clip_factor(double norm, double max_norm) {
  if (max_norm > 0.0 && norm > max_norm && std::isfinite(norm)) return max_norm / (norm + 1e-6);
  return 1.0;
}

double clip_grad_norm(const std::vector<at::Tensor*>& grads, double max_norm) {
  const double norm = grad_norm(grads).item<double>();
  const double factor = clip_factor(norm, max_norm);
  if (factor != 1.0) scale_grads(grads, factor);
  return norm;
}

double lr_at(int64_t step, int64_t total, int64_t warmup, double peak, double min_ratio) {
  if (warmup > 0 && step < warmup) return peak * static_cast<double>(step + 1) / warmup;
  const int64_t decay_steps = std::max<int64_t>(1, total - warmup);
  double progress = static_cast<double>(step - warmup) / static_cast<double>(decay_steps);
  progress = std::clamp(progress, 0.0, 1.0);
  const double min_lr = peak * min_ratio;
  return min_lr + 0.5 * (peak - min_lr) * (1.0 + std::cos(std::numbers::pi * progress));
}

}  // namespace memo::train
