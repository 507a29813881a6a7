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
  auto& master = model.master();
  const auto named = master.named();
  // Rank 0's whole moments; the other ranks receive each unit into scratch
  // they drop at once (an all-gather: every rank takes part).
  std::vector<at::Tensor> m, v;
  if (root)
    for (const auto& [name, t] : named) {
      m.push_back(at::empty_like(*t));
      v.push_back(at::empty_like(*t));
    }
  const auto units = zero_units(master);
  for (int64_t u = 0; u < optimizer.units(); ++u) {
    const auto& idx = units[static_cast<size_t>(u)];
    std::vector<at::Tensor*> weights, first, second;
    std::vector<at::Tensor> scratch;
    scratch.reserve(2 * idx.size());
    for (size_t i : idx) {
      weights.push_back(named[i].second);
      if (root) {
        first.push_back(&m[i]);
        second.push_back(&v[i]);
      } else {
        scratch.push_back(at::empty_like(*named[i].second));
        first.push_back(&scratch.back());
        scratch.push_back(at::empty_like(*named[i].second));
        second.push_back(&scratch.back());
      }
    }
    optimizer.gather_unit(u, ZeroOptimizer::State::Master, weights);
    optimizer.gather_unit(u, ZeroOptimizer::State::FirstMoment, first);
    optimizer.gather_unit(u, ZeroOptimizer::State::SecondMoment, second);
  }
  std::string dir;
  if (root) {
    CheckpointState state{model.config(), model.options().master_dtype, master, m, v, optimizer.steps_taken()};
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
                         DataSource& data, const nlohmann::json& run) {
  auto& master = model.master();
  std::vector<at::Tensor> m, v;
  for (const auto& [name, t] : master.named()) {
    m.push_back(at::zeros_like(*t));
    v.push_back(at::zeros_like(*t));
  }
  CheckpointState state{model.config(), model.options().master_dtype, master, m, v, 0};
  const int64_t step = load_checkpoint_state(dir, state, data, run);
  optimizer.load_whole(master, m, v, state.optimizer_steps);
  model.refresh_compute();
  return step;
}

}  // namespace memo::train
