// What a swapping policy chose in prepare, for reports (`--json`, bench
// rows): memo's alpha LP split (plan/swap_split.h) by units. Plain data.
#pragma once

#include <cstdint>

namespace memo::runtime {

struct SplitReport {
  double alpha = 0;     // offloaded share of the recomputable tensors' tokens
  double resident = 0;  // device-resident share
  int64_t units = 0;          // layers, or layer chunks
  int64_t swapped_units = 0;  // those whose skeletal set leaves the rounding buffers
  // memo on a short host: units whose x, o, lse the device holds (the tier) ...
  int64_t fixed_on_device_units = 0;
  double fixed_on_device_bytes = 0;
  // ... and units keeping only x (o, lse kept nowhere, attention recomputed).
  int64_t attention_recomputed_units = 0;
  double attention_recomputed_bytes = 0;
};

}  // namespace memo::runtime
