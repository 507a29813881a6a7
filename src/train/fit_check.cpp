// The fit check (fit_check.h): the estimate by purpose, the machine's
// memory, and a message that says what would fit.
#include "train/fit_check.h"

#include <algorithm>
#include <functional>
#include <vector>

#include "core/checked.h"
#include "core/error.h"
#include "core/units.h"
#include "memory/device_memory.h"
#include "memory/host_memory.h"
#include "memory/host_pool.h"
#include "plan/chunk_plan.h"
#include "plan/cost_model.h"
#include "plan/hardware.h"
#include "plan/kv_on_host_plan.h"
#include "plan/swap_split.h"
#include "train/loss.h"

namespace memo::train {

namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
constexpr double kCudaReserve = 2.0 * kGiB;         // context, cuBLAS/cuDNN workspaces, allocator slack
constexpr double kCpuReserve = 64.0 * 1024 * 1024;  // allocator slack, small tensors the estimate omits

bool is_swap(const std::string& policy) { return policy == "offload" || policy == "memo"; }

// Elements of the model's largest weight matrix (its embedding, a fused
// projection): bounded by the (checked) parameter count.
int64_t largest_weight(const model::ModelConfig& c) {
  return std::max({c.vocab_size * c.hidden, c.qkv_dim() * c.hidden, 2 * c.ffn * c.hidden});
}

std::string bytes(double b) { return format_bytes(b); }

std::string tokens_str(int64_t t) {
  if (t >= (1 << 20) && t % (1 << 20) == 0) return strf("%lldM", static_cast<long long>(t >> 20));
  if (t >= 1024 && t % 1024 == 0) return strf("%lldK", static_cast<long long>(t / 1024));
  return std::to_string(t);
}

// estimate_fit(...).fits, with a size beyond int64 counting as "does not fit".
bool fits(const FitRequest& r, const MemoryAvailable& have) {
  try {
    return estimate_fit(r, have).fits;
  } catch (const InputError&) {
    return false;
  }
}

// The largest value in [1, hi] for which pred holds (pred monotone), 0 if none.
int64_t largest_true(int64_t hi, const std::function<bool(int64_t)>& pred) {
  if (hi < 1 || !pred(1)) return 0;
  int64_t lo = 1;
  while (hi - lo > 1) {  // pred(lo); hi unknown
    const int64_t mid = lo + (hi - lo) / 2;
    (pred(mid) ? lo : hi) = mid;
  }
  return pred(hi) ? hi : lo;
}

}  // namespace

