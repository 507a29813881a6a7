// join_ranks: the mesh check, then the process groups of the job.
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
             " dtype=", o.dtype, " device=", o.device, " seed=", o.seed, " data=", o.data, " lr=", o.lr,
             " zero=", o.zero, " alpha=", o.alpha, " clip=", o.clip, " warmup=", o.warmup, " resume=", o.resume, " chunk_tokens=", o.chunk_tokens);
}

}  // namespace

std::unique_ptr<dist::Context> join_ranks(const train::TrainOptions& options, const dist::LaunchInfo& launch,
                                          const std::string& also_agreed) {
  model::ModelConfig config = model::resolve_model(options.model);
  if (options.layers > 0) config.layers = options.layers;
  config.validate(options.model);
  const dist::MeshShape mesh = dist::check_mesh(
      launch.world_size, options.sp, {options.seq_len, options.batch, config.heads, config.kv_heads});

  dist::ContextOptions context_options;
  context_options.timeout =
      std::chrono::milliseconds(static_cast<int64_t>(options.dist_timeout * 1000.0 + 0.5));
  context_options.device = train::resolve_execution(options).device;
  context_options.agreement = agreement_of(options) + also_agreed;
  return std::make_unique<dist::Context>(launch, mesh, context_options);
}

}  // namespace memo::cli
