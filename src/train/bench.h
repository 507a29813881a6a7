// `memo bench`: the same model, shape and batch under several activation
// policies in one process, side by side: step time, ratio to keep, MFU, peak
// device memory, host bytes, alpha, and how far each policy's gradients are
// from keep's on the same batch. On many ranks (a dist::Context) each row is
// memo train's step on the mesh, with the bytes each rank moved by collective
// kind.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "memory/host_pool.h"
#include "train/memory_split.h"
#include "train/options.h"
#include "train/trainer.h"

namespace memo::dist {
class Context;
}

namespace memo::train {

struct BenchOptions {
  TrainOptions run;  // model, layers, seq_len, batch, device, dtype, seed, alpha, host memory...
  int64_t steps = 3;  // timed forward+backward steps per policy (after one untimed)
  std::vector<std::string> policies = {"keep", "recompute", "offload", "memo"};
  std::string trace;  // prefix: writes PREFIX.POLICY.json for each policy's last step
  bool planned_memory = false;  // timed steps served from a bi-level planned arena
  // What offload's and memo's host pools may use; unset: memory::host_budget(run.host_memory_gib).
  std::optional<memory::HostBudget> host_budget;
};

struct BenchRow {
  std::string policy;
  std::string chunk_setting = "0";  // the --chunk-tokens value of this row ("0", "C", "auto")
  int64_t chunk_tokens = 0;         // tokens per layer chunk as run; 0: whole layers
  // ok; host-memory (the host pool does not fit the budget, or could not be
  // mapped or pinned); oom (out of device memory); error (any other failure
  // of this row). A row that is not ok has a `message`, and the figures known
  // when it stopped; the other rows still run.
  std::string status = "ok";
  std::string message;
  double step_s = 0;          // median forward+backward time
  std::optional<double> ratio_to_keep;
  std::optional<double> mfu;
  int64_t peak_allocated_bytes = 0;
  int64_t peak_reserved_bytes = 0;
  int64_t host_bytes = 0;           // the policy's host pool
  int64_t host_pinned_bytes = 0;    // of which pinned (CUDA; whole pages)
  double pin_seconds = 0;           // time pinning took
  std::optional<double> host_needed_bytes;  // host-memory: what the pool needed ...
  std::optional<double> host_budget_bytes;  // ... and what it was allowed
  std::optional<double> alpha;
  std::optional<runtime::SplitReport> split;  // offload's and memo's split by units
  std::optional<double> loss;               // mean loss of the untimed first step
  std::optional<double> max_grad_rel_diff;  // against keep, same weights and batch
  std::optional<int64_t> arena_bytes;       // with planned memory
  std::optional<int64_t> plan_fallbacks;    // requests the plan did not expect, over the timed steps
  int64_t device_mallocs_per_step = 0;      // calls that reached the device malloc in the last timed step
  MemorySplit peak_split;                   // peak_allocated_bytes by purpose (train/memory_split.h)
  // Many ranks: the bytes this rank (rank 0) moved in the last timed step, by collective kind.
  std::optional<CommRecord> comm;

  // Reserved but unallocated at the peak, as a share of reserved.
  double fragmentation() const {
    return peak_reserved_bytes > 0
               ? static_cast<double>(peak_reserved_bytes - peak_allocated_bytes) / static_cast<double>(peak_reserved_bytes)
               : 0.0;
  }
};

// Runs every policy; `progress` gets one line per stage.
// `context`: many ranks (the mesh of --sp, ZeRO stage --zero). Every rank
// runs every row together: a row is a Trainer (train/trainer.h) of one
// untimed and `steps` timed training steps (forward, backward, gradient
// reduction, optimizer), because the collectives of a step include ZeRO's
// around the optimizer; a row has its comm, no gradient comparison, and a
// row that fails while running stops the bench on every rank (the ranks
// cannot skip a row half-way through its collectives). Null: one process.
std::vector<BenchRow> run_bench(const BenchOptions& options,
                                const std::function<void(const std::string&)>& progress,
                                dist::Context* context = nullptr);

}  // namespace memo::train
