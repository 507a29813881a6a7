// The model state a trainer holds on this rank, counted from the tensors it
// owns (weights, master weights, gradients, AdamW moments; each storage once:
// the compute copy is the master when their dtypes agree), to compare with
// what the planner predicts (plan::model_state_bytes) and to report.
#pragma once

#include "model/llama.h"
#include "plan/cost_model.h"

namespace memo::runtime {
class ShardedLayerWeights;
}

namespace memo::train {

class AdamW;
class ZeroOptimizer;

// `adamw`: the unsharded optimizer (ZeRO 0, one process), or null;
// `zero`: the sharded one, or null; `layers`: ZeRO 3's layer shards, or null.
plan::ModelStateBytes held_model_state(const model::LlamaModel& model, AdamW* adamw, const ZeroOptimizer* zero,
                                       const runtime::ShardedLayerWeights* layers);

}  // namespace memo::train
