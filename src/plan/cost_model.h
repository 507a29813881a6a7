// The cost model and capacity planner behind `memo plan` (docs/design.md
// section 6): from a model shape, sequence length, micro-batch, hardware figures and
// parallel degrees, the per-GPU bytes of weights, gradients, optimizer state,
// skeletal and transient activations, host bytes, memo's alpha (via
// choose_split), the predicted step time and MFU of each activation policy,
// and the longest sequence each policy fits. Pure C++ (no torch).
//
// Parallel degrees and what each one divides (per GPU):
//   tp  tensor parallel: weights, gradients, and the head/ffn-split
//       activations (qkv, o, lse, gu, a; GPT: q, k, v, o, fc1, gelu).
//   sp  sequence parallel: 1, tp (Megatron sequence parallelism over the
//       tensor-parallel group) or any degree with tp = 1 (Ulysses). It splits
//       the hidden-width activations (x, n1, x2, n2 and the rstd rows) by
//       tokens; with tp = 1 it also splits the others (heads during attention).
//   cp  context parallel: every activation by tokens.
//   dp  data parallel: optimizer state (sharded over dp x cp; with --zero
//       >= 1 over the zero group, see below);
//       each replica runs its own micro-batch of `batch` sequences.
// A replica spans max(tp, sp) x cp GPUs; compute divides by that.
//
// Communication per rank per step (CommPlan): Ulysses' all-to-alls over the sp
// group (tp = 1, sp > 1; docs/dist.md's proposal: what each policy sends) and
// ZeRO's collectives over the dp x sp x cp ranks that hold the same weights
// (stage 3: bf16 weights gathered in forward and again in backward; >= 2:
// gradients reduce-scattered; 0/1: all-reduced; 1/2: the updated bf16
// weights gathered after the optimizer step). The byte counts are dist's own
// (dist::ulysses_layer_bytes, dist::zero_collective_bytes; a test compares
// them). Time: bytes over the group's link (NVLink when the group fits in one
// host, else InfiniBand) plus a latency per call. The all-to-alls sit on the
// critical path between a layer's stages (exposed); ZeRO's overlap compute,
// only what exceeds the step's compute is exposed. Memory follows the stage
// too, as memo train holds it (model_state_bytes: >= 1 shards Adam and the
// fp32 master over the zero group, >= 2 the gradients, 3 the layers' bf16
// weights; the embedding and head stay whole).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "core/checked.h"
#include "plan/hardware.h"

namespace memo::plan {

enum class ModelArch { Llama, Gpt };

// The shape of a model, as the planner needs it (model::to_plan_shape
// converts a model::ModelConfig into this; plan/ cannot include model/).
struct ModelShape {
  std::string name = "custom";
  ModelArch arch = ModelArch::Llama;
  int64_t vocab = 0;
  int64_t hidden = 0;    // h
  int64_t layers = 0;    // n
  int64_t heads = 0;     // nh
  int64_t kv_heads = 0;  // nkv
  int64_t head_dim = 0;  // d
  int64_t ffn = 0;       // f (GPT: MLP inner size, 4h)
  bool tied_embeddings = false;

