// The activation store of the swapping policies: where each unit's skeletal
// set lives between its forward and its backward, and the copies that move
// it. It owns the two rounding buffers, the pinned host pool's slots, the
// swap engine (side streams and events), and the bookkeeping of what is in
// flight: the layer inputs held for their copies, the inputs prefetched for
// backward, the tokens kept resident on the device. Keyed by Unit.
//
// The store decides nothing: a UnitPlacement per unit (from the policy) says
// which tokens go to the host, which stay resident and which are dropped;
// when to prefetch and what to recompute is the policy's call.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <vector>

#include "model/skeletal.h"
#include "runtime/host_slots.h"
#include "runtime/rounding_buffers.h"
#include "runtime/swap_engine.h"
#include "runtime/unit.h"

namespace memo::runtime {

class TraceRecorder;

// Where one unit's tokens go between forward and backward. Of each skeletal
// tensor that is always offloaded (x, o, lse) every token goes to the host;
// of every other one, the first host_tokens go to the host, the next
// resident_tokens stay on the device (a copy outside the rounding buffer),
// and the rest are dropped.
struct UnitPlacement {
  bool swapped = false;  // false: the unit stays in its rounding buffer until its backward
  int64_t host_tokens = 0;
  int64_t resident_tokens = 0;
  int64_t tokens = 0;  // the unit's tokens (a shorter last chunk); 0: the store's `tokens`
  // memo's device tier (plan/swap_split.h): x, o, lse stay on the device
  // (copies outside the rounding buffer) instead of going to the host.
  bool fixed_on_device = false;
  // memo, host and device short: only x goes to the host; o and lse are
  // kept nowhere (the policy recomputes the unit's attention in backward).
  bool attention_recomputed = false;
};

// Chunked layers (docs/chunks.md): each layer's K and V [B, S, 2 nkv d] go
// to the host after its forward (like x, o, lse) and come back for its
// backward.
struct KvPlacement {
  int64_t layers = 0;  // 0: no K and V kept by the store (whole layers)
  int64_t tokens = 0;  // S, the layer's tokens
};

class ActivationStore {
 public:
  ActivationStore() = default;
  // Allocates the rounding buffers and the host pool, once. `placement`: one
  // entry per unit of the step. Throws memory::HostMemoryError (naming
  // `host_budget_bytes`) when the pool cannot be mapped or pinned.
  // `tokens`: a unit's (the rounding buffers' size); chunked layers run
  // `chunks_per_layer` units to a layer, and `kv` says whose K and V the
  // store keeps on the host.
  ActivationStore(const model::ModelConfig& c, int64_t batch, int64_t tokens, at::ScalarType compute,
                  at::Device device, std::map<Unit, UnitPlacement> placement, double host_budget_bytes,
                  TraceRecorder* trace, int64_t chunks_per_layer = 1, KvPlacement kv = {});

  const UnitPlacement& placement(Unit u) const;
  // The first tokens of every sequence that come back whole in backward
  // (host and resident ones); the rest are to be recomputed.
  int64_t kept_tokens(Unit u) const;
  // u's tokens (the store's `tokens`, or a shorter last chunk's).
  int64_t unit_tokens(Unit u) const;

  // The start of a step: every buffer free, nothing held.
  void begin_step();

  // Forward. The rounding buffer u's forward writes into; first the compute
  // stream waits for the previous owner's copy to the host, and that owner's
  // held input is let go.
  const model::LayerActivations* forward_storage(Unit u);
  // u's forward is done and wrote `acts` (its buffer, acts.x its input): hold
  // the input; for a swapped unit start the copy of its host tokens and copy
  // out its resident tokens.
  void save(Unit u, const model::LayerActivations& acts);

  // Backward has reached u: buffers of later units are free.
  void backward_reached(Unit u) { buffers_.release_after(u); }
  // u's buffer still holds its forward output (a unit that was not swapped,
  // or one whose buffer was not reused).
  bool in_buffer(Unit u) const { return buffers_.holds_forward_output(u); }
  // u's buffer is free for a copy-in.
  bool buffer_free_for(Unit u) const { return buffers_.free_for(u); }
  bool prefetched(Unit u) const { return prefetched_.count(u) > 0; }
  // Starts copying u's host tokens back into its (free) buffer and its input
  // into a tensor of its own (device tier: its input is the copy it kept).
  void prefetch(Unit u);

  // u's skeletal set from its buffer, with its held input (in_buffer(u)).
  model::LayerActivations take_from_buffer(Unit u);
  // u's skeletal set after its prefetch: the compute stream waits for the
  // copy-in, the resident tokens go back into the buffer. Tokens from
  // kept_tokens(u) on are not restored.
  model::LayerActivations take_copied_in(Unit u);

