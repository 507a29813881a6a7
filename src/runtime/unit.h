// The unit the activation store keeps apart: one layer's skeletal set today,
// one token chunk of a layer when layers run over chunks (chunk 0 is the
// whole layer). Units order as they run forward: by layer, then by chunk.
#pragma once

#include <compare>
#include <cstdint>
#include <string>

namespace memo::runtime {

struct Unit {
  int64_t layer = 0;
  int64_t chunk = 0;

  // A layer alone is its only unit, so a layer index converts (the swap
  // engine's callers and tests pass layer numbers).
  constexpr Unit(int64_t layer = 0, int64_t chunk = 0) : layer(layer), chunk(chunk) {}
  friend constexpr auto operator<=>(const Unit&, const Unit&) = default;
};

// "3" for a whole layer, "3.1" for chunk 1 of layer 3 (trace span names).
inline std::string to_string(const Unit& u) {
  return u.chunk == 0 ? std::to_string(u.layer) : std::to_string(u.layer) + "." + std::to_string(u.chunk);
}

}  // namespace memo::runtime