  // Inline, so model::ModelConfig can use them without linking the planner.
  // Checked: a shape from a config.json whose count leaves int64 (hidden
  // 2^40) is an InputError naming the model, never a wrapped count.
  // Llama: QKV, O, gate/up, down. GPT: QKV, O (4 h^2 with nh d = h), fc1, fc2.
  int64_t layer_matmul_params() const {
    const std::string what = "the parameter count of model " + name;
    const int64_t qkv = checked_product({hidden, checked_add(heads, checked_mul(2, kv_heads, what), what), head_dim}, what);
    const int64_t o = checked_product({heads, head_dim, hidden}, what);
    const int64_t mlp = checked_product({arch == ModelArch::Gpt ? 2 : 3, hidden, ffn}, what);
    return checked_add(checked_add(qkv, o, what), mlp, what);
  }
  // All layers + lm head (docs/design.md section 7).
  int64_t matmul_params() const {
    const std::string what = "the parameter count of model " + name;
    return checked_add(checked_mul(layers, layer_matmul_params(), what), checked_mul(vocab, hidden, what), what);
  }
  // + norms + embedding (once when tied).
  int64_t total_params() const {
    const std::string what = "the parameter count of model " + name;
    const int64_t norms = checked_add(checked_product({layers, 2, hidden}, what), hidden, what);
    const int64_t embeddings = checked_product({vocab, hidden, tied_embeddings ? 1 : 2}, what);
    return checked_add(checked_add(checked_mul(layers, layer_matmul_params(), what), norms, what), embeddings, what);
  }
};

struct ParallelDegrees {
  int64_t tp = 1, sp = 1, cp = 1, dp = 1;
  int64_t replica_gpus() const { return (tp > sp ? tp : sp) * cp; }
};

struct PlanInputs {
  int zero = -1;                   // ZeRO stage 0..3; -1: 3 when dp x sp > 1, else 0 (zero_stage)
  ModelShape model;
  int64_t seq_len = 0;
  int64_t batch = 1;               // sequences per micro-batch per replica
  std::string policy = "best";     // keep | recompute | offload | memo | best
  Hardware hardware;
  ParallelDegrees parallel;
  int compute_bytes = 2;           // bf16 on the GPU (4: float32, as on CPU)
  int master_bytes = 4;            // fp32 master weights, gradients, Adam moments
  double loss_chunk_bytes = 4.0 * (1 << 30);  // the runtime's default chunk budget on CUDA (train/loss.h)
};

// One skeletal tensor of one layer, per GPU.
struct TensorBytes {
  std::string name;
  double bytes = 0;
  bool always_offloaded = false;  // x, o, lse: swapped whole, never recomputed
};

// Communication of one rank in one step, by kind (bytes it sends; a ring
// all-gather or reduce-scatter of N bytes over p ranks sends (p-1)/p N, an
// all-reduce 2 (p-1)/p N, an all-to-all (p-1)/p of the local buffer).
struct CommPlan {
  double all_to_all_bytes = 0;
  double all_gather_bytes = 0;
  double reduce_scatter_bytes = 0;
  double all_reduce_bytes = 0;
  int64_t all_to_all_calls = 0, zero_calls = 0;
  double all_to_all_s = 0;  // exposed: on the critical path
  double zero_s = 0;        // overlaps compute
  double exposed_s = 0;     // all_to_all_s + what of zero_s the compute does not hide
  double bytes() const { return all_to_all_bytes + all_gather_bytes + reduce_scatter_bytes + all_reduce_bytes; }
};

// One activation policy's prediction.
struct PolicyPlan {
  std::string policy;
  bool fits = false;
  std::string why_not;         // when it does not fit
  // Device bytes per GPU.
  double activation_bytes = 0;  // held between forward and backward (buffers included)
  double buffer_bytes = 0;      // the two rounding buffers (offload, memo)
  double resident_bytes = 0;    // memo's device-resident share
  double device_bytes = 0;      // static + activations + transient + reserve
  double host_bytes = 0;        // pinned host bytes per GPU
  // memo/offload split.
  std::optional<double> alpha;
  double resident = 0;
  std::vector<double> alpha_per_layer;  // 0 for layers kept in the buffers
  std::string limited_by;
  // Time per step, per GPU.
  double matmul_s = 0, attention_s = 0, recompute_s = 0, exposed_copy_s = 0, step_s = 0;
  CommPlan comm;               // step_s includes comm.exposed_s
  double mfu = 0;
  double tokens_per_s = 0;     // all replicas
  int64_t max_seq = 0;         // longest sequence that fits (0: none)
};

struct Plan {
  PlanInputs in;
  // Static bytes per GPU.
  double weight_bytes = 0;     // compute copy + master
  double grad_bytes = 0;
  double optimizer_bytes = 0;
  // One layer's skeletal set per GPU, in the runtime's order.
  std::vector<TensorBytes> skeletal;
  double per_layer_skeletal_bytes = 0;
  double fixed_bytes = 0;      // x + o + lse
  double rest_bytes = 0;       // the others
  double transient_bytes = 0;  // one layer's backward working set + loss chunk
  // Time figures per GPU.
  double layer_forward_s = 0, layer_backward_s = 0, layer_recompute_s = 0;
  double model_flops = 0;      // per step, one replica (docs/design.md section 7)
  std::vector<PolicyPlan> policies;  // keep, recompute, offload, memo
  int chosen = -1;             // index into policies; -1: nothing fits
  std::string verdict;

