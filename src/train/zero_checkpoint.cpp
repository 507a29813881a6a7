// Save a sharded state through the single-process writer; load it into shards.
#include "train/zero_checkpoint.h"

#include <ATen/ATen.h>

#include <cstdio>
#include <vector>

#include "core/error.h"
#include "train/checkpoint.h"

namespace memo::train {

std::string save_sharded_checkpoint(dist::Group& group, const std::string& out_dir, int64_t step,
                                    model::LlamaModel& model, ZeroOptimizer& optimizer, const DataSource& data,
                                    const nlohmann::json& info, int64_t keep, double loss) {
  // The diverged state is refused on every rank alike (save_checkpoint_state
  // would refuse it on rank 0 only, and the others would wait for it).
  if (optimizer.any_non_finite())
    throw Error(cat("step ", step, ": the weights or optimizer moments are not finite after the update; not saving "
                    "a checkpoint of the diverged state (the previous checkpoints stay; try a lower --lr)"));
  const bool root = group.rank() == 0;
  const auto device = optimizer.master_shard(0).device();
  // Rank 0's whole state; the other ranks receive each unit into scratch
  // they drop at once (an all-gather: every rank takes part).
  model::ModelWeights whole;
  std::vector<at::Tensor> m, v;
  if (root) {
    whole = optimizer.empty_whole(device);
    for (const auto& [name, t] : whole.named()) {
      m.push_back(at::empty_like(*t));
      v.push_back(at::empty_like(*t));
    }
  }
  const auto named = whole.named();
  std::vector<std::vector<size_t>> units;
  if (root) units = zero_units(whole);
  for (int64_t u = 0; u < optimizer.units(); ++u) {
    std::vector<at::Tensor*> weights, first, second;
    std::vector<at::Tensor> scratch;
    if (root) {
      for (size_t i : units[static_cast<size_t>(u)]) {
        weights.push_back(named[i].second);
        first.push_back(&m[i]);
        second.push_back(&v[i]);
      }
    } else {
      const auto& shapes = optimizer.layout(u).shapes;
      scratch.reserve(shapes.size());
      for (const auto& shape : shapes) scratch.push_back(at::empty(shape, optimizer.master_shard(u).options()));
      for (auto& t : scratch) weights.push_back(&t);
      first = second = weights;
    }
    optimizer.gather_unit(u, ZeroOptimizer::State::Master, weights);
    optimizer.gather_unit(u, ZeroOptimizer::State::FirstMoment, first);
    optimizer.gather_unit(u, ZeroOptimizer::State::SecondMoment, second);
  }
  std::string dir;
  if (root) {
    CheckpointState state{model.config(), model.options().master_dtype, whole, m, v, optimizer.steps_taken()};
    dir = save_checkpoint_state(out_dir, step, state, data, info, keep, loss);
  }
  // The others return once rank 0 has renamed the checkpoint into place (or
  // fail, naming it, when it died writing).
  group.barrier().wait();
  if (root) return dir;
  char name[32];
  std::snprintf(name, sizeof name, "step-%08lld", static_cast<long long>(step));  // as save_checkpoint names it
  return out_dir + "/checkpoints/" + name;
}

int64_t load_into_shards(const std::string& dir, model::LlamaModel& model, ZeroOptimizer& optimizer,
                         DataSource& data, const nlohmann::json& run, runtime::ShardedLayerWeights* layers) {
  // Read on the host: each rank keeps only its shards of it.
  auto whole = optimizer.empty_whole(at::kCPU);
  std::vector<at::Tensor> m, v;
  for (const auto& [name, t] : whole.named()) {
    m.push_back(at::empty_like(*t));
    v.push_back(at::empty_like(*t));
  }
  CheckpointState state{model.config(), model.options().master_dtype, whole, m, v, 0};
  const int64_t step = load_checkpoint_state(dir, state, data, run);
  optimizer.load_whole(whole, m, v, state.optimizer_steps);
  optimizer.publish(model.compute(), layers);
  return step;
}

}  // namespace memo::train
