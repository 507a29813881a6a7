// The fit check: before a run allocates anything, estimate what it will hold
// (weights, gradients, AdamW state, the activations the policy keeps, one
// layer's working set, the pinned host pool) from the cost model `memo plan`
// uses, compare it with what the machine has (CUDA: the device's total memory
// and host RAM; CPU: host RAM, the tightest of MemAvailable, the cgroup limit
// and `ulimit -v`), and refuse with an InputError (exit 2) that says what is
// needed, what there is, and what would fit: another policy, a shorter
// seq_len, a smaller batch, fewer layers. Every size from a flag or a file is
// first computed in checked int64, so nothing later can overflow.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "model/config.h"
#include "train/options.h"

namespace memo::train {

// What the run will do.
struct FitRequest {
  model::ModelConfig config;
  int64_t batch = 1;
  int64_t seq_len = 1;
  std::string policy = "keep";  // keep, recompute, offload, memo; "eval": forward passes only
  std::optional<double> alpha;  // memo: an explicit offloaded fraction (else the least host memory memo takes)
  double host_pool_budget = 0;  // pinned host bytes offload/memo may use; 0: memory::host_budget()'s default
  int64_t loss_chunk = 0;       // tokens per cross-entropy chunk; 0: automatic
  c10::Device device = c10::Device(c10::DeviceType::CPU);
  c10::ScalarType compute_dtype = c10::ScalarType::Float;
  bool optimizer = true;        // AdamW moments (train; bench and eval have none)
  std::string command = "train";  // for messages: "train", "bench", "eval"
  int64_t chunk_tokens = 0;     // tokens per layer chunk as run (train/chunking.h); 0: whole layers
  bool kv_on_host = false;      // chunked layers: K, V and dK, dV in host blocks (plan/kv_on_host_plan.h)
  int64_t sp = 1;               // ranks of the sequence (Ulysses): memo's x-only units need 1 (local attention)
  // Many ranks: the ZeRO stage and the ranks it shards over (the world);
  // stage >= 1 on more than one rank counts this rank's model state as
  // memo train holds it (plan::model_state_bytes, at its peak in a step).
  int zero = 0;
  int64_t zero_world = 1;
};

// What the machine has, in bytes.
struct MemoryAvailable {
  double device = 0;        // CUDA: total device memory; CPU: host RAM available
  std::string device_what;  // "the device memory of cuda:0 (total)", "host RAM: ... (MemAvailable)"
  double host = 0;          // CUDA: host RAM available (initialisation, the pinned pool)
  std::string host_what;
  double pool_budget = 0;   // the pinned pool's budget
  std::string pool_what;    // "--host-memory-gib 2", "half of MemAvailable"
};
MemoryAvailable measure_memory(const FitRequest& r);

// The estimate, by purpose (bytes).
struct FitEstimate {
  double weights = 0, grads = 0, optimizer = 0;  // master (+ compute copy), gradients, AdamW moments
  double activations = 0;   // what the policy keeps on the device between forward and backward
  double working = 0;       // the largest of: one layer's backward working set and the loss chunk,
                            // the optimizer's and clipping's temporaries, initialisation; plus the batch
  double pool = 0;          // the pinned host pool (offload, memo; with --kv-on-host its K, V blocks too)
  double kv_host = 0;       // --kv-on-host: the K, V and dK, dV host blocks, within `pool`
  double fixed_on_device = 0;  // memo's device tier (CUDA): x, o, lse the budget cannot hold, as many as the
                               // device has room for, in `activations`
  double attention_recomputed = 0;  // memo's x-only units (CUDA, sp 1): o, lse of what the tier cannot take,
                                    // held nowhere (recomputed in backward), out of `pool`
  double reserve = 0;       // CUDA context and library workspaces
  double device_need = 0;   // must fit in MemoryAvailable::device (CPU: everything, the pool included)
  double host_need = 0;     // CUDA: must fit in MemoryAvailable::host
  bool fits = false;
};

// Pure: the estimate of `r` against `have` (no measuring; tests give their own
// figures). Throws InputError when a size leaves int64.
FitEstimate estimate_fit(const FitRequest& r, const MemoryAvailable& have);

// The message for a request that does not fit: what is needed, what there is,
// and what would fit. Empty when it fits.
std::string fit_problem(const FitRequest& r, const MemoryAvailable& have);

// Measures the machine and throws InputError(fit_problem(...)) when the run
// does not fit. Call before the model is built.
void check_fit(const FitRequest& r);

// `memo bench`: whether each row (a policy at a resolved chunk size; 0:
// whole layers) fits (one model at a time, no optimizer, the gradients copied
// for the comparison). A row that does not fit becomes that row's result
// ("host-memory" when its pinned pool or the host is short, "oom" when the
// device is), not a failure of the bench; throws InputError only when none
// fits, before anything is allocated.
struct BenchRowSpec {
  std::string policy;
  int64_t chunk_tokens = 0;
};
struct PolicyFit {
  std::string policy;
  int64_t chunk_tokens = 0;
  std::string status;   // "ok", "host-memory" or "oom"
  std::string problem;  // fit_problem's message; empty when it fits
  double pool_bytes = 0, pool_budget = 0;
};
std::vector<PolicyFit> check_bench_fit(const TrainOptions& options, const std::vector<BenchRowSpec>& rows,
                                       const model::ModelConfig& config, c10::Device device,
                                       c10::ScalarType compute_dtype);

// The request of a `memo train` run (TrainOptions already validated, the
// model resolved): its policy, alpha, host pool budget, loss chunk.
FitRequest fit_request(const TrainOptions& options, const model::ModelConfig& config, c10::Device device,
                       c10::ScalarType compute_dtype);

}  // namespace memo::train
