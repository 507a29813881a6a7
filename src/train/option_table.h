// The options of `memo train` and `memo bench`, each declared once: one row
// per option (flag, TOML key, member, help, check, the commands that take it,
// its JSON form, its place in the memory-plan cache key, the header line that
// shows it, whether a resumed run must keep it). Everything else is generated
// from the rows: the CLI11 flags (cli/option_flags.h), TOML loading and
// validation (train/option_loading.cpp), the resolved configuration JSON, the cache
// key and the header lines (here). docs/options.md says how to add one.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "model/config.h"
#include "runtime/split_report.h"
#include "train/options.h"

namespace memo::train {

// Which commands take an option (bits).
enum Command : unsigned { kTrain = 1u, kBench = 2u };

// The member an option sets: its C++ type says its CLI type (INT, UINT,
// FLOAT, TEXT or a switch) and its TOML type.
using OptionField = std::variant<int64_t TrainOptions::*, uint64_t TrainOptions::*, double TrainOptions::*,
                                 bool TrainOptions::*, std::string TrainOptions::*>;

// What the run resolved its options into (the Trainer fills it): the JSON
// forms, the cache key and the header lines read an option's resolved value
// from here where it differs from what was given (--device auto -> "cpu").
struct ResolvedRun {
  model::ModelConfig model;       // --model after --layers
  std::string device;             // at::Device::str(): "cpu", "cuda:0"
  std::string compute_dtype;      // "float32", "bfloat16"
  // Known once the policy, model and data exist (not needed by the cache key):
  std::string policy;             // the policy's own name
  std::optional<double> alpha;    // the policy's alpha (memo: chosen by the LP when --alpha < 0)
  std::optional<runtime::SplitReport> split;  // offload's and memo's split by units
  int64_t chunk_tokens = 0;       // tokens per layer chunk as run; 0: whole layers (train/chunking.h)
  std::string whole_sequence;     // the whole-sequence tensors of a chunked layer, bytes per token
  double host_budget_bytes = 0;   // what offload/memo's host pool may use ...
  std::string host_budget_source; // ... and where that figure comes from
  std::string attention_kernel;
  std::string data;               // the data source's description
  int64_t loss_chunk = 1;         // tokens per cross-entropy chunk, resolved
  int64_t loss_budget_bytes = 0;  // the device's loss budget (--loss-chunk 0)
  double peak_flops = 0;
  std::string weights_from;       // a Hugging Face directory the weights came from
  std::string resumed_from;       // the checkpoint resumed from
  int64_t start_step = 0;
};

// A policy's split by units: {alpha, resident, units, swapped_units,
// fixed_on_device_units, fixed_on_device_bytes, attention_recomputed_units,
// attention_recomputed_bytes} (the train config's policy_split, bench rows' split).
nlohmann::json to_json(const runtime::SplitReport& s);

// Writes an option's entries into a JSON object (the resolved configuration
// or the cache key).
using JsonForm = std::function<void(nlohmann::json& out, const TrainOptions&, const ResolvedRun&)>;

struct OptionSpec {
  std::string flag;                 // "--seq-len"; a switch: "--planned-memory", "--no-memory-check"
  std::string key;                  // "seq_len": the TOML key, and the name in validation messages
  OptionField field;
  std::optional<bool> switch_sets;  // a bool flag without a value sets the member to this
  unsigned commands = kTrain;
  std::string help;                 // train's --help text
  std::string bench_help;           // bench's, when it differs
  std::function<void(const TrainOptions&)> check;  // throws InputError; empty: any value
  std::string example;              // a valid non-default value, as on the command line (tests, docs)
  JsonForm json;                    // in the resolved configuration; empty: not shown
  JsonForm cache_key;               // in the memory-plan cache key; empty: the plan does not depend on it
  std::string header;               // label of the header line that shows it; empty: none
  // Resuming a checkpoint with a different value is refused: the JSON
  // pointer into the resolved configuration and the flag named in the message.
  std::vector<std::pair<std::string, std::string>> resume_must_match;

  bool on(Command c) const { return (commands & c) != 0; }
  const std::string& help_for(Command c) const { return c == kBench && !bench_help.empty() ? bench_help : help; }
  bool is_switch() const { return switch_sets.has_value(); }
};

// Every option, in the order of `memo train --help` and the TOML key list.
const std::vector<OptionSpec>& option_table();
// The row with this TOML key; nullptr when there is none.
const OptionSpec* find_option(const std::string& key);

// The resolved configuration (config.json, --json's "config", a checkpoint's
// trainer_state "info").
nlohmann::json resolved_config_json(const TrainOptions& options, const ResolvedRun& run);

// What a memory plan depends on (MemoryPlanning adds its format and the torch
// version); only `model`, `device` and `compute_dtype` of `run` are read.
nlohmann::json plan_cache_key(const TrainOptions& options, const ResolvedRun& run);

// The "key value" lines `memo train` prints before its first step.
std::vector<std::pair<std::string, std::string>> header_lines(const TrainOptions& options, const ResolvedRun& run);
// The labels of the header lines, in order (a row's `header` names one of
// these, or its own label: then the row's line comes after "steps").
std::vector<std::string> header_labels();

// The JSON pointers (and flags) a resumed run must keep (train/checkpoint.cpp).
std::vector<std::pair<std::string, std::string>> resume_contract();

}  // namespace memo::train