FitEstimate estimate_fit(const FitRequest& r, const MemoryAvailable& have) {
  const auto& c = r.config;
  const bool cuda = !r.device.is_cpu();
  const int64_t cb = static_cast<int64_t>(c10::elementSize(r.compute_dtype));
  // Checked int64 first: the run's largest sizes, as the runtime will compute them.
  const std::string what = cat("the activations of batch ", r.batch, " x seq_len ", r.seq_len);
  const int64_t tokens = checked_mul(r.batch, r.seq_len, what);
  (void)checked_mul(r.batch, checked_add(r.seq_len, 1, "seq_len + 1"), what);
  const int64_t width = std::max({c.hidden, c.qkv_dim(), 2 * c.ffn, c.heads, c.head_dim});
  (void)checked_product({tokens, width, 8}, what);  // the widest activation in bytes (float64 runs)
  const double P = static_cast<double>(c.total_params());  // checked by ModelConfig
  const double largest = static_cast<double>(largest_weight(c));

  plan::PlanInputs in;
  in.model = model::to_plan_shape(c);
  in.seq_len = r.seq_len;
  in.batch = r.batch;
  in.compute_bytes = static_cast<int>(cb);
  in.master_bytes = 4;
  // One chunk of the loss (the runtime's chunk: float32 logits and their
  // gradient in the compute dtype, train/loss.h).
  const int64_t chunk = std::min(
      r.loss_chunk > 0 ? r.loss_chunk
                       : default_loss_chunk(c.vocab_size, r.compute_dtype, default_loss_budget(r.device)),
      tokens);
  in.loss_chunk_bytes = static_cast<double>(chunk) *
                        static_cast<double>(loss_bytes_per_token(c.vocab_size, r.compute_dtype));
  const auto skeletal = plan::skeletal_bytes(in);
  double skel = 0, fixed = 0, rest = 0;
  for (const auto& t : skeletal) {
    skel += t.bytes;
    (t.always_offloaded ? fixed : rest) += t.bytes;
  }
  const double x = skeletal.front().bytes;
  const double n = static_cast<double>(c.layers);
  // Chunked layers (docs/chunks.md): a unit is one chunk of a layer; K and V
  // of a layer [B, S, 2 nkv d] and their accumulators span the sequence.
  const bool chunked = r.chunk_tokens > 0 && r.chunk_tokens < r.seq_len;
  plan::PlanInputs unit_in = in;
  if (chunked) unit_in.seq_len = r.chunk_tokens;
  const auto unit_skeletal = chunked ? plan::skeletal_bytes(unit_in) : skeletal;
  double unit_skel = 0, unit_fixed = 0, unit_rest = 0;
  for (const auto& t : unit_skeletal) {
    unit_skel += t.bytes;
    (t.always_offloaded ? unit_fixed : unit_rest) += t.bytes;
  }
  const double units = chunked ? n * static_cast<double>((r.seq_len + r.chunk_tokens - 1) / r.chunk_tokens) : n;
  // --kv-on-host (chunked, one rank's whole sequence): K, V and their
  // accumulators live in host blocks; the device holds the stream's staging.
  const bool kv_on_host = chunked && r.kv_on_host;
  plan::KvOnHostCost kv_cost;
  if (kv_on_host) kv_cost = plan::kv_on_host_cost(in, r.policy == "eval" ? "recompute" : r.policy, r.chunk_tokens);
  // One layer's K, V and their accumulators on the device (none with --kv-on-host).
  const double kv = chunked && !kv_on_host ? static_cast<double>(tokens * 2 * c.kv_heads * c.head_dim * cb) : 0.0;
  const double kv_grads = kv / static_cast<double>(cb) * std::max<double>(4.0, static_cast<double>(cb));

  FitEstimate e;
  e.weights = P * 4.0 + (r.compute_dtype == c10::ScalarType::Float ? 0.0 : P * static_cast<double>(cb));
  e.grads = P * 4.0;
  e.optimizer = r.optimizer ? P * 8.0 : 0.0;
  if (r.zero >= 1 && r.zero_world > 1 && r.optimizer) {
    // ZeRO on many ranks: this rank's shards and what a step adds on top
    // (gathered layers, a layer's and the embedding's whole gradients, the
    // reduce-scatters' staging), in the trainer's master dtype.
    const int64_t mb = r.compute_dtype == c10::ScalarType::Double ? 8 : 4;
    const auto held = plan::model_state_bytes(in.model, r.zero, r.zero_world, cb, mb);
    const auto step = plan::model_state_step_bytes(in.model, r.zero, r.zero_world, cb, mb);
    e.weights = static_cast<double>(held.weights + held.master + step.weights);
    e.grads = static_cast<double>(held.grads + step.grads);
    e.optimizer = static_cast<double>(held.moments);
  }
  if (r.policy == "keep") e.activations = n * (skel + kv);
  else if (r.policy == "recompute") e.activations = n * x + unit_skel + kv;
  else if (is_swap(r.policy)) e.activations = 2.0 * unit_skel + kv;  // the two rounding buffers (and K, V in flight)
  else e.activations = unit_skel + kv;                                // eval: one unit's forward at a time
  if (is_swap(r.policy) && in.model.arch == plan::ModelArch::Llama) {
    // The chunk plan's host bytes: the pool to its slot alignment (a shorter
    // last chunk, alpha C floored per unit; tests/test_chunk_host_bytes.cpp).
    // They depend on shapes only: any hardware passes the plan's validation.
    plan::PlanInputs shapes = in;
    shapes.hardware = plan::hardware_preset("h200-141gb");
    shapes.hardware.host_bytes = 1e30;  // the pool's whole need: the device tier is judged below, by the run's budget
    const auto m = plan::chunk_memory(shapes, r.policy, chunked ? r.chunk_tokens : 0, r.alpha.value_or(0.0));
    e.pool = m.host_bytes;
    // With --kv-on-host the stream's blocks replace offload's per-layer K, V
    // slots (chunked memo has none: it rebuilds K, V in backward).
    if (kv_on_host)
      for (const auto& part : m.host)
        if (part.name == plan::kEveryLayerKvPart) e.pool -= part.bytes;
  } else if (r.policy == "offload") {
    e.pool = n * (skel + kv);
  } else if (r.policy == "memo") {
    e.pool = std::max(0.0, units - 2.0) * (unit_fixed + r.alpha.value_or(0.0) * unit_rest);  // K, V rebuilt
  }
  e.kv_host = kv_cost.host_bytes;
  // The largest of the phases' temporaries: a layer's (a chunk's) backward
  // with the loss chunk, plus four hidden-width tensors (a layer's input and
  // output and, under offload and memo, the inputs held while their copies
  // run: measured on CPU, tests/test_fit_check.cpp), with chunks K, V and
  // their accumulators; the optimizer step; on the CPU,
  // initialisation (float64 draws); plus the
  // batch (int64 tokens, targets and their window), the loss's per-token
  // targets, masks and statistics, and the RoPE table.
  const double backward = plan::transient_bytes(unit_in, unit_skeletal) + 4.0 * x + kv + kv_grads + kv_cost.staging_bytes;
  // Fused AdamW and the multi-tensor norm allocate nothing parameter-sized;
  // a bf16 run refreshes its compute copy per tensor.
  const double optimizer_tmp = r.command == "train" ? largest * 4.0 : 0.0;  // bench and eval take no step
  const double init_tmp = cuda ? 0.0 : largest * 12.0;
  const double batch = static_cast<double>(tokens) * (24.0 + 96.0) + static_cast<double>(r.seq_len * c.head_dim) * 8.0;
  e.working = std::max({backward, optimizer_tmp, init_tmp}) + batch;
  // A 1% margin on everything that grows with the tokens, for what the model
  // leaves out (allocator rounding, kernel workspaces): on CPU the measured
  // peaks of every policy stay within it (docs/perf/fit-estimate-cpu-2026-12-02.md).
  // (The pool here is the whole of it: memo's tier below moves bytes from it
  // to the activations, which leaves the sum as it is; its x-only units
  // leave bytes off it that nothing holds, which leaves the margin a little
  // high.)
  e.working += 0.01 * (e.activations + e.working + e.pool + e.kv_host);
  e.reserve = cuda ? kCudaReserve : kCpuReserve;
  const double budget = have.pool_budget - e.kv_host;  // what the store's pool may take
  // (A budget of 0: none given, the whole pool is what is asked about.)
  if (r.policy == "memo" && r.alpha.value_or(0.0) == 0.0 && have.pool_budget > 0 && e.pool > budget && units > 2) {
    // memo's device tier (plan/swap_split.h), CUDA only (on CPU the runtime
    // has no spare device apart from the host): x, o, lse of the fewest
    // whole units covering the budget's shortfall stay on the device, as
    // many as it has room for beside everything else it holds.
    // What the tier cannot take (on CPU: all of it), x-only units cover:
    // each keeps x alone in the pool, its o and lse recomputed in backward
    // by its chunk's attention (plan/chunk_plan.h; under sp with its
    // all-to-alls, the ranks agreeing on the units).
    const double room =
        cuda ? have.device - (e.weights + e.grads + e.optimizer + e.activations + e.working + e.reserve) : 0.0;
    const double per_attention = unit_fixed - unit_skeletal.front().bytes;  // o, lse of a unit
    const auto cover = plan::cover_host_shortfall(e.pool - budget, unit_fixed, per_attention,
                                                  static_cast<int64_t>(units) - 2, room);
    e.fixed_on_device = std::min(static_cast<double>(cover.on_device) * unit_fixed, e.pool);
    e.activations += e.fixed_on_device;
    e.attention_recomputed = std::min(static_cast<double>(cover.x_only) * per_attention,
                                      (e.pool - e.fixed_on_device) * per_attention / unit_fixed);
    e.pool -= e.fixed_on_device + e.attention_recomputed;
  }
  e.pool += e.kv_host;
  e.device_need = e.weights + e.grads + e.optimizer + e.activations + e.working + e.reserve;
  if (cuda) {
    // Weights are drawn on the host before they move; the pool is pinned host memory.
    e.host_need = std::max(P * 4.0 + largest * 12.0, e.pool);
  } else {
    e.device_need += e.pool;
  }
  e.fits = e.device_need <= have.device && (!cuda || e.host_need <= have.host) && e.pool <= have.pool_budget;
  return e;
}

