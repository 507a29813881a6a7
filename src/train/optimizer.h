// AdamW over the model's master weights (fp32; fp64 in tests), global-norm
// gradient clipping, and the warmup-then-cosine learning-rate schedule. Both
// use ATen's multi-tensor kernels (_fused_adamw_, _foreach_norm, _foreach_mul_)
// on CPU and CUDA: one pass over each parameter's state, no parameter-sized
// temporaries.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace memo::train {

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;  // decoupled; applied to matrices only (not norms)
};

// PyTorch's AdamW (decoupled weight decay, bias-corrected moments, eps added
// to sqrt(v_hat)) in two parameter groups: matrices (dim >= 2) with weight
// decay, vectors (norm weights) without.
class AdamW {
 public:
  AdamW(std::vector<at::Tensor*> params, std::vector<at::Tensor*> grads, AdamWOptions options);
  // The same over parts of parameters (ZeRO's shard pieces, train/zero_optimizer.h):
  // decayed[i] says whether params[i] is part of a matrix (the group is the
  // whole parameter's, not the piece's, which is always 1-D).
  AdamW(std::vector<at::Tensor*> params, std::vector<at::Tensor*> grads, AdamWOptions options,
        const std::vector<bool>& decayed);
  void step(double lr);
  int64_t steps_taken() const { return t_; }
  // Checkpoint access: the first and second moments (one per parameter, in
  // order; restore by copying into them) and the step count that drives the
  // bias correction.
  std::vector<at::Tensor>& first_moments() { return m_; }
  std::vector<at::Tensor>& second_moments() { return v_; }
  void set_steps_taken(int64_t t);

 private:
  std::vector<at::Tensor*> params_, grads_;
  std::vector<at::Tensor> m_, v_;
  std::vector<at::Tensor> steps_;  // per parameter, [] float32 on its device: what the fused kernel reads
  std::vector<size_t> decayed_, plain_;  // the two groups, as indices
  AdamWOptions options_;
  int64_t t_ = 0;
};

// The global L2 norm of the gradients, [] float64 on their device (computed
// without waiting for it).
at::Tensor grad_norm(const std::vector<at::Tensor*>& grads);

// Multiplies every gradient by factor.
void scale_grads(const std::vector<at::Tensor*>& grads, double factor);

// Scales the gradients so their global L2 norm is at most max_norm (<= 0: no
// clipping). Returns the norm before clipping (reading it waits for the device).
double clip_grad_norm(const std::vector<at::Tensor*>& grads, double max_norm);

// The factor clip_grad_norm scales by for a global norm `norm`: 1 when no
// clipping applies (max_norm <= 0, norm within it, or not finite).
double clip_factor(double norm, double max_norm);

// Linear warmup over `warmup` steps to `peak`, then cosine decay to
// peak * min_ratio at `total` steps. step counts from 0.
double lr_at(int64_t step, int64_t total, int64_t warmup, double peak, double min_ratio);

}  // namespace memo::train
