// The two device rounding buffers of the swapping policies: each one unit's
// skeletal set (every tensor but the layer input, model::allocate_skeletal),
// allocated once; unit u writes its forward into buffer u % 2 while the other
// buffer's copy to the host runs. Each buffer carries its owner and what it
// holds for that owner in one struct, so "whose data is this, and is it
// still intact" is one question with one answer.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
#include <optional>

#include "model/skeletal.h"
#include "runtime/unit.h"

namespace memo::runtime {

// What a rounding buffer holds for its owner.
enum class BufferHolds {
  Nothing,        // free: no owner
  ForwardOutput,  // the owner's forward wrote it and nothing has overwritten it since
  CopyIn,         // the owner's kept tokens are being (or have been) copied back from the host
};

struct RoundingBuffer {
  model::LayerActivations slots;  // preallocated; no x slot
  std::optional<Unit> owner;      // set exactly when holds != Nothing
  BufferHolds holds = BufferHolds::Nothing;
};

class RoundingBuffers {
 public:
  RoundingBuffers() = default;
  // Two buffers for `batch` sequences of `tokens` tokens; units run
  // `chunks_per_layer` to a layer (1: whole layers).
  RoundingBuffers(const model::ModelConfig& c, int64_t batch, int64_t tokens, at::ScalarType compute,
                  at::Device device, int64_t chunks_per_layer = 1);

  // Which buffer unit `u` uses: units alternate in the order they run.
  int index_of(Unit u) const;
  const RoundingBuffer& buffer(int index) const { return buffers_[static_cast<size_t>(index)]; }
  const RoundingBuffer& of(Unit u) const { return buffers_[static_cast<size_t>(index_of(u))]; }

  // u's forward is about to write its buffer. Returns the previous owner (its
  // copy to the host must have finished before the compute stream writes).
  std::optional<Unit> claim_for_forward(Unit u);
  // u's kept tokens are about to be copied back into its buffer, which must be free.
  void claim_for_copy_in(Unit u);
  // Backward has reached `u`: every buffer owned by a later unit is free
  // (its backward is queued before anything that follows on the compute stream).
  void release_after(Unit u);
  // The start of a step: both free.
  void reset();

  // u's buffer still holds u's forward output.
  bool holds_forward_output(Unit u) const;
  // The buffer u would use has no owner.
  bool free_for(Unit u) const { return !of(u).owner; }

  // Bytes of one buffer (both are the same).
  int64_t buffer_bytes() const { return buffer_bytes_; }

 private:
  RoundingBuffer& mutable_of(Unit u) { return buffers_[static_cast<size_t>(index_of(u))]; }

  std::array<RoundingBuffer, 2> buffers_;
  int64_t chunks_per_layer_ = 1;
  int64_t buffer_bytes_ = 0;
};

}  // namespace memo::runtime