std::string fit_problem(const FitRequest& r, const MemoryAvailable& have) {
  const FitEstimate e = estimate_fit(r, have);
  if (e.fits) return {};
  const auto& c = r.config;
  const bool cuda = !r.device.is_cpu();
  const bool train = r.command == "train";
  std::string msg = cat(
      "memo ", r.command, ": this run does not fit in memory. ", c.name, " (",
      format_count(static_cast<double>(c.total_params())), " parameters, ", c.layers, " layers) at batch ",
      r.batch, " x seq_len ", r.seq_len, r.policy == "eval" ? "" : " with policy " + r.policy, " on ",
      r.device.str(), " needs about ", bytes(e.device_need), " (weights ", bytes(e.weights), ", gradients ",
      bytes(e.grads),
      e.optimizer > 0 ? (r.command == "bench" ? ", gradient copies for the comparison " : ", AdamW state ") +
                            bytes(e.optimizer)
                      : "",
      ", activations kept for backward ", bytes(e.activations),
      e.fixed_on_device > 0 ? cat(" (", bytes(e.fixed_on_device),
                                  " of them memo's x, o, lse that the host pool's budget cannot hold: its device tier)")
                            : "",
      ", working set ", bytes(e.working),
      !cuda && e.pool > 0 ? ", pinned host pool " + bytes(e.pool) : "", ", reserve ", bytes(e.reserve),
      "); there is ", bytes(have.device), " (", have.device_what, ").");
  if (e.pool > have.pool_budget)
    msg += cat(" The pinned host pool of ", r.policy, " needs ", bytes(e.pool),
               e.kv_host > 0 ? cat(" (", bytes(e.kv_host), " of it the K, V host blocks of --kv-on-host)") : "",
               e.attention_recomputed > 0
                   ? cat(" even with ", bytes(e.attention_recomputed),
                         " of o and lse left off it (memo's x-only units: every unit its device tier does not "
                         "hold keeps only x there, its attention recomputed in backward)")
                   : "",
               " and ", have.pool_what, " allows ", bytes(have.pool_budget), ".");
  if (cuda && e.host_need > have.host)
    msg += cat(" It also needs ", bytes(e.host_need), " of host RAM (the weights are drawn there; the pinned pool) "
               "and there is ", bytes(have.host), " (", have.host_what, ").");

  // What would fit.
  std::vector<std::string> fixes;
  // The model's own state: one token, and no pinned pool (whose budget is its own constraint).
  FitRequest one_token = r;
  one_token.batch = 1;
  one_token.seq_len = 1;
  if (is_swap(r.policy)) one_token.policy = "keep";
  if (!fits(one_token, have)) {
    const int64_t layers = largest_true(c.layers - 1, [&](int64_t l) {
      FitRequest q = one_token;
      q.config.layers = l;
      return fits(q, have);
    });
    msg += cat(" The weights, gradients", e.optimizer > 0 ? " and optimizer state" : "", " alone do not fit",
               layers > 0 ? cat(": at most ", layers, " layers do (--layers ", layers, "), or take a smaller model.")
                          : std::string(", not even with one layer: take a smaller model."));
  } else {
    std::vector<std::string> policies = {r.policy};
    if (train)
      for (const char* p : {"keep", "recompute", "offload", "memo"})
        if (r.policy != p) policies.push_back(p);
    if (r.policy == "memo" && r.alpha) {  // the largest offloaded fraction that fits, to 1/1000
      FitRequest q = r;
      const int64_t k = largest_true(1001, [&](int64_t v) {
        q.alpha = static_cast<double>(v - 1) / 1000.0;
        return fits(q, have);
      });
      if (k > 0) fixes.push_back(strf("--alpha %.3f fits (or leave alpha to the start-up choice)", (k - 1) / 1000.0));
    }
    if (r.loss_chunk > 0) {  // an explicit cross-entropy chunk larger than the automatic one
      FitRequest q = r;
      q.loss_chunk = 0;
      if (fits(q, have)) fixes.push_back("--loss-chunk 0 (automatic: a chunk from the device's loss budget) fits");
    }
    for (size_t i = 1; i < policies.size(); ++i) {
      FitRequest q = r;
      q.policy = policies[i];
      if (fits(q, have)) fixes.push_back(cat("--policy ", policies[i], " fits (about ", bytes(estimate_fit(q, have).device_need), ")"));
    }
    const bool chunked = r.chunk_tokens > 0 && r.chunk_tokens < r.seq_len;
    if (r.command != "eval" && !chunked) {
      // Chunked layers (docs/chunks.md): the largest power-of-two chunk that
      // fits, under this policy or else the first other one it makes fit.
      for (const auto& p : policies) {
        FitRequest q = r;
        q.policy = p;
        int64_t best = 0;
        for (int64_t size = 1; size < r.seq_len; size *= 2) {
          q.chunk_tokens = size;
          if (fits(q, have)) best = size;
        }
        if (best == 0) continue;
        q.chunk_tokens = best;
        fixes.push_back(cat(p == r.policy ? "" : "--policy " + p + " ", "--chunk-tokens ", best, " fits (about ",
                            bytes(estimate_fit(q, have).device_need), ")"));
        break;
      }
    }
    if (chunked && !r.kv_on_host) {
      FitRequest q = r;
      q.kv_on_host = true;
      if (fits(q, have)) {
        const auto e_kv = estimate_fit(q, have);
        fixes.push_back(cat("--kv-on-host fits (about ", bytes(e_kv.device_need), ", and ", bytes(e_kv.kv_host),
                            " of K, V host blocks; it needs --sp 1)"));
      }
    }
    std::vector<std::string> longest;
    for (const auto& p : policies) {
      FitRequest q = r;
      q.policy = p;
      const int64_t s = plan::longest_fitting(1, [&](int64_t len) {
        q.seq_len = len;
        return fits(q, have);
      });
      if (s > 0) longest.push_back(r.policy == "eval" ? tokens_str(s) : cat(tokens_str(s), " with ", p));
    }
    if (!longest.empty()) fixes.push_back("the longest --seq-len that fits is " + joined(longest));
    if (r.batch > 1) {
      const int64_t b = largest_true(r.batch - 1, [&](int64_t v) {
        FitRequest q = r;
        q.batch = v;
        return fits(q, have);
      });
      if (b > 0) fixes.push_back(cat("--batch ", b, " fits at this seq_len"));
    }
    if (!fixes.empty()) msg += " What fits: " + joined(fixes) + ".";
  }
  msg += cat(" (The estimate is memo plan's cost model; --no-memory-check skips this check.)");
  return msg;
}

