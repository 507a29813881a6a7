// The token-wise split of each layer's skeletal tensors under the `memo`
// policy, and the small LP that chooses it (docs/design.md section 5). Pure C++.
//
// Per layer, x, o and lse always go to host. Of every other skeletal tensor
// the first `offload_tokens` tokens go to host, the next `resident_tokens`
// stay on the device, and the rest are dropped and recomputed token-wise in
// backward. Layers with swapped = false (the last two) stay whole in their
// rounding buffer. Where even x, o and lse of every swapped unit do not fit
// the host, memo holds those of the latest swapped units on the device
// instead (fixed_on_device: the device tier), out of the spare device
// memory; what the device cannot hold either, units that keep only x make
// up (attention_recomputed: their o and lse are not kept, backward runs
// their attention again), the earliest chunks first, where the causal
// prefix, and so the recompute, is shortest.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace memo::plan {

struct LayerSplit {
  bool swapped = false;
  int64_t offload_tokens = 0;
  int64_t resident_tokens = 0;
  bool fixed_on_device = false;  // memo: x, o, lse kept on the device, nothing on the host
  bool attention_recomputed = false;  // memo: only x kept (on the host); o, lse recomputed in backward
};

// Figures the LP needs, all per GPU and per layer of the run's shape.
struct SplitInputs {
  int64_t layers = 0;
  int64_t seq_len = 0;
  double fixed_bytes = 0;     // x + o + lse of one layer (always offloaded)
  double rest_bytes = 0;      // every other skeletal tensor of one layer, all tokens
  double forward_s = 0;       // one layer's forward
  double backward_s = 0;      // one layer's backward (without recompute)
  double recompute_s = 0;     // recomputing `rest` of one layer for all tokens
  // Chunked memo (layers = units): K and V rebuilt in backward from the
  // units' inputs: per unit the input copied back once more, and the time
  // of its norm and QKV projection (compute the prefetch can hide behind).
  double rebuild_h2d_bytes = 0;
  double rebuild_s = 0;
  double d2h_bytes_per_s = 0;
  double h2d_bytes_per_s = 0;
  double host_bytes = 0;      // host memory memo may use
  double device_spare_bytes = 0;  // device memory left for resident tokens
  // o + lse of one unit: the host bytes a unit that keeps only x leaves
  // off (memo; 0: no such units, e.g. under sequence parallelism, where
  // recomputing attention would need every rank's all-to-alls). Units are
  // layer-major, chunks_per_layer to a layer (chunk = index % chunks).
  double attention_bytes = 0;
  int64_t chunks_per_layer = 1;
  // Many ranks: at least this many units keep only x (the most any rank's
  // host needed), so that every rank runs the same units' attention again
  // (under sequence parallelism their all-to-alls must line up). Needs
  // attention_bytes > 0.
  int64_t min_attention_recomputed_units = 0;
  std::optional<double> alpha;    // user override of the offloaded fraction
  bool swap_last_two = false;     // offload: every layer; memo: not the last two
};

struct SplitChoice {
  double alpha = 0;         // offloaded fraction of the `rest` tokens
  double resident = 0;      // device-resident fraction
  int64_t fixed_on_device_units = 0;  // units whose x, o, lse stay on the device (host short)
  double fixed_on_device_bytes = 0;   // their bytes
  int64_t attention_recomputed_units = 0;  // units keeping only x (host and device short)
  double attention_recomputed_bytes = 0;   // their o and lse, kept nowhere
  std::vector<LayerSplit> layers;
  double host_bytes = 0;    // host bytes the split needs (before pool alignment)
  double copy_out_s = 0;    // per swapped layer
  double copy_in_s = 0;
  double recompute_s = 0;   // per swapped layer
  double exposed_copy_s = 0;  // per step: copy time not hidden behind compute (tier units copy nothing, x-only units x)
  std::string limited_by;   // "bandwidth", "host memory", "override", "everything fits"
};

// How memo covers a host short of x, o, lse of its swapped units by
// `shortfall` bytes (choose_split; the chunk plan and the fit check count
// it alike): the device tier takes as few units (of unit_bytes each) as
// cover it, as many as device_room holds; units keeping only x (each
// leaving attention_bytes off the host; none when that is 0) the rest, at
// most every other swapped unit.
struct ShortHostCover {
  int64_t on_device = 0;  // units whose x, o, lse the device holds
  int64_t x_only = 0;     // units keeping only x
  bool covered = false;   // on_device unit_bytes + x_only attention_bytes >= shortfall
};
ShortHostCover cover_host_shortfall(double shortfall, double unit_bytes, double attention_bytes,
                                    int64_t swapped_units, double device_room);

// Solves max alpha s.t. copy-out hides behind the forward, the prefetch hides
// behind the backward, and the swapped layers fit in host memory; then keeps
// a resident share on the device with the spare memory. When even alpha = 0
// does not fit in host memory, memo (not offload, not an explicit alpha
// above 0) holds x, o and lse of as few of the latest swapped units as
// needed on the device, within device_spare_bytes, and where that is not
// enough the fewest units, earliest chunks first, keep only x (when
// attention_bytes > 0; they keep no resident tokens either). Throws
// InputError when even that is short, saying what would fit.
SplitChoice choose_split(const SplitInputs& in);

}  // namespace memo::plan
