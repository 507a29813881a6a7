// The stage exchange of Ulysses sequence parallelism (DeepSpeed-Ulysses): the
// ranks of an sp group each hold S/sp consecutive tokens of every sequence
// ("token layout"); around attention one all-to-all per tensor turns that into
// every token of heads / sp heads ("head layout") and back. q, k and v travel
// packed in one all-to-all; kv heads are split when sp divides them and
// replicated when sp exceeds them (rank r takes kv head r * nkv / sp; the way
// back sums the sp / nkv replicas' gradients). Every layout change is counted
// by kind in the group's CommStats (dist/comm.h).
#pragma once

#include <ATen/core/Tensor.h>

#include "dist/comm.h"
#include "model/config.h"
#include "runtime/stage_exchange.h"

namespace memo::runtime {

class UlyssesExchange final : public StageExchange {
 public:
  // `sp` outlives the exchange; its size must split the query heads and split
  // or replicate the kv heads (dist::check_mesh checked it).
  UlyssesExchange(dist::Group& sp, const model::ModelConfig& config);

  at::Tensor qkv_to_heads(const at::Tensor& qkv) override;    // [B, S/sp, (nh+2nkv) d] -> [B, S, (nh+2kv)/sp.. d]
  at::Tensor o_to_tokens(const at::Tensor& o) override;       // [B, S, nh/sp d] -> [B, S/sp, nh d]
  at::Tensor o_to_heads(const at::Tensor& o) override;        // [B, S/sp, nh d] -> [B, S, nh/sp d]
  at::Tensor qkv_to_tokens(const at::Tensor& dqkv) override;  // head layout -> [B, S/sp, (nh+2nkv) d], replicas summed
  at::Tensor kv_to_heads(const at::Tensor& kv) override;     // [B, St, 2nkv d] -> [B, sp St, 2kv_local d]
  at::Tensor kv_to_tokens(const at::Tensor& dkv) override;   // head layout -> [B, St, 2nkv d], replicas summed
  at::Tensor lse_to_tokens(const at::Tensor& lse) override;   // [B, nh/sp, S] -> [B, nh, S/sp]
  at::Tensor lse_to_heads(const at::Tensor& lse) override;    // [B, nh, S/sp] -> [B, nh/sp, S]
  model::HeadCounts local_heads() const override { return local_; }

 private:
  // recv <- the all-to-all of send along dim 0 (one part per rank), waited.
  at::Tensor all_to_all(const at::Tensor& send);
  // [B, St, (q_heads + 2 nkv) d] (q_heads: nh, or 0 for k and v alone) to
  // head layout, and back (replicated kv heads summed).
  at::Tensor to_heads(const at::Tensor& x, int64_t q_heads);
  at::Tensor to_tokens(const at::Tensor& y, int64_t q_heads);

  dist::Group& sp_;
  int64_t n_;                 // sp ranks
  int64_t nh_, nkv_, d_;      // the model's heads, kv heads, head dim
  bool replicated_;           // kv heads fewer than sp: each rank holds one copy
  model::HeadCounts local_;   // heads per rank in head layout
};

}  // namespace memo::runtime