  const PolicyPlan* chosen_plan() const { return chosen >= 0 ? &policies[static_cast<size_t>(chosen)] : nullptr; }
  const PolicyPlan& policy(const std::string& name) const;
};

// The policies the planner models, in display order.
std::vector<std::string> plan_policy_names();

// Throws InputError naming the field for a bad shape, hardware, degree or policy.
void validate_plan_inputs(const PlanInputs& in);

// One layer's skeletal tensors per GPU (docs/design.md section 3; for Llama, the
// exact list and dtypes of model::skeletal_specs).
std::vector<TensorBytes> skeletal_bytes(const PlanInputs& in);

// The ZeRO stage in.zero names (its default resolved).
int zero_stage(const PlanInputs& in);
// Ranks of one Ulysses group (tp = 1: sp; else 1, no all-to-all) and of the
// ZeRO group (the ranks that hold the same weights: dp x cp x max(tp, sp) / tp).
int64_t ulysses_group(const PlanInputs& in);
int64_t zero_group(const PlanInputs& in);

// dist's counters, recomputed here (plan/ cannot include dist/): one
// all-to-all of a [B, S/sp, H, d] tensor (replicated heads, sp % H == 0,
// count as the sp copies they become), and one ZeRO all-gather or
// reduce-scatter of a flat buffer of numel elements padded to world shards.
int64_t ulysses_all_to_all_bytes(int64_t batch, int64_t seq_len, int64_t heads, int64_t head_dim, int64_t sp,
                                 int64_t element_size);
int64_t zero_collective_bytes(int64_t numel, int64_t world, int64_t element_size);
// One layer's minimal mirror (q, k, v, o forward; d_o, dq, dk, dv backward)
// per rank of the sp group, for in's batch and seq_len / cp tokens.
struct UlyssesLayer {
  int64_t q = 0, kv = 0;  // one all-to-all of q (or o, d_o, dq) and of k (or v, dk, dv)
  int64_t lse = 0;        // one all-to-all of attention's log-sum-exp (statistics dtype)
  int64_t forward = 0, backward = 0;
};
UlyssesLayer ulysses_layer(const PlanInputs& in);
// What memo's runtime sends per layer (docs/dist.md: every skeletal tensor
// lives in token layout): forward q, k, v packed to head layout, o and lse
// back (3 all-to-alls); backward d_o, the kept q, k, v (packed), o and lse to
// head layout and dq, dk, dv (packed) back (5). recompute redoes the forward's
// 3 in backward; keep, offload and memo recompute nothing that moves.
struct UlyssesPolicyLayer {
  int64_t forward = 0, backward = 0;  // bytes
  int64_t calls = 0;
};
UlyssesPolicyLayer ulysses_policy_layer(const PlanInputs& in, const std::string& policy);
// Stage 0's all-reduces per rank per step over `world` ranks: every gradient
// tensor (one call each, the ring's 2 (n-1)/n of its bytes, as dist counts
// them) and the step's loss sum and token count (2 float64).
struct AllReducePlan {
  int64_t bytes = 0;
  int64_t calls = 0;
};
AllReducePlan stage0_all_reduce(const ModelShape& m, int64_t world, int64_t element_size);
// The flat buffers ZeRO shards: one per layer (its matmuls and norms), then
// the rest (embeddings, final norm, lm head).
int64_t zero_layer_numel(const ModelShape& m);
int64_t zero_rest_numel(const ModelShape& m);

// The model state one rank of `memo train` holds (docs/dist.md, "ZeRO"), in
// bytes, for ZeRO `stage` over `world` ranks (world 1 or stage 0: the whole
// model). Each unit (a layer, then the rest) is sharded as dist::flat_layout
// pads it: ceil(numel / world) elements per rank. The compute copy is the
// master itself when their sizes agree (float32 or float64 runs: then
// `master` counts only the shards a sharded optimizer holds besides).
//   weights  compute-dtype weights forward reads: whole at stages 0-2; stage
//            3: each layer's shard plus the rest (embedding, final norm,
//            head) whole, which every rank keeps
//   master   master weights besides the compute copy: whole at stage 0;
//            stages 1-3: the shards
//   grads    stages 0-1: whole (stage 1 also the shards they are reduced
//            into); stages 2-3: the shards (a step's whole gradients are
//            step_bytes)
//   moments  AdamW's two: whole at stage 0; stages 1-3: the shards
// Between steps this is all; during a step, step_bytes are held on top at
// most: stage 3's two gathered layers (padded), stages 2-3's whole
// gradients of the rest and of one layer, and the reduce-scatters' staging
// copies (two units in flight: padded buffer and incoming shard each).
struct ModelStateBytes {
  int64_t weights = 0, master = 0, grads = 0, moments = 0;
  int64_t total() const { return weights + master + grads + moments; }
};
ModelStateBytes model_state_bytes(const ModelShape& m, int stage, int64_t world, int64_t compute_bytes,
                                  int64_t master_bytes);
ModelStateBytes model_state_step_bytes(const ModelShape& m, int stage, int64_t world, int64_t compute_bytes,
                                       int64_t master_bytes);

// Per GPU at its peak within a step, as the plan's static bytes: weights
// (compute copy, master and stage 3's gathered layers), gradients and Adam's
// moments, for in's zero stage and group, divided by tp.
struct StaticBytes {
  double weights = 0, grads = 0, optimizer = 0;
};
StaticBytes static_bytes_per_gpu(const PlanInputs& in);

// One policy's communication per rank per step; `recomputed` is memo's
// fraction of each swapped layer's tokens recomputed in backward (1 - alpha -
// resident), `compute_s` the step's compute that ZeRO's collectives overlap.
CommPlan comm_plan(const PlanInputs& in, const std::string& policy, double recomputed, double compute_s);

// The whole plan (validates first).
Plan make_plan(const PlanInputs& in);

// One layer's backward working set plus the loss chunk and the final norm's
// output and gradient (Plan::transient_bytes), for `skeletal` =
// skeletal_bytes(in).
double transient_bytes(const PlanInputs& in, const std::vector<TensorBytes>& skeletal);

// The attention FLOPs of one step of one replica, forward and backward: 3.5
// x each layer's causal forward (QK^T and PV, 4 B S^2 nh d / 2; its backward
// 2.5 x that).
double step_attention_flops(const PlanInputs& in);

// The largest multiple of `unit` for which fits(seq_len) holds, 0 when even
// `unit` does not (fits must be monotone: true up to some length, then
// false); searched up to 2^36 tokens.
int64_t longest_fitting(int64_t unit, const std::function<bool(int64_t)>& fits);

}  // namespace memo::plan
