// Counting the model state a trainer holds, storage by storage.
#include "train/model_state.h"

#include <ATen/ATen.h>

#include <set>

#include "runtime/sharded_weights.h"
#include "train/optimizer.h"
#include "train/zero_optimizer.h"

namespace memo::train {

namespace {

// Bytes of the storages behind `tensors` not yet in `seen` (undefined: released).
int64_t new_bytes(const std::vector<const at::Tensor*>& tensors, std::set<const void*>& seen) {
  int64_t bytes = 0;
  for (const at::Tensor* t : tensors) {
    if (!t->defined()) continue;
    if (seen.insert(t->storage().unsafeGetStorageImpl()).second) bytes += static_cast<int64_t>(t->storage().nbytes());
  }
  return bytes;
}

std::vector<const at::Tensor*> tensors_of(const model::ModelWeights& w) {
  std::vector<const at::Tensor*> out;
  for (auto& [name, t] : const_cast<model::ModelWeights&>(w).named()) out.push_back(t);
  return out;
}

}  // namespace

plan::ModelStateBytes held_model_state(const model::LlamaModel& model, AdamW* adamw, const ZeroOptimizer* zero,
                                       const runtime::ShardedLayerWeights* layers) {
  plan::ModelStateBytes b;
  std::set<const void*> seen;
  // The compute copies first: when they are the master's tensors they count as weights.
  b.weights = new_bytes(tensors_of(model.compute()), seen) + (layers ? layers->shard_bytes() : 0);
  b.master = new_bytes(tensors_of(model.master()), seen) + (zero ? zero->master_bytes() : 0);
  b.grads = new_bytes(tensors_of(model.grads()), seen) + (zero ? zero->grad_bytes() : 0);
  if (adamw) {
    std::vector<const at::Tensor*> moments;
    for (const auto& t : adamw->first_moments()) moments.push_back(&t);
    for (const auto& t : adamw->second_moments()) moments.push_back(&t);
    b.moments = new_bytes(moments, seen);
  }
  if (zero) b.moments += zero->moment_bytes();
  return b;
}

}  // namespace memo::train
