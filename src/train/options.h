// Everything `memo train` can be told, with defaults, TOML loading and
// validation. Flag names and TOML keys are the same words (dashes in flags,
// underscores in TOML): --seq-len <-> seq_len. Each member here has one row
// in train/option_table.cpp (flag, help, check, JSON, cache key, header);
// the default is the member's initializer.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace memo::train {

struct TrainOptions {
  // model
  std::string model = "tiny";  // preset name or Hugging Face config.json
  int64_t layers = 0;          // > 0 overrides the model's layer count
  // shape
  int64_t seq_len = 256;
  int64_t batch = 8;
  int64_t grad_accum = 1;
  int64_t steps = 500;
  // activation memory
  std::string policy = "keep";
  double alpha = -1.0;            // memo: offloaded fraction; < 0 = chosen by the LP
  double host_memory_gib = 0.0;   // host pool budget for offload/memo; 0 = memory::host_budget's default
  std::string chunk_tokens = "0"; // tokens per layer chunk (docs/chunks.md): "0" whole layers, "C", "auto";
                                  // bench: a comma-separated list (train/chunking.h)
  bool kv_on_host = false;        // chunked layers: K, V and dK, dV in host blocks (runtime/kv_stream.h)
  // optimisation
  double lr = 3e-3;
  double min_lr_ratio = 0.1;
  int64_t warmup = 30;
  double weight_decay = 0.1;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double clip = 1.0;
  // data
  std::string data;               // empty: the built-in synthetic task
  std::string data_dtype = "auto";
  // checkpoints (train/checkpoint.h)
  std::string resume;             // a checkpoint directory, or an --out directory (its newest)
  int64_t checkpoint_every = 0;   // OUT/checkpoints/step-N every N steps and after the last; 0 = never
  int64_t keep_checkpoints = 3;   // newest checkpoints kept; 0 = all
  // execution
  std::string device = "auto";    // auto, cpu, cuda
  std::string dtype = "auto";     // compute dtype: auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float64 (CPU)
  std::string attention = "auto"; // CUDA fused attention kernel: auto, cudnn, flash, efficient
  int64_t loss_chunk = 0;         // tokens per cross-entropy chunk; 0 = automatic
  uint64_t seed = 1234;
  double peak_tflops = 0.0;       // for MFU; 0 = 989 on CUDA (H100/H200 SXM bf16 dense)
  // output
  std::string out;                // directory for config.json, metrics.jsonl, summary.json
  std::string json;               // one JSON report file
  std::string trace;              // Chrome trace of the last step's streams
  // memory planning (docs/design.md section 6)
  bool planned_memory = false;    // serve steps from a bi-level planned arena
  std::string plan_cache;         // plan cache directory; empty: OUT/plans or ~/.cache/memo/plans
  std::string memory_timeline;    // HTML timeline of one profiled step
  std::string export_dsa;         // directory for the profiled regions as DSA CSVs
  int64_t log_every = 0;          // 0 = about 20 progress lines
  bool memory_check = true;       // refuse, before allocating, a run whose estimate does not fit (train/fit_check.h)
  // many ranks (src/dist/; launched by torchrun, srun or RANK/WORLD_SIZE)
  int64_t sp = 1;                 // sequence-parallel ranks (Ulysses); world = dp x sp
  double dist_timeout = 300.0;    // seconds a collective or the join waits for a peer before naming it
  int64_t zero = -1;              // ZeRO stage 0-3 on many ranks; -1: 3 on many ranks (one process: none)

  // Throws InputError naming the first bad field.
  void validate() const;

  bool operator==(const TrainOptions&) const = default;
};


// Applies a TOML file's keys onto `options`. Unknown keys, wrong types and
// syntax errors throw InputError naming the file, key and line.
void apply_toml_file(const std::string& path, TrainOptions& options);

}  // namespace memo::train
