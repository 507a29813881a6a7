// The cost model and capacity planner (see cost_model.h for the parallel
// conventions). Formulas, per GPU of one replica (g = max(tp, sp) x cp GPUs):
//   static     weights P/tp x (compute + master bytes), gradients P/tp x 4,
//              Adam moments 2 x 4 x P / (tp x dp x cp)  (ZeRO-1)
//   keep       n x skeletal
//   recompute  n x x + one layer's skeletal (rebuilt in its backward)
//   offload    2 rounding buffers; host n x skeletal
//   memo       2 rounding buffers + resident share; host (n - 2) x (x + o + lse
//              + alpha x rest), alpha from choose_split
//   transient  the larger of one layer's backward working set (Llama: per
//              token as docs/memory-per-token.md states it, dy and dx, the
//              largest weight-gradient product) and the loss phase (its
//              chunk, the final norm output and its gradient)
//   reserve    Hardware::reserve_bytes (context, workspaces, allocator slack)
// Time: matmuls at peak x matmul_efficiency, attention at peak x
// attention_efficiency; a layer's backward is 2x its matmuls and 2.5x its
// attention forward; copies overlap as choose_split models; communication as
// comm_plan counts it (see cost_model.h), its exposed part added.
#include "plan/cost_model.h"

#include <algorithm>
#include <cmath>
#include <functional>

#include "core/error.h"
#include "core/units.h"
#include "plan/swap_split.h"

