// Model FLOPs per step by docs/design.md section 7: 6 x tokens x matmul parameters
// (lm head included) plus causal attention 4 s^2 nh d / 2 per layer forward,
// x 3.5 for forward plus backward. Recomputation is not counted.
#pragma once

#include <cstdint>

#include "model/config.h"

namespace memo::train {

inline double model_flops_per_step(const model::ModelConfig& c, int64_t sequences, int64_t seq_len) {
  const double tokens = static_cast<double>(sequences) * static_cast<double>(seq_len);
  const double s = static_cast<double>(seq_len);
  const double matmul = 6.0 * tokens * static_cast<double>(c.matmul_params());
  const double attn_fwd_layer = 4.0 * s * s * static_cast<double>(c.heads * c.head_dim) / 2.0;
  const double attention =
      3.5 * attn_fwd_layer * static_cast<double>(c.layers) * static_cast<double>(sequences);
  return matmul + attention;
}

// Peak dense bf16 FLOP/s of H100/H200 SXM, the MFU denominator by default.
constexpr double kDefaultPeakFlops = 989e12;

}  // namespace memo::train
