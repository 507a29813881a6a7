// Ulysses layout changes for the per-layer program: a permute into
// all-to-all order (part j for rank j), one all-to-all over the sp group, a
// permute back. The same layouts as dist/ulysses.h, with q, k and v packed
// into one call and lse's [B, heads, S] layout.
#include "runtime/ulysses_exchange.h"

#include <ATen/ATen.h>

#include <vector>

#include "core/error.h"

namespace memo::runtime {

UlyssesExchange::UlyssesExchange(dist::Group& sp, const model::ModelConfig& c)
    : sp_(sp), n_(sp.size()), nh_(c.heads), nkv_(c.kv_heads), d_(c.head_dim), replicated_(c.kv_heads % sp.size() != 0) {
  if (nh_ % n_ != 0 || (replicated_ && n_ % nkv_ != 0))
    throw Error(cat("Ulysses: ", nh_, " heads and ", nkv_, " kv heads cannot be split or replicated over sp ", n_));
  local_ = {nh_ / n_, replicated_ ? 1 : nkv_ / n_};
}

at::Tensor UlyssesExchange::all_to_all(const at::Tensor& send) {
  at::Tensor recv = at::empty_like(send);
  sp_.all_to_all(recv, send).wait();
  return recv;
}

at::Tensor UlyssesExchange::to_heads(const at::Tensor& x, int64_t q_heads) {
  const int64_t B = x.size(0), St = x.size(1);  // St: this rank's tokens
  auto heads = x.view({B, St, q_heads + 2 * nkv_, d_});
  auto part = [&](int64_t first, int64_t count) {  // [B, St, sp, heads per rank, d]
    auto t = heads.narrow(2, first, count);
    if (count % n_ != 0) t = t.repeat_interleave(n_ / count, 2);  // replicated kv: virtual head j for rank j
    return t.reshape({B, St, n_, t.size(2) / n_, d_});
  };
  std::vector<at::Tensor> parts;
  if (q_heads > 0) parts.push_back(part(0, q_heads));
  parts.push_back(part(q_heads, nkv_));
  parts.push_back(part(q_heads + nkv_, nkv_));
  auto send = at::cat(parts, 3)  // [B, St, sp, hl, d]
                  .permute({2, 0, 1, 3, 4})
                  .contiguous();  // [sp (destination), B, St, hl, d]
  auto recv = all_to_all(send);   // [sp (source = token block), B, St, hl, d]
  const int64_t hl = send.size(3);
  return recv.permute({1, 0, 2, 3, 4}).reshape({B, n_ * St, hl * d_});  // [B, S, hl d]
}

at::Tensor UlyssesExchange::qkv_to_heads(const at::Tensor& qkv) { return to_heads(qkv, nh_); }

at::Tensor UlyssesExchange::kv_to_heads(const at::Tensor& kv) { return to_heads(kv, 0); }

at::Tensor UlyssesExchange::o_to_tokens(const at::Tensor& o) {
  const int64_t B = o.size(0), S = o.size(1), St = S / n_, w = o.size(2);  // w = nh/sp d
  auto send = o.reshape({B, n_, St, w}).permute({1, 0, 2, 3}).contiguous();  // [sp (token block), B, St, w]
  auto recv = all_to_all(send);                                             // [sp (head block), B, St, w]
  return recv.permute({1, 2, 0, 3}).reshape({B, St, n_ * w});                // [B, St, nh d]
}

at::Tensor UlyssesExchange::o_to_heads(const at::Tensor& o) {
  const int64_t B = o.size(0), St = o.size(1), w = o.size(2) / n_;
  auto send = o.reshape({B, St, n_, w}).permute({2, 0, 1, 3}).contiguous();  // [sp (head block), B, St, w]
  auto recv = all_to_all(send);                                             // [sp (token block), B, St, w]
  return recv.permute({1, 0, 2, 3}).reshape({B, n_ * St, w});                // [B, S, nh/sp d]
}

at::Tensor UlyssesExchange::to_tokens(const at::Tensor& y, int64_t q_heads) {
  const int64_t B = y.size(0), S = y.size(1), St = S / n_;
  const int64_t ql = q_heads / n_, hl = ql + 2 * local_.kv;
  auto send = y.reshape({B, n_, St, hl, d_}).permute({1, 0, 2, 3, 4}).contiguous();  // [sp (token block), B, St, hl, d]
  auto recv = all_to_all(send).permute({1, 2, 0, 3, 4});  // [B, St, sp (head block), hl, d]
  auto part = [&](int64_t first, int64_t count, int64_t heads) {  // [B, St, heads, d]
    auto t = recv.narrow(3, first, count).reshape({B, St, n_ * count, d_});
    if (n_ * count == heads) return t;
    return t.view({B, St, heads, n_ * count / heads, d_}).sum(3);  // replicas summed
  };
  std::vector<at::Tensor> parts;
  if (q_heads > 0) parts.push_back(part(0, ql, q_heads));
  parts.push_back(part(ql, local_.kv, nkv_));
  parts.push_back(part(ql + local_.kv, local_.kv, nkv_));
  return at::cat(parts, 2).view({B, St, (q_heads + 2 * nkv_) * d_});  // [B, St, (q_heads+2nkv) d]
}

at::Tensor UlyssesExchange::qkv_to_tokens(const at::Tensor& dqkv) { return to_tokens(dqkv, nh_); }

at::Tensor UlyssesExchange::kv_to_tokens(const at::Tensor& dkv) { return to_tokens(dkv, 0); }

at::Tensor UlyssesExchange::lse_to_tokens(const at::Tensor& lse) {
  const int64_t B = lse.size(0), hl = lse.size(1), S = lse.size(2), St = S / n_;
  auto send = lse.reshape({B, hl, n_, St}).permute({2, 0, 1, 3}).contiguous();  // [sp (token block), B, hl, St]
  auto recv = all_to_all(send);                                                // [sp (head block), B, hl, St]
  return recv.permute({1, 0, 2, 3}).reshape({B, n_ * hl, St});                  // [B, nh, St]
}

at::Tensor UlyssesExchange::lse_to_heads(const at::Tensor& lse) {
  const int64_t B = lse.size(0), hl = lse.size(1) / n_, St = lse.size(2);
  auto send = lse.reshape({B, n_, hl, St}).permute({1, 0, 2, 3}).contiguous();  // [sp (head block), B, hl, St]
  auto recv = all_to_all(send);                                                // [sp (token block), B, hl, St]
  return recv.permute({1, 2, 0, 3}).reshape({B, hl, n_ * St});                  // [B, nh/sp, S]
}

}  // namespace memo::runtime