MemoryAvailable measure_memory(const FitRequest& r) {
  MemoryAvailable m;
  const auto host = memory::host_memory();
  m.host = static_cast<double>(host.available);
  m.host_what = "host RAM, " + memory::describe(host);
  if (r.device.is_cpu()) {
    m.device = m.host;
    m.device_what = m.host_what;
  } else {
    m.device = static_cast<double>(memory::device_total_memory(r.device));
    m.device_what = "the total memory of " + r.device.str();
  }
  // The same budget the swap policies get (memory/host_pool.h).
  const auto budget = memory::host_budget(r.host_pool_budget / kGiB);
  m.pool_budget = budget.bytes > 0 ? budget.bytes : m.host;
  m.pool_what = r.host_pool_budget > 0 ? cat("--host-memory-gib ", r.host_pool_budget / kGiB) : budget.source;
  return m;
}

FitRequest fit_request(const TrainOptions& o, const model::ModelConfig& config, c10::Device device,
                       c10::ScalarType compute_dtype) {
  FitRequest r;
  r.config = config;
  r.batch = o.batch;
  r.seq_len = o.seq_len;
  r.policy = o.policy;
  if (o.alpha >= 0) r.alpha = o.alpha;
  r.host_pool_budget = o.host_memory_gib * kGiB;
  r.loss_chunk = o.loss_chunk;
  r.kv_on_host = o.kv_on_host;
  r.sp = o.sp;
  r.device = device;
  r.compute_dtype = compute_dtype;
  return r;
}

