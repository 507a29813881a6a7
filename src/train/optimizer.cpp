// AdamW, gradient clipping and the learning-rate schedule.
#include "train/optimizer.h"

#include <ATen/ATen.h>

#include <cmath>
#include <numbers>

#include "core/error.h"

namespace memo::train {

AdamW::AdamW(std::vector<at::Tensor*> params, std::vector<at::Tensor*> grads, AdamWOptions options)
    : params_(std::move(params)), grads_(std::move(grads)), options_(options) {
  if (params_.size() != grads_.size()) throw Error("AdamW: params and grads differ in count");
  for (auto* p : params_) {
    m_.push_back(at::zeros_like(*p));
    v_.push_back(at::zeros_like(*p));
  }
}

void AdamW::step(double lr) {
  ++t_;
  const auto& o = options_;
  const double bc1 = 1.0 - std::pow(o.beta1, static_cast<double>(t_));
  const double bc2 = 1.0 - std::pow(o.beta2, static_cast<double>(t_));
  for (size_t i = 0; i < params_.size(); ++i) {
    auto& p = *params_[i];
    const auto& g = *grads_[i];
    if (o.weight_decay != 0.0 && p.dim() >= 2) p.mul_(1.0 - lr * o.weight_decay);
    m_[i].mul_(o.beta1).add_(g, 1.0 - o.beta1);
    v_[i].mul_(o.beta2).addcmul_(g, g, 1.0 - o.beta2);
    auto denom = (v_[i] / bc2).sqrt_().add_(o.eps);
    p.addcdiv_(m_[i], denom, -lr / bc1);
  }
}

double clip_grad_norm(const std::vector<at::Tensor*>& grads, double max_norm) {
  if (grads.empty()) return 0.0;
  auto total = at::zeros({}, grads.front()->options().dtype(at::kDouble));
  for (auto* g : grads) total += g->to(at::kDouble).square().sum();
  const double norm = std::sqrt(total.item<double>());
  if (max_norm > 0.0 && norm > max_norm && std::isfinite(norm)) {
    const double scale = max_norm / (norm + 1e-6);
    for (auto* g : grads) g->mul_(scale);
  }
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
