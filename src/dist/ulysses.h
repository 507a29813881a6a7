// DeepSpeed-Ulysses layouts over an sp group. Token layout: a rank holds its
// S/sp consecutive tokens of every head, [B, S/sp, H, d]. Head layout: a rank
// holds every token of its H/sp heads, [B, S, H/sp, d]. One all-to-all turns
// one into the other. Under GQA with fewer kv heads than sp ranks (sp % H ==
// 0), the kv heads are replicated: rank r gets head r * H / sp, [B, S, 1, d],
// and the way back sums the sp / H replicas (the gradient of a copy).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>

#include "dist/comm.h"

namespace memo::dist {

// A layout change in flight: wait() returns the tensor in its new layout.
class PendingLayout {
 public:
  PendingLayout(Work work, std::function<at::Tensor()> finish);
  at::Tensor wait();

 private:
  Work work_;
  std::function<at::Tensor()> finish_;
};

// [B, S/sp, H, d] -> [B, S, H/sp, d] (or [B, S, 1, d], head r*H/sp, when sp % H == 0).
PendingLayout start_tokens_to_heads(Group& sp, const at::Tensor& x);
at::Tensor tokens_to_heads(Group& sp, const at::Tensor& x);

// [B, S, H/sp, d] -> [B, S/sp, H, d], `heads` = H of the token layout; when
// H < sp, y is [B, S, 1, d] and the replicas of each head are summed.
PendingLayout start_heads_to_tokens(Group& sp, const at::Tensor& y, int64_t heads);
at::Tensor heads_to_tokens(Group& sp, const at::Tensor& y, int64_t heads);

// Bytes one rank sends for one such all-to-all of a [B, S/sp, H, d] tensor
// (replicated heads count as the sp copies they become): B (S/sp) max(H, sp)
// d x element_size x (sp-1)/sp. The way back moves the same.
int64_t ulysses_all_to_all_bytes(int64_t batch, int64_t seq_len, int64_t heads, int64_t head_dim, int64_t sp,
                                 int64_t element_size);

// One attention layer: q, k, v to head layout and o back in forward; d_o to
// head layout and dq, dk, dv back in backward (the minimal mirror; what a
// policy recomputes in token layout costs more, see docs/dist.md).
struct UlyssesLayerBytes {
  int64_t forward = 0;
  int64_t backward = 0;
};
UlyssesLayerBytes ulysses_layer_bytes(int64_t batch, int64_t seq_len, int64_t heads, int64_t kv_heads,
                                      int64_t head_dim, int64_t sp, int64_t element_size);

}  // namespace memo::dist