  // Chunked layers: layer `layer`'s K and V [B, S, 2 nkv d] after its
  // forward: the copy to the host starts (the tensor is held until the
  // copy is waited on: at chunk 1 of the next layer's forward).
  void save_kv(int64_t layer, const at::Tensor& kv);
  // Starts copying K and V of `layer` back into a device tensor of their own.
  void prefetch_kv(int64_t layer);
  bool kv_prefetched(int64_t layer) const { return kv_in_.count(layer) > 0; }
  // K and V of `layer` after their copy-in (prefetched now if they were not).
  at::Tensor take_kv(int64_t layer);

  // Chunked layers: fn(chunk, x) for every chunk of `layer` in order, x its
  // input [B, n, h] on the device, for a backward that rebuilds the layer's
  // K and V (memo). An input still held on the device (the last units') is
  // used as it is; every other comes back from its host slot through two
  // chunk-sized staging tensors, chunk i + 1's copy running while fn works
  // on chunk i, so beyond what is held only two chunks' inputs are on the
  // device at once. Copies bytes counted by rebuild_h2d_bytes. x is valid
  // only during fn.
  void for_each_input(int64_t layer, const std::function<void(int64_t chunk, const at::Tensor& x)>& fn);
  // Bytes copied to the device by for_each_input since construction.
  int64_t rebuild_h2d_bytes() const { return rebuild_h2d_bytes_; }

  // After the last layer's forward: the inputs still held (the last units',
  // views of their layer's whole-sequence input) become chunk-sized copies,
  // and the last layer's K, V copy to the host is waited on, so that
  // neither whole-sequence tensor lives on through the loss.
  void forward_done();

  // After the last backward: the compute stream waits for every copy; the
  // tensors held for them are let go.
  void end_step();

  // Device bytes held: both rounding buffers, the held and prefetched
  // inputs, the resident tokens, the device tier's x, o, lse. Host bytes: the pool's slots.
  int64_t device_bytes() const;
  int64_t host_bytes() const { return host_.bytes() + kv_host_.bytes(); }
  int64_t kv_host_bytes() const { return kv_host_.bytes(); }
  int64_t buffer_bytes() const { return buffers_.buffer_bytes(); }
  const memory::HostPool& host_pool() const { return host_.pool(); }
  const memory::HostPool& kv_host_pool() const { return kv_host_.pool(); }
  const RoundingBuffers& buffers() const { return buffers_; }
  SwapEngine& engine() { return *engine_; }
  int64_t held_inputs() const { return static_cast<int64_t>(inputs_held_.size()); }

 private:
  // The host slots and u's tensors, paired in the copy's direction.
  std::vector<CopyPair> host_pairs(Unit u, const model::LayerActivations& acts, bool to_host) const;
  // The skeletal spec of the layer input x.
  size_t x_spec_index() const;
  // u's rounding-buffer slots, narrowed to u's tokens.
  model::LayerActivations unit_slots(Unit u) const;
  // The engine's key of layer `layer`'s K and V copies (apart from every chunk's).
  static Unit kv_unit(int64_t layer) { return Unit{layer, -1}; }
  // The engine's key of for_each_input's copies into staging tensor `slot` (0, 1).
  static Unit staging_unit(int64_t layer, int64_t slot) { return Unit{layer, -2 - slot}; }

  std::vector<model::SkeletalSpec> specs_;
  at::Device device_ = at::Device(at::kCPU);
  std::map<Unit, UnitPlacement> placement_;
  RoundingBuffers buffers_;
  HostSlots host_;
  std::unique_ptr<SwapEngine> engine_;
  std::map<Unit, at::Tensor> inputs_held_;  // layer inputs from forward, until copied out or used
  std::map<Unit, at::Tensor> inputs_in_;    // layer inputs prefetched for backward
  std::map<Unit, std::vector<at::Tensor>> resident_;  // per unit, per spec (undefined: none)
  std::map<Unit, std::vector<at::Tensor>> fixed_;     // device tier: per unit, per spec x, o, lse (others undefined)
  std::set<Unit> prefetched_;
  int64_t tokens_ = 0;
  int64_t chunks_per_layer_ = 1;
  KvPlacement kv_;
  std::vector<model::SkeletalSpec> kv_specs_;  // one spec: K and V [B, S, 2 nkv d]
  HostSlots kv_host_;                          // per layer (unit {layer, 0}) K and V
  std::map<int64_t, at::Tensor> kv_in_;        // K and V prefetched for backward, by layer
  int64_t rebuild_h2d_bytes_ = 0;              // for_each_input's copies, counted
};

}  // namespace memo::runtime
