// Chunked, fused cross-entropy forward and backward.
#include "train/loss.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <atomic>

#include "model/ops.h"

namespace memo::train {

namespace {

// Each chunk re-reads the head and read-modify-writes its gradient (6 bytes
// per head element with a float32 gradient), so on a GPU the chunk is as big
// as a few percent of device memory allows; a CPU keeps it modest.
constexpr int64_t kCpuBudget = 256ll << 20;
constexpr int64_t kCudaBudget = 4ll << 30;

// ATen's out_dtype GEMMs (16-bit inputs, float32 output with float32
// accumulation, in place) exist on CUDA only (PyTorch >= 2.8). Cleared the
// first time ATen refuses one, after which the portable path runs.
std::atomic<bool> g_mixed_gemm{true};

bool mixed_gemm(const at::Tensor& a, at::ScalarType out) {
  return a.is_cuda() && out == at::kFloat &&
         (a.scalar_type() == at::kBFloat16 || a.scalar_type() == at::kHalf) && g_mixed_gemm.load();
}

// [n, V] logits in the statistics dtype st from hc [n, h] and head [V, h].
at::Tensor logits_of(const at::Tensor& hc, const at::Tensor& head, at::ScalarType st) {
  if (mixed_gemm(hc, st)) {
    try {
      return at::mm(hc, head.t(), st);  // written in float32 directly
    } catch (const c10::Error&) {
      g_mixed_gemm = false;
    }
  }
  return at::mm(hc, head.t()).to(st);  // a no-op .to() when the dtypes agree
}

// grad [V, h] += dl [n, V]^T @ hc [n, h], with no [V, h] temporary when the
// dtypes agree or the mixed GEMM exists; otherwise in blocks of block_rows
// vocabulary rows, each product [block_rows, h] in the compute dtype, added
// into grad in its dtype (on the CPU through a cast copy of the block).
void accumulate_head_grad(at::Tensor& grad, const at::Tensor& dl, const at::Tensor& hc, int64_t block_rows) {
  if (grad.scalar_type() == dl.scalar_type()) {
    grad.addmm_(dl.t(), hc);
    return;
  }
  if (mixed_gemm(dl, grad.scalar_type()) && grad.is_contiguous()) {
    try {
      // baddbmm's out_dtype form accumulates into its float32 output in place
      // (C = beta * C + A @ B in one cuBLAS call); addmm's refuses a float32 self.
      auto g3 = grad.unsqueeze(0);  // [1, V, h]
      at::baddbmm_out(g3, g3, dl.t().unsqueeze(0), hc.unsqueeze(0), grad.scalar_type(), 1, 1);
      return;
    } catch (const c10::Error&) {
      g_mixed_gemm = false;
    }
  }
  const int64_t V = grad.size(0);
  for (int64_t v0 = 0; v0 < V; v0 += block_rows) {
    const int64_t vb = std::min(block_rows, V - v0);
    grad.narrow(0, v0, vb).add_(at::mm(dl.narrow(1, v0, vb).t(), hc));  // [vb, h]
  }
}

// dh [n, h] = dl [n, V] @ head [V, h]. A 16-bit CPU GEMM packs its second
// operand on each call (oneDNN reorders a bf16 head into its blocked layout
// where the CPU has AMX or AVX512-BF16: a [V, h] copy, larger than a small
// chunk's logits), so there the product runs over blocks of block_rows
// vocabulary rows, accumulated in float32. float32 and float64 CPU GEMMs and
// CUDA's read the head in place: one GEMM writes dh.
void head_input_grad(at::Tensor& dh, const at::Tensor& dl, const at::Tensor& head, int64_t block_rows) {
  const int64_t V = head.size(0);
  const bool reduced = model::stat_dtype(dh.scalar_type()) != dh.scalar_type();
  if (dh.is_cuda() || !reduced || block_rows >= V) {
    at::mm_out(dh, dl, head);
    return;
  }
  auto acc = at::zeros(dh.sizes(), dh.options().dtype(at::kFloat));  // [n, h]
  for (int64_t v0 = 0; v0 < V; v0 += block_rows) {
    const int64_t vb = std::min(block_rows, V - v0);
    acc.add_(at::mm(dl.narrow(1, v0, vb), head.narrow(0, v0, vb)));  // [n, h] bf16 partial
  }
  dh.copy_(acc);
}

}  // namespace

bool mixed_gemm_refused() { return !g_mixed_gemm.load(); }

int64_t loss_bytes_per_token(int64_t vocab, at::ScalarType compute) {
  const auto st = model::stat_dtype(compute);
  const int64_t per = static_cast<int64_t>(c10::elementSize(st)) +
                      (st != compute ? static_cast<int64_t>(c10::elementSize(compute)) : 0);
  return std::max<int64_t>(vocab, 1) * per;
}

int64_t default_loss_budget(const at::Device& device) {
  return device.is_cuda() ? kCudaBudget : kCpuBudget;
}

int64_t default_loss_chunk(int64_t vocab, at::ScalarType compute, int64_t budget_bytes) {
  return std::max<int64_t>(1, budget_bytes / loss_bytes_per_token(vocab, compute));
}

CrossEntropyResult chunked_cross_entropy(const at::Tensor& h, const at::Tensor& head,
                                         const at::Tensor& targets, int64_t chunk_tokens,
                                         double grad_scale, at::Tensor* head_grad) {
  const int64_t T = h.size(0);
  const int64_t V = head.size(0);
  const auto ct = h.scalar_type();
  if (chunk_tokens <= 0) chunk_tokens = default_loss_chunk(V, ct, default_loss_budget(h.device()));
  const auto st = model::stat_dtype(ct);
  const bool want_grad = grad_scale != 0.0;
  const bool reduced = st != ct;  // 16-bit compute: float32 logits, a compute-dtype gradient copy

  CrossEntropyResult r;
  if (want_grad) r.dh = at::empty_like(h);
  r.loss_sum = at::zeros({}, h.options().dtype(at::kDouble));
  for (int64_t begin = 0; begin < T; begin += chunk_tokens) {
    const int64_t n = std::min(chunk_tokens, T - begin);
    auto hc = h.narrow(0, begin, n);                             // [n, h]
    auto tc = targets.narrow(0, begin, n).unsqueeze(1);          // [n, 1]
    auto mask = tc.ne(kIgnoreTarget);                            // [n, 1]
    auto safe_t = at::where(mask, tc, 0);                        // [n, 1]
    auto maskf = mask.to(st);                                    // [n, 1]
    auto logits = logits_of(hc, head, st);                       // [n, V]
    auto picked = logits.gather(1, safe_t);                      // [n, 1]
    // logsumexp by hand, in place: at::logsumexp builds a second [n, V].
    auto mx = at::amax(logits, {1}, /*keepdim=*/true);           // [n, 1]
    logits.sub_(mx).exp_();                                      // e = exp(logits - max)
    auto se = logits.sum(1, /*keepdim=*/true);                   // [n, 1]
    r.loss_sum.add_(((se.log() + mx - picked) * maskf).sum());
    if (!want_grad) continue;
    // d(loss)/d(logits) = e / se - onehot(target), zero on ignored rows:
    // subtract se at the target, then scale each row by mask * grad_scale / se.
    logits.scatter_add_(1, safe_t, se.neg());
    auto row_scale = maskf.mul(grad_scale).div_(se);             // [n, 1]
    at::Tensor dl;                                               // [n, V] compute dtype
    if (!reduced) {
      dl = logits.mul_(row_scale);
    } else if (logits.is_cuda()) {
      dl = at::empty({n, V}, h.options());
      at::mul_out(dl, logits, row_scale);  // casts in the kernel: one pass
    } else {
      // On the CPU a mixed-dtype kernel casts through a float32 temporary of
      // its output; scaling in place and then converting needs none.
      dl = logits.mul_(row_scale).to(ct);
    }
    logits.reset();  // (reduced: frees the float32 buffer before the GEMMs)
    auto dh = r.dh.narrow(0, begin, n);                          // [n, h]
    // The CPU's packed copy of a head block takes at most the logits' bytes.
    const int64_t head_rows = std::max<int64_t>(
        1, n * V * static_cast<int64_t>(c10::elementSize(st)) / (h.size(1) * static_cast<int64_t>(c10::elementSize(ct))));
    head_input_grad(dh, dl, head, head_rows);
    // The fallback's blocks (a compute-dtype product and, on the CPU, its
    // cast to the gradient's dtype) take at most the bytes the logits held.
    const int64_t block_rows = std::max<int64_t>(
        1, n * V * static_cast<int64_t>(c10::elementSize(st)) /
               (h.size(1) * static_cast<int64_t>(c10::elementSize(ct) + head_grad->element_size())));
    accumulate_head_grad(*head_grad, dl, hc, block_rows);
  }
  return r;
}

}  // namespace memo::train
