// The alpha LP of docs/design.md section 5, solved in closed form (one variable
// per layer, all layers alike), plus the device-resident share.
#include "plan/swap_split.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/units.h"

namespace memo::plan {

SplitChoice choose_split(const SplitInputs& in) {
  require_input(in.layers > 0 && in.seq_len > 0, "swap split: layers and seq_len must be positive");
  SplitChoice c;
  const int64_t swapped_layers = in.swap_last_two ? in.layers : std::max<int64_t>(0, in.layers - 2);
  const double rest = std::max(in.rest_bytes, 1.0);

  double alpha = 1.0;
  if (in.alpha) {
    require_input(*in.alpha >= 0.0 && *in.alpha <= 1.0, "alpha must be in [0, 1], got ", *in.alpha);
    alpha = *in.alpha;
    c.limited_by = "override";
  } else {
    // Copy-out of a layer hides behind the next layer's forward; prefetch
    // behind the backward of the layer above.
    double by_out = in.d2h_bytes_per_s > 0 ? (in.d2h_bytes_per_s * in.forward_s - in.fixed_bytes) / rest : 1.0;
    // Chunked memo's K, V rebuild shares the host link (its inputs) and
    // the backward's compute (its norm and projection).
    double by_in = in.h2d_bytes_per_s > 0 ? (in.h2d_bytes_per_s * (in.backward_s + in.rebuild_s) - in.fixed_bytes -
                                             in.rebuild_h2d_bytes) /
                                                rest
                                          : 1.0;
    alpha = std::clamp(std::min(by_out, by_in), 0.0, 1.0);
    c.limited_by = alpha < 1.0 ? "bandwidth" : "everything hides";
  }
  if (swapped_layers > 0 && in.host_bytes > 0) {
    const double per_layer = in.host_bytes / static_cast<double>(swapped_layers);
    double by_host = (per_layer - in.fixed_bytes) / rest;
    if (by_host < 0.0) {
      const double need = static_cast<double>(swapped_layers) * in.fixed_bytes;
      // The device tier: the fewest units whose x, o, lse the device holds
      // so that the others' fit the host (memo choosing its alpha, or at 0).
      const bool tier = !in.swap_last_two && (!in.alpha || *in.alpha == 0.0) && in.fixed_bytes > 0;
      const auto units = static_cast<int64_t>(std::ceil((need - in.host_bytes) / std::max(in.fixed_bytes, 1.0)));
      if (tier && units <= swapped_layers && static_cast<double>(units) * in.fixed_bytes <= in.device_spare_bytes) {
        c.fixed_on_device_units = units;
        c.fixed_on_device_bytes = static_cast<double>(units) * in.fixed_bytes;
        by_host = 0.0;
        if (!in.alpha) c.limited_by = "host memory";
      } else {
        throw InputError(cat("host memory too small: even alpha = 0 needs ", format_bytes(need),
                             " of pinned host memory for x, o and lse of ", swapped_layers, " layers, and ",
                             format_bytes(in.host_bytes), " is available",
                             tier ? cat(" (the device's spare ", format_bytes(in.device_spare_bytes),
                                        " could hold ", format_bytes(need - in.host_bytes), " of them: it cannot)")
                                  : std::string(),
                             "; use --policy recompute (no host memory), a shorter "
                             "--seq-len, or more --host-memory-gib"));
      }
    }
    if (by_host < alpha) {
      if (in.alpha)
        throw InputError(cat("host memory too small for alpha ", *in.alpha, ": it needs ",
                             format_bytes(swapped_layers * (in.fixed_bytes + *in.alpha * rest)),
                             " and ", format_bytes(in.host_bytes), " is available; alpha <= ",
                             strf("%.3f", std::floor(by_host * 1000) / 1000),
                             " fits, or use --policy recompute"));
      alpha = by_host;
      c.limited_by = "host memory";
    }
  }
  // Tokens, rounded down so the byte budgets hold.
  auto offload_tokens = static_cast<int64_t>(std::floor(alpha * static_cast<double>(in.seq_len)));
  double resident = 0.0;
  const double spare = in.device_spare_bytes - c.fixed_on_device_bytes;  // what the device tier left
  if (swapped_layers > 0 && spare > 0 && !in.alpha) {
    resident = std::min(1.0 - alpha, spare / (static_cast<double>(swapped_layers) * rest));
    resident = std::max(resident, 0.0);
  }
  auto resident_tokens = std::min<int64_t>(
      in.seq_len - offload_tokens, static_cast<int64_t>(std::floor(resident * static_cast<double>(in.seq_len))));
  c.alpha = static_cast<double>(offload_tokens) / static_cast<double>(in.seq_len);
  c.resident = static_cast<double>(resident_tokens) / static_cast<double>(in.seq_len);

  c.layers.resize(static_cast<size_t>(in.layers));
  for (int64_t i = 0; i < in.layers; ++i) {
    auto& l = c.layers[static_cast<size_t>(i)];
    l.swapped = i < swapped_layers;
    l.offload_tokens = l.swapped ? offload_tokens : in.seq_len;
    l.resident_tokens = l.swapped ? resident_tokens : 0;
    // The latest swapped units: backward reaches them first, so their device
    // bytes are the first let go.
    l.fixed_on_device = l.swapped && i >= swapped_layers - c.fixed_on_device_units;
  }
  const double moved = in.fixed_bytes + c.alpha * rest;
  c.host_bytes = static_cast<double>(swapped_layers - c.fixed_on_device_units) * moved;
  c.copy_out_s = in.d2h_bytes_per_s > 0 ? moved / in.d2h_bytes_per_s : 0.0;
  c.copy_in_s = in.h2d_bytes_per_s > 0 ? (moved + in.rebuild_h2d_bytes) / in.h2d_bytes_per_s : 0.0;
  c.recompute_s = in.recompute_s * (1.0 - c.alpha - c.resident);
  c.exposed_copy_s = static_cast<double>(swapped_layers) *
                     (std::max(0.0, c.copy_out_s - in.forward_s) +
                      std::max(0.0, c.copy_in_s - (in.backward_s + in.rebuild_s + c.recompute_s)));
  return c;
}

}  // namespace memo::plan
