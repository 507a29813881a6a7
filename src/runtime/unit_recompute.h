// A unit's whole skeletal set recomputed from its input, attention
// included, the way its forward ran it: a chunk's queries against the
// layer's K, V (on the device, in `--kv-on-host` blocks, or under sequence
// parallelism every rank's in head layout, through the all-to-alls again);
// a whole layer on its own (or through the exchange). `recompute` restores
// every unit so; memo the units that keep only their input x
// (plan/swap_split.h: the host and the device short of their o and lse).
#pragma once

#include "model/skeletal.h"
#include "runtime/policy.h"
#include "runtime/unit.h"

namespace memo::runtime {

// Every tensor of `acts` but x (set: the unit's input [B, n, h]) from x,
// into acts' slots where they are preallocated (the same storage as the
// forward's keeps the bits the forward's). ctx: the unit's (t0, K and V
// for chunked layers).
void recompute_unit(const LayerContext& ctx, Unit u, model::LayerActivations& acts);

}  // namespace memo::runtime
