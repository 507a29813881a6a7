// `memo train` and `memo bench` on many ranks (torchrun, srun, RANK/WORLD_SIZE): the mesh
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
// `also_agreed`: more that every rank must have been given alike (bench's
// policies and steps).
std::unique_ptr<dist::Context> join_ranks(const train::TrainOptions& options, const dist::LaunchInfo& launch,
                                          const std::string& also_agreed = "");

}  // namespace memo::cli