void check_fit(const FitRequest& r) {
  const auto problem = fit_problem(r, measure_memory(r));
  if (!problem.empty()) throw InputError(problem);
}

std::vector<PolicyFit> check_bench_fit(const TrainOptions& options, const std::vector<BenchRowSpec>& rows,
                                       const model::ModelConfig& config, c10::Device device,
                                       c10::ScalarType compute_dtype) {
  FitRequest r = fit_request(options, config, device, compute_dtype);
  r.optimizer = device.is_cpu();  // no AdamW, but two float32 gradient copies for the comparison (host)
  r.command = "bench";
  const auto have = measure_memory(r);
  std::vector<PolicyFit> out;
  std::string first_problem;
  for (const auto& row : rows) {
    r.policy = row.policy;
    r.chunk_tokens = row.chunk_tokens;
    PolicyFit f{row.policy, row.chunk_tokens, "ok", fit_problem(r, have)};
    if (!f.problem.empty()) {
      const auto e = estimate_fit(r, have);
      const bool host_short = e.pool > have.pool_budget || (device.is_cuda() && e.host_need > have.host);
      f.status = host_short && e.device_need - (device.is_cpu() ? e.pool : 0.0) <= have.device ? "host-memory" : "oom";
      f.pool_bytes = e.pool;
      f.pool_budget = have.pool_budget;
      if (first_problem.empty()) first_problem = f.problem;
    }
    out.push_back(std::move(f));
  }
  if (std::none_of(out.begin(), out.end(), [](const PolicyFit& f) { return f.problem.empty(); }))
    throw InputError(first_problem + " None of the rows (--policies x --chunk-tokens) fits.");
  return out;
}

}  // namespace memo::train
