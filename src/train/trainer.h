// The training loop: resolves options into a model, data source, policy and
// optimizer, then runs steps (micro-batches, clipping, schedule, AdamW) and
// reports each one.
#pragma once

#include <nlohmann/json.hpp>

#include <array>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "dist/comm.h"
#include "memory/host_pool.h"
#include "model/llama.h"
#include "runtime/policy.h"
#include "runtime/trace.h"
#include "train/data.h"
#include "train/memory_planning.h"
#include "train/memory_split.h"
#include "plan/cost_model.h"
#include "train/optimizer.h"
#include "train/option_table.h"
#include "train/options.h"
#include "train/step.h"

namespace memo::dist {
class Context;
}
namespace memo::runtime {
class StageExchange;
class ShardedLayerWeights;
}

namespace memo::train {

class ZeroOptimizer;

// Bytes this rank moved in a step, by collective kind (dist/comm.h); many ranks only.
struct CommRecord {
  std::array<dist::CollectiveBytes, dist::kCollectiveKinds> by_kind{};
  dist::CollectiveBytes total() const;
};

struct StepRecord {
  int64_t step = 0;          // 1-based
  double loss = 0.0;         // mean over the step's supervised tokens
  double lr = 0.0;
  double grad_norm = 0.0;    // before clipping
  double seconds = 0.0;
  double tokens_per_s = 0.0;
  std::optional<double> mfu;  // CUDA only
  int64_t peak_device_bytes = 0;
  std::optional<CommRecord> comm;  // many ranks: this rank's bytes moved in the step
};

struct TrainSummary {
  int64_t steps = 0;
  int64_t tokens = 0;
  double seconds = 0.0;
  double first_loss = 0.0;
  double final_loss = 0.0;  // mean over the last tenth of the steps
  double tokens_per_s = 0.0;  // excluding the first (warm-up) step when there are more
  std::optional<double> mfu;
  int64_t peak_device_bytes = 0;
  int64_t peak_activation_bytes = 0;  // held by the policy between forward and backward
  int64_t host_bytes = 0;             // pinned host memory the policy holds
  int64_t kv_host_bytes = 0;          // --kv-on-host: the most the K, V host blocks held (not in host_bytes)
  MemorySplit peak_split;             // peak_device_bytes by purpose (train/memory_split.h)
  // The model state this rank holds after the last step (train/model_state.h;
  // sharded by --zero on many ranks), counted from its tensors.
  plan::ModelStateBytes model_state;
  std::optional<double> no_context_loss;
  MemoryPlanReport memory_plan;  // with --planned-memory
  std::optional<CommRecord> comm;  // many ranks: rank 0's bytes moved per step (the last step's)
  int world = 1, dp = 1, sp = 1;
};

// Device, compute dtype and MFU peak resolved from the options.
struct Execution {
  at::Device device = at::kCPU;
  at::ScalarType compute_dtype = at::kFloat;
  double peak_flops = 0.0;  // 0: no MFU (CPU)
};
Execution resolve_execution(const TrainOptions& options);
const char* dtype_name_of(at::ScalarType t);

class Trainer {
 public:
  // `context`: many ranks (dp x sp, ZeRO stage --zero): this rank takes its
  // sequences and token shard of each micro-batch, attention runs through
  // Ulysses all-to-alls, gradients are all-reduced (stage 0) or
  // reduce-scattered into the sharded optimizer (1-3) and the loss summed
  // over the world. Only rank 0 writes checkpoints and the trace. Null: one
  // process.
  explicit Trainer(const TrainOptions& options, dist::Context* context = nullptr);
  ~Trainer();

  // The resolved configuration (model shape, device, dtypes, data...).
  nlohmann::json resolved_config() const;
  // The same as aligned "key: value" lines for the terminal.
  std::vector<std::pair<std::string, std::string>> describe() const;
  // The policy's own choices (split, buffers, host pool), if any.
  std::vector<std::pair<std::string, std::string>> describe_policy() const;
  int64_t log_every() const { return log_every_; }
  // Steps already taken when run() starts: 0, or the resumed checkpoint's step.
  int64_t start_step() const { return start_step_; }
  // The policy's offloaded fraction (memo), after the ranks agreed on it.
  std::optional<double> alpha() const { return policy_->alpha(); }
  std::optional<runtime::SplitReport> split_report() const { return policy_->split_report(); }
  // Tokens per layer chunk as run (--chunk-tokens resolved; 0: whole layers).
  int64_t chunk_tokens() const { return chunk_tokens_; }

