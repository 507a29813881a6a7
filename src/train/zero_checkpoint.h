// Checkpoints of a ZeRO-sharded run, in the single-process format
// (train/checkpoint.h), so that N ranks' checkpoint resumes on M ranks with
// any mesh, and on one process with the unsharded code. Save: every unit's
// shards of the master weights and moments are gathered into whole tensors
// (unit by unit), rank 0 writes them through the atomic writer (temporary
// directory, fsync, rename) while the others wait at a barrier; a rank that
// dies at any point leaves the previous checkpoints whole (nothing is renamed
// before every tensor is written, and only rank 0 writes). Load: every rank
// reads the whole checkpoint and keeps its own shards.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

#include "dist/comm.h"
#include "model/llama.h"
#include "train/data.h"
#include "train/zero_optimizer.h"

namespace memo::train {

// Collective over the optimizer's group. The whole master weights and
// moments are gathered into temporaries on rank 0 (the other ranks take part
// in each unit's gather and drop it); model.master() is not used, only the
// model's config and master dtype. A non-finite shard on any rank: every rank
// throws the same Error and nothing is written. Returns the directory (on
// every rank).
std::string save_sharded_checkpoint(dist::Group& group, const std::string& out_dir, int64_t step,
                                    model::LlamaModel& model, ZeroOptimizer& optimizer, const DataSource& data,
                                    const nlohmann::json& info, int64_t keep, double loss);

// Every rank: the checkpoint's whole tensors read into temporaries (checked
// as load_checkpoint checks them), this rank's shards of the weights and
// moments into the optimizer, the step count and the data position restored,
// then optimizer.publish(model.compute(), layers) (layers: stage 3's source,
// else null). Returns the number of steps taken.
int64_t load_into_shards(const std::string& dir, model::LlamaModel& model, ZeroOptimizer& optimizer,
                         DataSource& data, const nlohmann::json& run,
                         runtime::ShardedLayerWeights* layers = nullptr);

}  // namespace memo::train