namespace memo::plan {

std::vector<std::string> plan_policy_names() { return {"keep", "recompute", "offload", "memo"}; }

const PolicyPlan& Plan::policy(const std::string& name) const {
  for (const auto& p : policies)
    if (p.policy == name) return p;
  throw InputError(cat("plan: no policy \"", name, "\""));
}

void validate_plan_inputs(const PlanInputs& in) {
  const auto& m = in.model;
  auto positive = [&](int64_t v, const char* field) {
    require_input(v > 0, "model ", m.name, ": ", field, " must be a positive integer, got ", v);
  };
  positive(m.vocab, "vocab_size");
  positive(m.hidden, "hidden_size");
  positive(m.layers, "num_hidden_layers (--layers)");
  positive(m.heads, "num_attention_heads");
  positive(m.kv_heads, "num_key_value_heads");
  positive(m.head_dim, "head_dim");
  positive(m.ffn, "intermediate_size");
  require_input(m.heads % m.kv_heads == 0, "model ", m.name, ": num_key_value_heads (", m.kv_heads,
                ") must divide num_attention_heads (", m.heads, ")");
  (void)m.total_params();  // InputError naming the model when the count leaves int64
  (void)m.matmul_params();
  require_input(in.seq_len > 0, "--seq-len must be a positive integer, got ", in.seq_len);
  require_input(in.batch > 0, "--batch must be a positive integer, got ", in.batch);
  const auto& p = in.parallel;
  auto degree = [](int64_t v, const char* flag) {
    require_input(v > 0, flag, " must be a positive integer, got ", v);
  };
  degree(p.tp, "--tp");
  degree(p.sp, "--sp");
  degree(p.cp, "--cp");
  degree(p.dp, "--dp");
  require_input(m.heads % p.tp == 0, "--tp ", p.tp, " must divide the attention heads (", m.heads, ")");
  require_input(m.kv_heads % p.tp == 0, "--tp ", p.tp, " must divide the kv heads (", m.kv_heads, ")");
  require_input(p.sp == 1 || p.tp == 1 || p.sp == p.tp, "--sp ", p.sp,
                " must be 1, equal --tp (Megatron sequence parallelism) or come with --tp 1 "
                "(Ulysses); got --tp ",
                p.tp);
  if (p.tp == 1 && p.sp > 1)
    require_input(m.heads % p.sp == 0 && (m.kv_heads % p.sp == 0 || p.sp % m.kv_heads == 0), "--sp ", p.sp,
                  " (Ulysses) must divide the attention heads (", m.heads, ") and divide or be a multiple of the kv heads (",
                  m.kv_heads, ")");
  require_input(in.seq_len % p.sp == 0, "--sp ", p.sp, " must divide --seq-len ", in.seq_len);
  require_input(in.seq_len % p.cp == 0, "--cp ", p.cp, " must divide --seq-len ", in.seq_len);
  require_input(in.seq_len % (p.sp * p.cp) == 0, "--sp x --cp (", p.sp * p.cp, ") must divide --seq-len ",
                in.seq_len);
  bool known = in.policy == "best";
  for (const auto& n : plan_policy_names()) known = known || in.policy == n;
  require_input(known, "unknown --policy \"", in.policy, "\": keep, recompute, offload, memo or best");
  require_input(in.zero >= -1 && in.zero <= 3, "--zero must be 0, 1, 2 or 3, got ", in.zero);
  require_input(in.compute_bytes == 2 || in.compute_bytes == 4 || in.compute_bytes == 8,
                "compute dtype must be 2, 4 or 8 bytes, got ", in.compute_bytes);
  in.hardware.validate();
}

std::vector<TensorBytes> skeletal_bytes(const PlanInputs& in) {
  const auto& m = in.model;
  const auto& p = in.parallel;
  const double B = static_cast<double>(in.batch), S = static_cast<double>(in.seq_len);
  const double cb = in.compute_bytes;
  const double st = std::max(4, in.compute_bytes);  // statistics: fp32 (fp64 in float64 runs)
  const double g = static_cast<double>(std::max(p.tp, p.sp));
  // Hidden-width tensors split by tokens over sp x cp; the others over heads
  // (or ffn columns) by max(tp, sp) and tokens by cp.
  auto hid = [&](const char* n, double width, double bytes, bool fixed = false) {
    return TensorBytes{n, B * S * width * bytes / static_cast<double>(p.sp * p.cp), fixed};
  };
  auto split = [&](const char* n, double width, double bytes, bool fixed = false) {
    return TensorBytes{n, B * S * width * bytes / (g * static_cast<double>(p.cp)), fixed};
  };
  const double h = static_cast<double>(m.hidden), nh = static_cast<double>(m.heads);
  const double nkv = static_cast<double>(m.kv_heads), d = static_cast<double>(m.head_dim);
  const double f = static_cast<double>(m.ffn);
  if (m.arch == ModelArch::Gpt) {
    // docs/design.md section 3: 16 h elements per token (8 h + fc1 4h + GeLU 4h) plus lse.
    return {hid("x", h, cb, true),       hid("ln1", h, cb),         split("q", nh * d, cb),
            split("k", nkv * d, cb),     split("v", nkv * d, cb),   split("o", nh * d, cb, true),
            split("lse", nh, st, true),  hid("x2", h, cb),          hid("ln2", h, cb),
            split("fc1", f, cb),         split("gelu", f, cb)};
  }
  // model::skeletal_specs order and dtypes.
  return {hid("x", h, cb, true),        hid("n1", h, cb),   hid("rstd1", 1, st),
          split("qkv", (nh + 2 * nkv) * d, cb), split("o", nh * d, cb, true), split("lse", nh, st, true),
          hid("x2", h, cb),             hid("n2", h, cb),   hid("rstd2", 1, st),
          split("gu", 2 * f, cb),       split("a", f, cb)};
}

double transient_bytes(const PlanInputs& in, const std::vector<TensorBytes>& skeletal) {
  const double x_bytes = skeletal.front().bytes;  // the layer input, hidden-width
  const auto& m = in.model;
  const double tp = static_cast<double>(in.parallel.tp);
  if (m.arch == ModelArch::Gpt) {  // the paper's models: no measured working set, the old bound
    double skel = 0;
    for (const auto& t : skeletal) skel += t.bytes;
    const double layer_params = static_cast<double>(m.layer_matmul_params());
    return (skel + 2.0 * x_bytes + layer_params / tp * in.compute_bytes) + (in.loss_chunk_bytes + 2.0 * x_bytes);
  }
  // Llama: one layer's backward working set per token as the layer runs it
  // (docs/memory-per-token.md: c max(2f + h, h + a + q, h + 2q, 2h + q)),
  // plus dy and dx, plus the largest weight-gradient product in the compute
  // dtype; the loss phase (its chunk, the final norm's output and gradient)
  // comes before the layers' backward, so the larger of the two.
  const double tokens = x_bytes / (static_cast<double>(m.hidden) * in.compute_bytes);
  const double h = static_cast<double>(m.hidden), f = static_cast<double>(m.ffn) / tp;
  const double q = static_cast<double>((m.heads + 2 * m.kv_heads) * m.head_dim) / tp;
  const double a = static_cast<double>(m.heads * m.head_dim) / tp;
  const double per_token = in.compute_bytes * std::max({2.0 * f + h, h + a + q, h + 2.0 * q, 2.0 * h + q});
  const double largest_matrix = std::max({2.0 * f * h, q * h, a * h});
  const double layer = tokens * per_token + 2.0 * x_bytes + largest_matrix * in.compute_bytes;
  return std::max(layer, in.loss_chunk_bytes + 2.0 * x_bytes);
}

int zero_stage(const PlanInputs& in) {
  if (in.zero >= 0) return in.zero;
  return in.parallel.dp * in.parallel.sp > 1 ? 3 : 0;
}

int64_t ulysses_group(const PlanInputs& in) { return in.parallel.tp == 1 ? in.parallel.sp : 1; }

int64_t zero_group(const PlanInputs& in) {
  const auto& p = in.parallel;
  return p.dp * p.cp * std::max(p.tp, p.sp) / p.tp;
}

int64_t ulysses_all_to_all_bytes(int64_t batch, int64_t seq_len, int64_t heads, int64_t head_dim, int64_t sp,
                                 int64_t element_size) {
  const int64_t virtual_heads = heads % sp == 0 ? heads : sp;
  const int64_t local = batch * (seq_len / sp) * virtual_heads * head_dim * element_size;  // the token-layout tensor
  return local - local / sp;  // all but the part that stays on this rank
}

int64_t zero_collective_bytes(int64_t numel, int64_t world, int64_t element_size) {
  const int64_t shard = (numel + world - 1) / world;  // the buffer padded to world shards
  return (world - 1) * shard * element_size;
}

UlyssesLayer ulysses_layer(const PlanInputs& in) {
  const auto& m = in.model;
  const int64_t sp = ulysses_group(in);
  UlyssesLayer u;
  if (sp <= 1) return u;
  const int64_t S = in.seq_len / in.parallel.cp;  // the sp group's sequence
  u.q = ulysses_all_to_all_bytes(in.batch, S, m.heads, m.head_dim, sp, in.compute_bytes);
  u.kv = ulysses_all_to_all_bytes(in.batch, S, m.kv_heads, m.head_dim, sp, in.compute_bytes);
  // lse [B, nh, S] in the statistics dtype: float32 for 16-bit compute, else the compute dtype.
  u.lse = ulysses_all_to_all_bytes(in.batch, S, m.heads, 1, sp, std::max<int64_t>(4, in.compute_bytes));
  u.forward = 2 * u.q + 2 * u.kv;   // q, k, v to heads; o back
  u.backward = 2 * u.q + 2 * u.kv;  // d_o to heads; dq, dk, dv back
  return u;
}

UlyssesPolicyLayer ulysses_policy_layer(const PlanInputs& in, const std::string& policy) {
  const UlyssesLayer u = ulysses_layer(in);
  UlyssesPolicyLayer p;
  if (u.q == 0) return p;
  const int64_t qkv = u.q + 2 * u.kv;
  const int64_t forward = qkv + u.q + u.lse;                  // q, k, v in; o, lse out
  const int64_t backward = u.q + qkv + u.q + u.lse + qkv;     // d_o, q k v, o, lse in; dq dk dv out
  p.forward = forward;
  p.backward = policy == "recompute" ? forward + backward : backward;
  p.calls = policy == "recompute" ? 3 + 3 + 5 : 3 + 5;
  return p;
}

AllReducePlan stage0_all_reduce(const ModelShape& m, int64_t world, int64_t element_size) {
  AllReducePlan a;
  if (world <= 1) return a;
  auto ring = [&](int64_t numel, int64_t bytes) {  // dist::Group::all_reduce's count
    a.bytes += 2 * (world - 1) * numel * bytes / world;
    ++a.calls;
  };
  const int64_t h = m.hidden, d = m.head_dim;
  for (int64_t i = 0; i < m.layers; ++i) {
    if (m.arch == ModelArch::Llama) {  // norm1, wqkv, wo, norm2, wgu, wdown
      for (int64_t numel : {h, (m.heads + 2 * m.kv_heads) * d * h, h * m.heads * d, h, 2 * m.ffn * h, h * m.ffn})
        ring(numel, element_size);
    } else {
      ring(zero_layer_numel(m), element_size);
    }
  }
  ring(m.vocab * h, element_size);                       // embed
  ring(h, element_size);                                 // final norm
  if (!m.tied_embeddings) ring(m.vocab * h, element_size);  // lm head
  ring(2, 8);                                            // the loss sum and token count
  return a;
}

int64_t zero_layer_numel(const ModelShape& m) { return m.layer_matmul_params() + 2 * m.hidden; }

int64_t zero_rest_numel(const ModelShape& m) { return m.total_params() - m.layers * zero_layer_numel(m); }

namespace {

int64_t shard_numel(int64_t numel, int64_t world) { return (numel + world - 1) / world; }

}  // namespace

ModelStateBytes model_state_bytes(const ModelShape& m, int stage, int64_t world, int64_t compute_bytes,
                                  int64_t master_bytes) {
  const int64_t P = m.total_params(), layer = zero_layer_numel(m), rest = zero_rest_numel(m);
  const bool shared = compute_bytes == master_bytes;  // the compute copy is the master
  ModelStateBytes b;
  if (world <= 1 || stage == 0) {
    b.weights = P * compute_bytes;
    b.master = shared ? 0 : P * master_bytes;
    b.grads = P * master_bytes;
    b.moments = 2 * P * master_bytes;
    return b;
  }
  const int64_t shards = m.layers * shard_numel(layer, world) + shard_numel(rest, world);  // every unit's
  b.weights = stage == 3 ? (m.layers * shard_numel(layer, world) + rest) * compute_bytes : P * compute_bytes;
  b.master = shards * master_bytes;
  b.grads = (stage == 1 ? P + shards : shards) * master_bytes;
  b.moments = 2 * shards * master_bytes;
  return b;
}

ModelStateBytes model_state_step_bytes(const ModelShape& m, int stage, int64_t world, int64_t compute_bytes,
                                       int64_t master_bytes) {
  ModelStateBytes b;
  if (world <= 1 || stage == 0) return b;
  const int64_t layer = zero_layer_numel(m), rest = zero_rest_numel(m);
  if (stage == 3) b.weights = 2 * world * shard_numel(layer, world) * compute_bytes;
  // A reduce-scatter in flight holds a padded copy and an incoming shard of
  // its unit; at most two are in flight: two layers, or the last layer and
  // the rest (reduced after the backward).
  const int64_t unit = world + 1;  // shards per staged unit
  const int64_t two_layers = 2 * unit * shard_numel(layer, world);
  const int64_t layer_and_rest = unit * (shard_numel(layer, world) + shard_numel(rest, world));
  if (stage >= 2)  // the rest's whole gradients live through the backward; one layer's at a time
    b.grads = (rest + std::max(layer + two_layers, layer_and_rest)) * master_bytes;
  else  // stage 1: the whole gradients are held already; reduce_all stages them
    b.grads = std::max(two_layers, layer_and_rest) * master_bytes;
  return b;
}

CommPlan comm_plan(const PlanInputs& in, const std::string& policy, double recomputed, double compute_s) {
  const auto& hw = in.hardware;
  const double n = static_cast<double>(in.model.layers);
  auto link = [&](int64_t group) {
    return group <= hw.gpus_per_host ? hw.intra_host_bytes_per_s : hw.inter_host_bytes_per_s;
  };
  CommPlan c;
  // Ulysses (docs/dist.md): what the runtime's exchange sends per layer.
  const UlyssesPolicyLayer u = ulysses_policy_layer(in, policy);
  if (u.calls > 0) {
    c.all_to_all_bytes = n * static_cast<double>(u.forward + u.backward);
    c.all_to_all_calls = in.model.layers * u.calls;
    c.all_to_all_s = c.all_to_all_bytes / link(ulysses_group(in)) +
                     static_cast<double>(c.all_to_all_calls) * hw.collective_latency_s;
  }
  (void)recomputed;  // memo recomputes on its own tokens: nothing more moves
  // ZeRO over the ranks holding the same weights, per flat buffer.
  const int64_t z = zero_group(in);
  const int stage = zero_stage(in);
  if (z > 1) {
    const int64_t buffers = in.model.layers + 1;
    auto per_step = [&](int64_t element_size) {
      return n * static_cast<double>(zero_collective_bytes(zero_layer_numel(in.model), z, element_size)) +
             static_cast<double>(zero_collective_bytes(zero_rest_numel(in.model), z, element_size));
    };
    const double weights = per_step(in.compute_bytes), grads = per_step(in.master_bytes);
    const double layer_gather =
        n * static_cast<double>(zero_collective_bytes(zero_layer_numel(in.model), z, in.compute_bytes));
    if (stage == 3) {
      // memo train's stage 3 (ShardedLayerWeights): each layer gathered
      // before its forward and again before its backward; the embedding,
      // final norm and head once, after the optimizer step (they stay whole).
      c.all_gather_bytes = weights + layer_gather;
      c.zero_calls += buffers + in.model.layers;
    } else if (stage >= 1) {  // the owners' updated weights, after the optimizer step
      c.all_gather_bytes = weights;
      c.zero_calls += buffers;
    }
    if (stage >= 1) {
      // Stage 1 too reduce-scatters (every unit once, after the backward;
      // stages 2-3 each layer as it completes): the owner needs only its
      // shard. Then two small all-reduces: the loss sum and token count,
      // and the clipping norm's squared shard norms (float64).
      c.reduce_scatter_bytes = grads;
      c.zero_calls += buffers;
      const auto ring = [&](int64_t numel) { return 2 * (z - 1) * numel * 8 / z; };
      c.all_reduce_bytes = static_cast<double>(ring(2) + ring(1));
      c.zero_calls += 2;
    } else {
      // memo train's stage 0: every gradient tensor all-reduced, and the loss.
      const auto a = stage0_all_reduce(in.model, z, in.master_bytes);
      c.all_reduce_bytes = static_cast<double>(a.bytes);
      c.zero_calls += a.calls;
    }
    c.zero_s = (c.all_gather_bytes + c.reduce_scatter_bytes + c.all_reduce_bytes) / link(z) +
               static_cast<double>(c.zero_calls) * hw.collective_latency_s;
  }
  c.exposed_s = c.all_to_all_s + std::max(0.0, c.zero_s - compute_s);
  return c;
}

StaticBytes static_bytes_per_gpu(const PlanInputs& in) {
  // What memo train holds (model_state_bytes), at its peak within a step,
  // divided by tp (memo train has no tp; the planner's tp divides the weights).
  // Stage 0 keeps the whole AdamW state on every rank, as memo train does
  // (it was counted sharded over dp x cp, which no runtime here does).
  const double tp = static_cast<double>(in.parallel.tp);
  const int64_t z = zero_group(in);
  const int stage = z > 1 ? zero_stage(in) : 0;
  const auto held = model_state_bytes(in.model, stage, z, in.compute_bytes, in.master_bytes);
  const auto step = model_state_step_bytes(in.model, stage, z, in.compute_bytes, in.master_bytes);
  StaticBytes b;
  b.weights = static_cast<double>(held.weights + held.master + step.weights) / tp;
  b.grads = static_cast<double>(held.grads + step.grads) / tp;
  b.optimizer = static_cast<double>(held.moments) / tp;
  return b;
}

namespace {

// Weights (compute copy + master), gradients and Adam moments per GPU.
void add_static_bytes(const PlanInputs& in, Plan& pl) {
  const auto b = static_bytes_per_gpu(in);
  pl.weight_bytes = b.weights;
  pl.grad_bytes = b.grads;
  pl.optimizer_bytes = b.optimizer;
}

// One layer's skeletal set (always-offloaded and the rest) and the transient working set.
void add_activation_bytes(const PlanInputs& in, Plan& pl) {
  pl.skeletal = skeletal_bytes(in);
  for (const auto& t : pl.skeletal) {
    pl.per_layer_skeletal_bytes += t.bytes;
    (t.always_offloaded ? pl.fixed_bytes : pl.rest_bytes) += t.bytes;
  }
  pl.transient_bytes = transient_bytes(in, pl.skeletal);
}

// What every policy's prediction shares.
struct PolicyContext {
  const PlanInputs& in;
  const Plan& pl;
  double gpus = 0;          // of one replica
  double matmul_s = 0;      // the step's matmuls
  double attention_s = 0;   // the step's attention, forward and backward
  double full_recompute_s = 0;  // one layer's forward again, but its down projection
  double fixed_device = 0;  // static + transient + reserve bytes
  double host_share = 0;    // host bytes per GPU
  SplitInputs split;        // choose_split's inputs but alpha and the device spare
};

// A layer's forward, backward and token-wise recompute time, the model
// FLOPs, and the step's matmul and attention time.
void add_times(const PlanInputs& in, Plan& pl, PolicyContext& c) {
  const auto& m = in.model;
  const auto& hw = in.hardware;
  const double B = static_cast<double>(in.batch), S = static_cast<double>(in.seq_len);
  const double layer_params = static_cast<double>(m.layer_matmul_params());
  const double mm_rate = hw.peak_flops * hw.matmul_efficiency * c.gpus;
  const double at_rate = hw.peak_flops * hw.attention_efficiency * c.gpus;
  const double attn_fwd = B * 4.0 * S * S * static_cast<double>(m.heads * m.head_dim) / 2.0;  // per layer
  const double layer_mm_fwd = 2.0 * B * S * layer_params;
  const double down_fwd = 2.0 * B * S * static_cast<double>(m.hidden * m.ffn);
  pl.layer_forward_s = layer_mm_fwd / mm_rate + attn_fwd / at_rate;
  pl.layer_backward_s = 2.0 * layer_mm_fwd / mm_rate + 2.5 * attn_fwd / at_rate;
  pl.layer_recompute_s = (layer_mm_fwd - down_fwd) / mm_rate;  // token-wise, all tokens, no attention
  c.full_recompute_s = pl.layer_forward_s - down_fwd / mm_rate;
  pl.model_flops = 6.0 * B * S * static_cast<double>(m.matmul_params()) + step_attention_flops(in);
  c.matmul_s = 6.0 * B * S * static_cast<double>(m.matmul_params()) / mm_rate;
  c.attention_s = step_attention_flops(in) / at_rate;
}

SplitInputs split_inputs(const PlanInputs& in, const Plan& pl, double host_share) {
  const auto& hw = in.hardware;
  SplitInputs si;
  si.layers = in.model.layers;
  si.seq_len = std::max<int64_t>(1, in.seq_len / in.parallel.cp);
  si.fixed_bytes = pl.fixed_bytes;
  si.rest_bytes = pl.rest_bytes;
  si.forward_s = pl.layer_forward_s;
  si.backward_s = pl.layer_backward_s;
  si.recompute_s = pl.layer_recompute_s;
  si.d2h_bytes_per_s = hw.d2h_bytes_per_s;
  si.h2d_bytes_per_s = hw.h2d_bytes_per_s;
  si.host_bytes = host_share;
  return si;
}

// Device bytes, step time, MFU, throughput and whether it fits, from the
// policy's activation, host, recompute and exposed-copy figures.
void finish(PolicyPlan& pp, const PolicyContext& c) {
  const auto& hw = c.in.hardware;
  const double B = static_cast<double>(c.in.batch), S = static_cast<double>(c.in.seq_len);
  pp.device_bytes = c.fixed_device + pp.activation_bytes;
  pp.matmul_s = c.matmul_s;
  pp.attention_s = c.attention_s;
  const double recomputed = pp.alpha && pp.policy == "memo" ? std::max(0.0, 1.0 - *pp.alpha - pp.resident) : 0.0;
  pp.comm = comm_plan(c.in, pp.policy, recomputed, c.matmul_s + c.attention_s + pp.recompute_s);
  pp.step_s = c.matmul_s + c.attention_s + pp.recompute_s + pp.exposed_copy_s + pp.comm.exposed_s;
  pp.mfu = c.pl.model_flops / (pp.step_s * hw.peak_flops * c.gpus);
  pp.tokens_per_s = B * S * static_cast<double>(c.in.parallel.dp) / pp.step_s;
  if (pp.why_not.empty() && pp.device_bytes > hw.device_bytes)
    pp.why_not = cat("needs ", format_bytes(pp.device_bytes), " per GPU, ", format_bytes(hw.device_bytes),
                     " available");
  if (pp.why_not.empty() && pp.host_bytes > c.host_share)
    pp.why_not = cat("needs ", format_bytes(pp.host_bytes), " of host memory per GPU, ",
                     format_bytes(c.host_share), " available");
  pp.fits = pp.why_not.empty();
}

PolicyPlan plan_keep(const PolicyContext& c) {
  PolicyPlan keep;
  keep.policy = "keep";
  keep.activation_bytes = static_cast<double>(c.in.model.layers) * c.pl.per_layer_skeletal_bytes;
  finish(keep, c);
  return keep;
}

PolicyPlan plan_recompute(const PolicyContext& c) {
  const double n = static_cast<double>(c.in.model.layers);
  const double x_bytes = c.pl.skeletal.front().bytes;  // the layer input, hidden-width
  PolicyPlan rec;
  rec.policy = "recompute";
  rec.activation_bytes = n * x_bytes + c.pl.per_layer_skeletal_bytes;
  rec.recompute_s = n * c.full_recompute_s;
  finish(rec, c);
  return rec;
}

PolicyPlan plan_offload(const PolicyContext& c) {
  const double skel = c.pl.per_layer_skeletal_bytes;
  PolicyPlan off;
  off.policy = "offload";
  off.buffer_bytes = 2.0 * skel;
  off.activation_bytes = off.buffer_bytes;
  off.host_bytes = static_cast<double>(c.in.model.layers) * skel;
  off.alpha = 1.0;
  off.limited_by = "every layer swapped whole";
  if (off.host_bytes <= c.host_share) {
    SplitInputs s = c.split;
    s.alpha = 1.0;
    s.swap_last_two = true;
    try {
      auto choice = choose_split(s);
      off.exposed_copy_s = choice.exposed_copy_s;
      off.alpha_per_layer.assign(static_cast<size_t>(c.in.model.layers), 1.0);
    } catch (const InputError& e) {
      off.why_not = e.what();  // host memory, at the rounding edge
    }
  }
  finish(off, c);
  return off;
}

PolicyPlan plan_memo(const PolicyContext& c) {
  const auto& hw = c.in.hardware;
  PolicyPlan memo;
  memo.policy = "memo";
  memo.buffer_bytes = 2.0 * c.pl.per_layer_skeletal_bytes;
  const int64_t swapped = std::max<int64_t>(0, c.in.model.layers - 2);
  const double spare = hw.device_bytes - c.fixed_device - memo.buffer_bytes;
  const double min_host = static_cast<double>(swapped) * c.pl.fixed_bytes;
  if (spare < 0) {
    memo.why_not = cat("needs ", format_bytes(c.fixed_device + memo.buffer_bytes), " per GPU before any resident "
                       "share, ", format_bytes(hw.device_bytes), " available");
  } else if (min_host > c.host_share) {
    memo.host_bytes = min_host;
    memo.why_not = cat("x, o and lse of ", swapped, " layers need ", format_bytes(min_host),
                       " of host memory per GPU, ", format_bytes(c.host_share), " available");
  } else {
    SplitInputs s = c.split;
    s.device_spare_bytes = spare;
    SplitChoice choice;
    try {
      choice = choose_split(s);
    } catch (const InputError& e) {
      memo.why_not = e.what();
      choice = {};
    }
    memo.alpha = choice.alpha;
    memo.resident = choice.resident;
    memo.limited_by = choice.limited_by;
    memo.host_bytes = choice.host_bytes;
    memo.resident_bytes = static_cast<double>(swapped) * choice.resident * c.pl.rest_bytes;
    memo.recompute_s = static_cast<double>(swapped) * choice.recompute_s;
    memo.exposed_copy_s = choice.exposed_copy_s;
    for (const auto& l : choice.layers) memo.alpha_per_layer.push_back(l.swapped ? choice.alpha : 0.0);
  }
  memo.activation_bytes = memo.buffer_bytes + memo.resident_bytes;
  finish(memo, c);
  return memo;
}

// Everything but max_seq, at in.seq_len: static and activation bytes, times,
// then each policy's prediction.
Plan evaluate(const PlanInputs& in) {
  Plan pl;
  pl.in = in;
  add_static_bytes(in, pl);
  add_activation_bytes(in, pl);
  PolicyContext c{in, pl, static_cast<double>(in.parallel.replica_gpus()), 0, 0, 0, 0, 0, SplitInputs{}};
  add_times(in, pl, c);
  c.fixed_device = pl.weight_bytes + pl.grad_bytes + pl.optimizer_bytes + pl.transient_bytes +
                   in.hardware.reserve_bytes;
  c.host_share = in.hardware.host_share();
  c.split = split_inputs(in, pl, c.host_share);
  pl.policies = {plan_keep(c), plan_recompute(c), plan_offload(c), plan_memo(c)};
  return pl;
}

}  // namespace

double step_attention_flops(const PlanInputs& in) {
  const auto& m = in.model;
  const double B = static_cast<double>(in.batch), S = static_cast<double>(in.seq_len);
  const double layer_forward = B * 4.0 * S * S * static_cast<double>(m.heads * m.head_dim) / 2.0;  // causal
  return 3.5 * static_cast<double>(m.layers) * layer_forward;
}

int64_t longest_fitting(int64_t unit, const std::function<bool(int64_t)>& fits_len) {
  auto fits = [&](int64_t k) { return fits_len(k * unit); };
  if (!fits(1)) return 0;
  const int64_t cap = (int64_t{1} << 36) / unit;  // 64G tokens: beyond any real host
  int64_t lo = 1, hi = 2;
  while (hi < cap && fits(hi)) {
    lo = hi;
    hi *= 2;
  }
  if (hi >= cap) {
    if (fits(cap)) return cap * unit;
    hi = cap;
  }
  while (hi - lo > 1) {  // fits(lo), !fits(hi)
    const int64_t mid = lo + (hi - lo) / 2;
    (fits(mid) ? lo : hi) = mid;
  }
  return lo * unit;
}

namespace {

// Largest seq_len (a multiple of sp x cp) at which `policy` fits; 0 if none.
int64_t longest_fitting_policy(const PlanInputs& base, size_t policy) {
  return longest_fitting(base.parallel.sp * base.parallel.cp, [&](int64_t seq_len) {
    PlanInputs in = base;
    in.seq_len = seq_len;
    return evaluate(in).policies[policy].fits;
  });
}

std::string tokens(int64_t t) {
  if (t >= 1024 && t % 1024 == 0) return strf("%lldK", static_cast<long long>(t / 1024));
  return std::to_string(t);
}

std::string make_verdict(const Plan& pl) {
  const auto& hw = pl.in.hardware;
  const auto* c = pl.chosen_plan();
  if (!c) {
    const PolicyPlan* longest = &pl.policies.front();
    for (const auto& p : pl.policies)
      if (p.max_seq > longest->max_seq) longest = &p;
    return cat("nothing fits at ", tokens(pl.in.seq_len), " tokens on ", hw.name, "; the longest that fits is ",
               tokens(longest->max_seq), " with ", longest->policy);
  }
  std::string head = pl.in.policy == "best" ? cat("best: ", c->policy) : c->policy;
  if (!c->fits)
    return cat(head, " does not fit: ", c->why_not, "; longest that fits: ", tokens(c->max_seq), " tokens");
  std::string out = cat(head, " fits: ", format_bytes(c->device_bytes), " of ", format_bytes(hw.device_bytes),
                        " per GPU, ", format_bytes(c->host_bytes), " host; ", format_seconds(c->step_s),
                        "/step, MFU ", strf("%.1f%%", 100.0 * c->mfu), ", ",
                        format_count(c->tokens_per_s), " tokens/s");
  if (c->alpha && c->policy == "memo") out += strf(" (alpha %.3f, %s)", *c->alpha, c->limited_by.c_str());
  return out;
}

}  // namespace

Plan make_plan(const PlanInputs& in) {
  validate_plan_inputs(in);
  Plan pl = evaluate(in);
  for (size_t i = 0; i < pl.policies.size(); ++i) pl.policies[i].max_seq = longest_fitting_policy(in, i);
  if (in.policy == "best") {
    // The fastest that fits; on a tie, the simpler or thriftier one, in this order
    // (memo before offload: the same time with less host memory).
    for (int i : {0, 3, 1, 2}) {
      const auto& p = pl.policies[static_cast<size_t>(i)];
      if (p.fits && (pl.chosen < 0 || p.step_s < pl.policies[static_cast<size_t>(pl.chosen)].step_s))
        pl.chosen = i;
    }
  } else {
    for (size_t i = 0; i < pl.policies.size(); ++i)
      if (pl.policies[i].policy == in.policy) pl.chosen = static_cast<int>(i);
  }
  pl.verdict = make_verdict(pl);
  return pl;
}

}  // namespace memo::plan
