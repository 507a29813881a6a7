// RoundingBuffers: ownership and validity of the two device buffers.
#include "runtime/rounding_buffers.h"

#include "core/error.h"

namespace memo::runtime {

RoundingBuffers::RoundingBuffers(const model::ModelConfig& c, int64_t batch, int64_t tokens,
                                 at::ScalarType compute, at::Device device, int64_t chunks_per_layer)
    : chunks_per_layer_(chunks_per_layer) {
  if (chunks_per_layer < 1) throw Error(cat("rounding buffers: ", chunks_per_layer, " chunks per layer"));
  for (auto& b : buffers_) b.slots = model::allocate_skeletal(c, batch, tokens, compute, device);
  buffer_bytes_ = buffers_[0].slots.bytes();
}

int RoundingBuffers::index_of(Unit u) const {
  return static_cast<int>((u.layer * chunks_per_layer_ + u.chunk) % 2);
}

std::optional<Unit> RoundingBuffers::claim_for_forward(Unit u) {
  auto& b = mutable_of(u);
  auto previous = b.owner;
  b.owner = u;
  b.holds = BufferHolds::ForwardOutput;
  return previous;
}

void RoundingBuffers::claim_for_copy_in(Unit u) {
  auto& b = mutable_of(u);
  if (b.owner)
    throw Error(cat("rounding buffer ", index_of(u), ": copy-in of unit ", to_string(u),
                    " while unit ", to_string(*b.owner), " owns it"));
  b.owner = u;
  b.holds = BufferHolds::CopyIn;
}

void RoundingBuffers::release_after(Unit u) {
  for (auto& b : buffers_)
    if (b.owner && *b.owner > u) {
      b.owner.reset();
      b.holds = BufferHolds::Nothing;
    }
}

void RoundingBuffers::reset() {
  for (auto& b : buffers_) {
    b.owner.reset();
    b.holds = BufferHolds::Nothing;
  }
}

bool RoundingBuffers::holds_forward_output(Unit u) const {
  const auto& b = of(u);
  return b.owner == u && b.holds == BufferHolds::ForwardOutput;
}

}  // namespace memo::runtime
