// `memo train` on many ranks: the part of issue 13 built so far (launch,
// process groups, mesh); training itself on many ranks comes with the step
// executor's integration.
#pragma once

#include "dist/launch.h"
#include "train/options.h"

namespace memo::cli {

// Checks the mesh from the options alone (InputError, exit 2 on every rank,
// before any store or collective), brings the store and the world/sp/dp
// groups up (CommError naming a missing or failed rank: exit 1), then refuses
// with an InputError: multi-rank training is not built yet.
[[noreturn]] void start_multi_rank_training(const train::TrainOptions& options, const dist::LaunchInfo& launch);

}  // namespace memo::cli
