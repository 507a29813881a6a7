// The pinned host pool of the swapping policies, carved into slots: per unit,
// per skeletal tensor, the tokens that unit keeps on the host. One pool of
// exactly the slots' bytes (each slot 16-byte aligned), pinned on CUDA,
// outside c10's allocators (memory::HostPool).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <map>
#include <vector>

#include "memory/host_pool.h"
#include "model/skeletal.h"
#include "runtime/unit.h"

namespace memo::runtime {

class HostSlots {
 public:
  // Slot alignment in the pool.
  static constexpr int64_t kAlign = 16;

  HostSlots() = default;
  // `specs`: one unit's skeletal set (model::skeletal_specs); `host_tokens`:
  // per unit that goes to the host, per spec, how many tokens (the first
  // ones along its token dimension) it keeps there. Slots are laid out unit
  // by unit in key order, spec by spec. Throws memory::HostMemoryError (with
  // `budget_bytes`) when the pool cannot be mapped or pinned.
  HostSlots(const std::vector<model::SkeletalSpec>& specs,
            const std::map<Unit, std::vector<int64_t>>& host_tokens, c10::Device device,
            double budget_bytes);

  bool has(Unit u) const { return views_.count(u) > 0; }
  // u's slots, one per spec (a slot of 0 tokens is an empty view).
  const std::vector<at::Tensor>& views(Unit u) const;
  // Bytes of the slots, alignment included (what the pool was asked for).
  int64_t bytes() const { return bytes_; }
  const memory::HostPool& pool() const { return pool_; }

 private:
  memory::HostPool pool_;  // its tensor's views below keep the memory alive
  int64_t bytes_ = 0;
  std::map<Unit, std::vector<at::Tensor>> views_;
};

}  // namespace memo::runtime
