// Chunked, fused cross-entropy forward and backward.
#include "train/loss.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "model/ops.h"

namespace memo::train {

int64_t default_loss_chunk(int64_t vocab, int64_t budget_bytes) {
  return std::max<int64_t>(1, budget_bytes / (2 * 4 * std::max<int64_t>(vocab, 1)));
}

CrossEntropyResult chunked_cross_entropy(const at::Tensor& h, const at::Tensor& head,
                                         const at::Tensor& targets, int64_t chunk_tokens,
                                         double grad_scale, at::Tensor* head_grad) {
  const int64_t T = h.size(0);
  const int64_t V = head.size(0);
  if (chunk_tokens <= 0) chunk_tokens = default_loss_chunk(V);
  const auto st = model::stat_dtype(h.scalar_type());
  const bool want_grad = grad_scale != 0.0;

  CrossEntropyResult r;
  if (want_grad) r.dh = at::empty_like(h);
  auto loss_sum = at::zeros({}, h.options().dtype(at::kDouble));
  auto count = at::zeros({}, targets.options());
  for (int64_t begin = 0; begin < T; begin += chunk_tokens) {
    const int64_t n = std::min(chunk_tokens, T - begin);
    auto hc = h.narrow(0, begin, n);                 // [n, h]
    auto tc = targets.narrow(0, begin, n);           // [n]
    auto mask = tc.ne(kIgnoreTarget);                // [n]
    auto safe_t = at::where(mask, tc, at::zeros_like(tc)).unsqueeze(1);
    auto logits = at::matmul(hc, head.t()).to(st);   // [n, V]
    auto lse = at::logsumexp(logits, 1, /*keepdim=*/true);  // [n, 1]
    auto picked = logits.gather(1, safe_t);          // [n, 1]
    auto maskf = mask.to(st).unsqueeze(1);           // [n, 1]
    loss_sum += ((lse - picked) * maskf).sum().to(at::kDouble);
    count += mask.sum();
    if (!want_grad) continue;
    // d(loss)/d(logits) = softmax - onehot(target), zero on ignored rows.
    auto dlogits = logits.sub_(lse).exp_();          // reuses the logits buffer
    dlogits.scatter_add_(1, safe_t, at::full_like(picked, -1.0));
    dlogits.mul_(maskf * grad_scale);
    auto dl = dlogits.to(h.scalar_type());
    r.dh.narrow(0, begin, n).copy_(at::matmul(dl, head));
    model::accumulate_matmul_grad(*head_grad, dl, hc);
  }
  r.loss_sum = loss_sum.item<double>();
  r.count = count.item<int64_t>();
  return r;
}

}  // namespace memo::train
