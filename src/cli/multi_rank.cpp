// start_multi_rank_training: mesh check, process groups, then the refusal.
#include "cli/multi_rank.h"

#include <chrono>

#include "core/error.h"
#include "dist/context.h"
#include "dist/mesh.h"
#include "model/config.h"
#include "train/trainer.h"

namespace memo::cli {

namespace {

// What every rank must have been given alike (compared with rank 0's at the join).
std::string agreement_of(const train::TrainOptions& o) {
  return cat("model=", o.model, " layers=", o.layers, " seq_len=", o.seq_len, " batch=", o.batch,
             " grad_accum=", o.grad_accum, " steps=", o.steps, " sp=", o.sp, " policy=", o.policy,
             " dtype=", o.dtype, " device=", o.device, " seed=", o.seed, " data=", o.data, " lr=", o.lr);
}

}  // namespace

void start_multi_rank_training(const train::TrainOptions& options, const dist::LaunchInfo& launch) {
  model::ModelConfig config = model::resolve_model(options.model);
  if (options.layers > 0) config.layers = options.layers;
  config.validate(options.model);
  const dist::MeshShape mesh = dist::check_mesh(
      launch.world_size, options.sp, {options.seq_len, options.batch, config.heads, config.kv_heads});

  dist::ContextOptions context_options;
  context_options.timeout =
      std::chrono::milliseconds(static_cast<int64_t>(options.dist_timeout * 1000.0 + 0.5));
  context_options.device = train::resolve_execution(options).device;
  context_options.agreement = agreement_of(options);
  dist::Context context(launch, mesh, context_options);
  throw InputError(cat("multi-rank training is not built yet: the process group and mesh are up (", mesh.describe(),
                       ", ", context.backend_name(), ", launched by ", launch.launcher, "); rank ", launch.rank));
}

}  // namespace memo::cli
