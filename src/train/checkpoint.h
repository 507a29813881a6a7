// Training checkpoints: OUT/checkpoints/step-NNNNNNNN/ holding
//   model.safetensors + config.json   master weights, Hugging Face layout
//                                      (transformers and `memo eval` load it)
//   optimizer.safetensors             AdamW first/second moments ("m." / "v." + memo names)
//   trainer_state.json                step, AdamW step, data position (RNG state), the
//                                      step's loss, the data's fingerprint, the run's options
// Each is written into a temporary directory, fsynced, then renamed into
// place, so a crash mid-save leaves the previous checkpoints intact. A state
// with non-finite weights is never saved, and rotation never removes the
// newest checkpoint whose loss was finite. On resume nothing in the
// directory is trusted: every file is checked against the model and the run.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

#include "model/llama.h"
#include "train/data.h"
#include "train/optimizer.h"

namespace memo::train {

// What a checkpoint holds of the model and the optimizer, as whole tensors:
// the master weights, AdamW's first and second moments (one per
// master.named() entry, in that order) and its step count. save_checkpoint
// and load_checkpoint take them from / put them into a LlamaModel and an
// AdamW; ZeRO (train/zero_checkpoint.h) gathers them from the shards.
struct CheckpointState {
  const model::ModelConfig& config;
  at::ScalarType master_dtype;
  model::ModelWeights& master;
  std::vector<at::Tensor>& m;
  std::vector<at::Tensor>& v;
  int64_t optimizer_steps = 0;
};

// save_checkpoint of a state (the tensors may be views of nothing else).
std::string save_checkpoint_state(const std::string& out_dir, int64_t step, CheckpointState& state,
                                  const DataSource& data, const nlohmann::json& info, int64_t keep, double loss);
// load_checkpoint into a state: the whole tensors are copied in place and
// state.optimizer_steps set; the caller refreshes what derives from them.
int64_t load_checkpoint_state(const std::string& dir, CheckpointState& state, DataSource& data,
                              const nlohmann::json& run);

// Saves the state after `step` completed steps, whose loss was `loss`, under
// out_dir/checkpoints and removes all but the newest `keep` (keep <= 0: keep
// all), never the newest one whose recorded loss is finite. `info` is the
// run's resolved configuration (Trainer::resolved_config), stored in
// trainer_state.json; a resume compares it with its own. Throws Error, and
// writes nothing, when a weight or optimizer moment is not finite (the
// diverged state). Returns the directory.
std::string save_checkpoint(const std::string& out_dir, int64_t step, model::LlamaModel& model,
                            AdamW& optimizer, const DataSource& data, const nlohmann::json& info,
                            int64_t keep, double loss);

// The checkpoint directory `path` names: a checkpoint itself, or an --out
// directory (its newest checkpoint). Throws InputError when there is none.
std::string find_checkpoint(const std::string& path);

// Restores weights, optimizer state and data position; returns the number of
// steps already taken. `run` is the resuming run's resolved configuration.
// Throws InputError naming the file and field, before training, for anything
// that does not fit: a damaged or edited file; missing, extra, misshapen,
// wrongly typed or non-finite tensors; a step count out of range; a model
// shape, batch, seq_len, grad_accum, learning-rate schedule (--lr, --warmup,
// --min-lr-ratio), AdamW setting, clipping, seed or dtype other than the
// checkpoint's, or other data. The policy, alpha, --steps, the device and the
// output options may change.
int64_t load_checkpoint(const std::string& dir, model::LlamaModel& model, AdamW& optimizer,
                        DataSource& data, const nlohmann::json& run);

}  // namespace memo::train
