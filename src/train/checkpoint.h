// Training checkpoints: OUT/checkpoints/step-NNNNNNNN/ holding
//   model.safetensors + config.json   master weights, Hugging Face layout
//                                      (transformers and `memo eval` load it)
//   optimizer.safetensors             AdamW first/second moments ("m." / "v." + memo names)
//   trainer_state.json                step, AdamW step, data position (RNG state)
// Each is written into a temporary directory, fsynced, then renamed into
// place, so a crash mid-save leaves the previous checkpoints intact.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

#include "model/llama.h"
#include "train/data.h"
#include "train/optimizer.h"

namespace memo::train {

// Saves the state after `step` completed steps under out_dir/checkpoints and
// removes all but the newest `keep` (keep <= 0: keep all). `info` is stored
// in trainer_state.json (options, for the record). Returns the directory.
std::string save_checkpoint(const std::string& out_dir, int64_t step, model::LlamaModel& model,
                            AdamW& optimizer, const DataSource& data, const nlohmann::json& info,
                            int64_t keep);

// The checkpoint directory `path` names: a checkpoint itself, or an --out
// directory (its newest checkpoint). Throws InputError when there is none.
std::string find_checkpoint(const std::string& path);

// Restores weights, optimizer state and data position; returns the number of
// steps already taken. Throws InputError naming the file for anything that
// does not fit the model (missing tensors, shapes, a damaged file).
int64_t load_checkpoint(const std::string& dir, model::LlamaModel& model, AdamW& optimizer,
                        DataSource& data);

}  // namespace memo::train
