// The alpha LP of docs/design.md section 5, solved in closed form (one variable
// per layer, all layers alike), plus the device-resident share.
#include "plan/swap_split.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/units.h"

namespace memo::plan {

ShortHostCover cover_host_shortfall(double shortfall, double unit_bytes, double attention_bytes,
                                    int64_t swapped_units, double device_room) {
  ShortHostCover c;
  const double unit = std::max(unit_bytes, 1.0);
  c.on_device = std::min({static_cast<int64_t>(std::ceil(shortfall / unit)), swapped_units,
                          static_cast<int64_t>(std::floor(std::max(0.0, device_room) / unit))});
  const double left = shortfall - static_cast<double>(c.on_device) * unit_bytes;
  if (left > 0 && attention_bytes > 0)
    c.x_only = std::min(swapped_units - c.on_device, static_cast<int64_t>(std::ceil(left / attention_bytes)));
  c.covered = left - static_cast<double>(c.x_only) * attention_bytes <= 0;
  return c;
}

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
      const double shortfall = need - in.host_bytes;
      // The device tier: as few units as cover the shortfall, as many as the
      // spare holds, whose x, o, lse the device keeps (memo choosing its
      // alpha, or at 0); then units keeping only x for the rest.
      const bool tier = !in.swap_last_two && (!in.alpha || *in.alpha == 0.0) && in.fixed_bytes > 0;
      const auto cover = tier ? cover_host_shortfall(shortfall, in.fixed_bytes, in.attention_bytes, swapped_layers,
                                                     in.device_spare_bytes)
                              : ShortHostCover{};
      const int64_t on_device = cover.on_device;
      const double left = shortfall - static_cast<double>(on_device) * in.fixed_bytes;
      if (tier && cover.covered) {
        c.fixed_on_device_units = on_device;
        c.fixed_on_device_bytes = static_cast<double>(on_device) * in.fixed_bytes;
        c.attention_recomputed_units = cover.x_only;
        c.attention_recomputed_bytes = static_cast<double>(cover.x_only) * in.attention_bytes;
        by_host = 0.0;
        if (!in.alpha) c.limited_by = "host memory";
      } else {
        const double best = static_cast<double>(swapped_layers - on_device) * in.attention_bytes;  // every unit x-only
        const std::string what = in.chunks_per_layer > 1 ? " units (layer chunks)" : " layers";
        if (in.swap_last_two)  // offload: every tensor of every unit, x, o and lse the least of it
          throw InputError(cat("host memory too small: offload keeps every skeletal tensor of its ", swapped_layers,
                               what, " on the host, ", format_bytes(static_cast<double>(swapped_layers) *
                                                                      (in.fixed_bytes + in.rest_bytes)),
                               ", and ", format_bytes(in.host_bytes),
                               " is available; use --policy memo (it recomputes what the host cannot hold), "
                               "--policy recompute (no host memory), a shorter --seq-len, or more --host-memory-gib"));
        throw InputError(cat("host memory too small: even alpha = 0 needs ", format_bytes(need),
                             " of pinned host memory for x, o and lse of ", swapped_layers, what, ", and ",
                             format_bytes(in.host_bytes), " is available",
                             tier ? cat(" (the device's spare ", format_bytes(in.device_spare_bytes), " holds ",
                                        on_device, " units' of them",
                                        in.attention_bytes > 0
                                            ? cat(", and keeping only x of every other unit would save ",
                                                  format_bytes(best), " more: still ",
                                                  format_bytes(left - best), " short")
                                            : std::string(),
                                        ")")
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
  // Many ranks: as many units keeping only x as the rank that needed most.
  // They cost this rank no host (alpha is 0 wherever any rank is short:
  // the ranks agree on the smallest alpha).
  if (in.min_attention_recomputed_units > c.attention_recomputed_units) {
    require_input(in.attention_bytes > 0 && !in.swap_last_two,
                  "swap split: units keeping only x need memo with attention_bytes");
    c.attention_recomputed_units =
        std::min(in.min_attention_recomputed_units, swapped_layers - c.fixed_on_device_units);
    c.attention_recomputed_bytes = static_cast<double>(c.attention_recomputed_units) * in.attention_bytes;
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
  }
  // Units keeping only x: chunk 0 of every layer, then chunk 1..., so the
  // attention run again is over the shortest causal prefixes; the same
  // units on every rank given their count. They keep no resident or
  // offloaded tokens (backward recomputes every token of them anyway).
  const int64_t chunks = std::max<int64_t>(1, in.chunks_per_layer);
  int64_t marked = 0;
  for (int64_t chunk = 0; chunk < chunks && marked < c.attention_recomputed_units; ++chunk)
    for (int64_t i = chunk; i < in.layers && marked < c.attention_recomputed_units; i += chunks) {
      auto& l = c.layers[static_cast<size_t>(i)];
      if (!l.swapped) continue;
      l.attention_recomputed = true;
      l.resident_tokens = 0;
      l.offload_tokens = 0;
      ++marked;
    }
  // The device tier: the latest swapped units that do not keep only x
  // (backward reaches them first, so their device bytes are the first let go).
  int64_t tiered = 0;
  for (int64_t i = swapped_layers - 1; i >= 0 && tiered < c.fixed_on_device_units; --i) {
    auto& l = c.layers[static_cast<size_t>(i)];
    if (l.attention_recomputed) continue;
    l.fixed_on_device = true;
    ++tiered;
  }
  const double moved = in.fixed_bytes + c.alpha * rest;
  c.host_bytes = static_cast<double>(swapped_layers - c.fixed_on_device_units - c.attention_recomputed_units) * moved +
                 static_cast<double>(c.attention_recomputed_units) * (in.fixed_bytes - in.attention_bytes);
  c.copy_out_s = in.d2h_bytes_per_s > 0 ? moved / in.d2h_bytes_per_s : 0.0;
  c.copy_in_s = in.h2d_bytes_per_s > 0 ? (moved + in.rebuild_h2d_bytes) / in.h2d_bytes_per_s : 0.0;
  c.recompute_s = in.recompute_s * (1.0 - c.alpha - c.resident);
  // Exposed copy time per step, unit by kind: a tier unit copies nothing
  // (the K, V rebuild reads its device x); a unit keeping only x copies x
  // out and back (and its input for the rebuild) and recomputes every
  // token; the others move `moved`.
  auto exposed = [&](double bytes, double recompute_s) {
    const double out = in.d2h_bytes_per_s > 0 ? bytes / in.d2h_bytes_per_s : 0.0;
    const double back = in.h2d_bytes_per_s > 0 ? (bytes + in.rebuild_h2d_bytes) / in.h2d_bytes_per_s : 0.0;
    return std::max(0.0, out - in.forward_s) + std::max(0.0, back - (in.backward_s + in.rebuild_s + recompute_s));
  };
  const int64_t plain = swapped_layers - c.fixed_on_device_units - c.attention_recomputed_units;
  c.exposed_copy_s = static_cast<double>(plain) * exposed(moved, c.recompute_s) +
                     static_cast<double>(c.attention_recomputed_units) *
                         exposed(in.fixed_bytes - in.attention_bytes, in.recompute_s);
  return c;
}

}  // namespace memo::plan
