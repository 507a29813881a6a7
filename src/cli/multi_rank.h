// `memo train` on many ranks (torchrun, srun, RANK/WORLD_SIZE): the mesh
// checked from the options alone, then the join of the ranks.
#pragma once

#include <memory>

#include "dist/context.h"
#include "dist/launch.h"
#include "train/options.h"

namespace memo::cli {

// Checks the mesh from the options alone (InputError, exit 2 on every rank,
// before any store or collective), then brings the store and the
// world/sp/dp groups up (CommError naming a missing or failed rank: exit 1;
// a rank given other options than rank 0: InputError on every rank).
std::unique_ptr<dist::Context> join_ranks(const train::TrainOptions& options, const dist::LaunchInfo& launch);

}  // namespace memo::cli
