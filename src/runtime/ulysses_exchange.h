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
  at::Tensor lse_to_tokens(const at::Tensor& lse) override;   // [B, nh/sp, S] -> [B, nh, S/sp]
  at::Tensor lse_to_heads(const at::Tensor& lse) override;    // [B, nh, S/sp] -> [B, nh/sp, S]
  model::HeadCounts local_heads() const override { return local_; }

 private:
  // recv <- the all-to-all of send along dim 0 (one part per rank), waited.
  at::Tensor all_to_all(const at::Tensor& send);

  dist::Group& sp_;
  int64_t n_;                 // sp ranks
  int64_t nh_, nkv_, d_;      // the model's heads, kv heads, head dim
  bool replicated_;           // kv heads fewer than sp: each rank holds one copy
  model::HeadCounts local_;   // heads per rank in head layout
};

}  // namespace memo::runtime
