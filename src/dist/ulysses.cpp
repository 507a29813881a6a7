// The Ulysses layout changes: a permute into all-to-all order, the
// all-to-all, a permute back (and the replicas of kv heads).
#include "dist/ulysses.h"

#include <ATen/ATen.h>

#include <utility>

#include "core/error.h"

namespace memo::dist {

PendingLayout::PendingLayout(Work work, std::function<at::Tensor()> finish)
    : work_(std::move(work)), finish_(std::move(finish)) {}

at::Tensor PendingLayout::wait() {
  work_.wait();
  return finish_();
}

namespace {

void check_heads(int64_t heads, int64_t sp, const char* op) {
  if (heads <= 0 || (heads % sp != 0 && sp % heads != 0))
    throw Error(cat(op, ": ", heads, " heads can neither be split over sp ", sp, " nor replicated"));
}

}  // namespace

PendingLayout start_tokens_to_heads(Group& sp, const at::Tensor& x) {
  const int64_t n = sp.size();
  if (x.dim() != 4) throw Error("tokens_to_heads: x must be [B, S/sp, H, d]");
  check_heads(x.size(2), n, "tokens_to_heads");
  // Replicated kv heads: virtual head j is head j * H / sp, so rank j gets it.
  at::Tensor t = x.size(2) % n == 0 ? x : x.repeat_interleave(n / x.size(2), 2);  // [B, S/sp, Hv, d]
  const int64_t B = t.size(0), local_tokens = t.size(1), local_heads = t.size(2) / n, d = t.size(3);
  // [sp (destination), B, S/sp, Hv/sp, d]: part j holds the heads of rank j.
  at::Tensor send = t.reshape({B, local_tokens, n, local_heads, d}).permute({2, 0, 1, 3, 4}).contiguous();
  at::Tensor recv = at::empty_like(send);  // [sp (source = token block), B, S/sp, Hv/sp, d]
  Work work = sp.all_to_all(recv, send);
  return PendingLayout(std::move(work), [recv, B, n, local_tokens, local_heads, d] {
    return recv.permute({1, 0, 2, 3, 4}).reshape({B, n * local_tokens, local_heads, d});  // [B, S, Hv/sp, d]
  });
}

at::Tensor tokens_to_heads(Group& sp, const at::Tensor& x) { return start_tokens_to_heads(sp, x).wait(); }

PendingLayout start_heads_to_tokens(Group& sp, const at::Tensor& y, int64_t heads) {
  const int64_t n = sp.size();
  if (y.dim() != 4) throw Error("heads_to_tokens: y must be [B, S, H/sp, d]");
  check_heads(heads, n, "heads_to_tokens");
  const bool replicated = heads % n != 0;
  const int64_t virtual_heads = replicated ? n : heads;
  const int64_t B = y.size(0), S = y.size(1), local_heads = y.size(2), d = y.size(3);
  if (local_heads != virtual_heads / n || S % n != 0)
    throw Error(cat("heads_to_tokens: y is [", B, ", ", S, ", ", local_heads, ", ", d, "], expected ",
                    virtual_heads / n, " heads per rank and S divisible by ", n));
  const int64_t local_tokens = S / n;
  // [sp (destination = token block), B, S/sp, Hv/sp, d]
  at::Tensor send = y.reshape({B, n, local_tokens, local_heads, d}).permute({1, 0, 2, 3, 4}).contiguous();
  at::Tensor recv = at::empty_like(send);  // [sp (source = head block), B, S/sp, Hv/sp, d]
  Work work = sp.all_to_all(recv, send);
  return PendingLayout(std::move(work), [=] {
    at::Tensor out = recv.permute({1, 2, 0, 3, 4}).reshape({B, local_tokens, virtual_heads, d});  // [B, S/sp, Hv, d]
    if (!replicated) return out;
    return out.view({B, local_tokens, heads, n / heads, d}).sum(3);  // [B, S/sp, H, d]: replicas summed
  });
}

at::Tensor heads_to_tokens(Group& sp, const at::Tensor& y, int64_t heads) {
  return start_heads_to_tokens(sp, y, heads).wait();
}

int64_t ulysses_all_to_all_bytes(int64_t batch, int64_t seq_len, int64_t heads, int64_t head_dim, int64_t sp,
                                 int64_t element_size) {
  const int64_t virtual_heads = heads % sp == 0 ? heads : sp;
  const int64_t local = batch * (seq_len / sp) * virtual_heads * head_dim * element_size;  // the token-layout tensor
  return local - local / sp;  // all but the part that stays on this rank
}

UlyssesLayerBytes ulysses_layer_bytes(int64_t batch, int64_t seq_len, int64_t heads, int64_t kv_heads,
                                      int64_t head_dim, int64_t sp, int64_t element_size) {
  const int64_t q = ulysses_all_to_all_bytes(batch, seq_len, heads, head_dim, sp, element_size);
  const int64_t kv = ulysses_all_to_all_bytes(batch, seq_len, kv_heads, head_dim, sp, element_size);
  // forward: q, k, v in, o out; backward: d_o in, dq, dk, dv out.
  return {2 * q + 2 * kv, 2 * q + 2 * kv};
}

}  // namespace memo::dist