  TrainSummary run(const std::function<void(const StepRecord&)>& on_step);

 private:
  // The constructor's steps, in order (trainer.cpp).
  void resolve_model_and_device();
  void make_policy_and_check_fit();
  void open_data();
  void install_memory_planning();
  void build_model();
  void build_optimizer_and_prepare_policy();
  void load_starting_weights();

  // run()'s steps.
  struct RunTotals;
  StepRecord train_step(int64_t step, TrainSummary& summary);
  LossSum accumulate_gradients(bool tracing, TrainSummary& summary);
  StepRecord update_weights(int64_t step, LossSum& total);
  void write_trace();
  void add_step(int64_t step, const StepRecord& r, RunTotals& totals) const;
  void checkpoint_if_due(int64_t step, const StepRecord& r);
  TrainSummary summarize(RunTotals& totals) const;
  MicroBatch shard_of(MicroBatch global, int64_t& global_count) const;
  void start_gradient_reduction(int64_t layer, model::LayerWeights& layer_grads);
  void finish_gradient_reduction();
  bool is_root() const;
  int64_t tokens_per_step() const;
  double flops_per_step() const;

  ResolvedRun resolved_run() const;  // for resolved_config() and describe() (train/option_table.h)

  TrainOptions options_;
  model::ModelConfig config_;
  at::Device device_ = at::kCPU;
  at::ScalarType compute_dtype_ = at::kFloat;
  double peak_flops_ = 0.0;
  int64_t log_every_ = 1;
  int64_t loss_chunk_ = 1;  // tokens per cross-entropy chunk (--loss-chunk, or from the device's budget)
  int64_t chunk_tokens_ = 0;  // tokens per layer chunk (--chunk-tokens resolved; 0: whole layers)
  int64_t allocated_before_steps_ = 0;  // device bytes allocated when the constructor ends
  MeasuredParts measured_parts_;        // the chunked program's sp parts (the peak split's)
  std::unique_ptr<model::LlamaModel> model_;
  std::unique_ptr<runtime::ActivationPolicy> policy_;
  std::unique_ptr<DataSource> data_;
  std::unique_ptr<AdamW> optimizer_;
  std::vector<at::Tensor*> grads_;  // the model's gradient tensors, for clipping
  std::unique_ptr<runtime::TraceRecorder> trace_;
  int64_t start_step_ = 0;     // steps already taken (a resumed run)
  std::string resumed_from_;   // the checkpoint resumed from
  std::string weights_from_;   // a Hugging Face directory the weights came from
  std::unique_ptr<MemoryPlanning> planning_;
  memory::HostBudget host_budget_;  // what offload/memo's host pool may use, and why
  // Many ranks (null context: one process, local_* = the options').
  dist::Context* dist_ = nullptr;
  int64_t local_batch_ = 0, local_seq_ = 0;  // this rank's sequences and tokens per sequence
  int64_t first_token_ = 0;                  // global position of this rank's first token
  std::unique_ptr<runtime::StageExchange> exchange_;
  std::vector<dist::Work> reductions_;       // gradient all-reduces in flight (ZeRO 0)
  // ZeRO 1-3 (many ranks, --zero > 0): the sharded optimizer in place of
  // optimizer_, and stage 3's layer weights (docs/dist.md, "ZeRO").
  int zero_stage_ = 0;
  std::unique_ptr<ZeroOptimizer> zero_;
  std::unique_ptr<runtime::ShardedLayerWeights> sharded_layers_;
};

// Many ranks add "comm" (a step's bytes by collective kind) and, to the
// summary, "comm_per_step" and "mesh".
nlohmann::json to_json(const StepRecord& r);
nlohmann::json to_json(const TrainSummary& s);
// {"all_to_all": {"calls", "bytes_sent", "bytes_received"}, ..., "total": {...}}
nlohmann::json to_json(const CommRecord& c);
nlohmann::json to_json_fields(const StepRecord& r);   // without them
nlohmann::json to_json_fields(const TrainSummary& s);

}  // namespace memo::train
