// memo_zero_worker: one rank of a ZeRO test (tests/test_zero_ranks.cpp starts
// 1, 2 or 4 of them with RANK/WORLD_SIZE/MASTER_*; without them it is a world
// of one).
//
//   memo_zero_worker SCENARIO --stage S [--sp N] [--steps K] [--dir D] [--victim R] [--timeout-ms T]
//
// Every scenario trains the tiny model's parameters in float64 on random
// gradients (rank r's gradient of micro-batch m at step t drawn from a seed of
// (t, m, r)) and checks itself against the unsharded reference every rank
// computes locally: the single-process AdamW (train/optimizer.h) on the sum of
// every rank's gradients, clipped by their global norm.
//   optimizer   K steps under stage S: the global norm, and every weight after
//               each step, equal the reference's within 1e-10 relative; stage 3
//               also: the weight source's layers equal the reference's, its
//               gathers move zero_collective_bytes (and the plan's count) per
//               layer, and at most two layers are gathered at once (the CPU
//               memory meter's peak)
//   ckpt-save   K steps, then save_sharded_checkpoint into D
//   ckpt-load   load D's newest checkpoint (load_into_shards; --stage 0: today's
//               load_checkpoint into an unsharded AdamW), check the weights,
//               moments and step count against the reference after K steps,
//               then one more step against the reference's step K + 1
//   ckpt-crash  one step and a checkpoint, a second step, then the victim dies
//               while the second is saved (rank 0 mid-write: a file-size limit;
//               another rank: after the first of the gathers); nobody may finish
//   (--writer-world W: the checkpoint was written by W ranks)
// Exit codes: 0 ok, 1 a runtime/communication error, 2 bad input, 3 a check
// failed, 4 a save finished that should not have.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <sys/resource.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "dist/comm.h"
#include "dist/context.h"
#include "dist/launch.h"
#include "dist/mesh.h"
#include "dist/zero.h"
#include "memory/device_memory.h"
#include "model/config.h"
#include "model/llama.h"
#include "plan/cost_model.h"
#include "runtime/sharded_weights.h"
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/option_table.h"
#include "train/optimizer.h"
#include "train/zero_checkpoint.h"
#include "train/zero_optimizer.h"

namespace {

using memo::cat;
using namespace memo;

int g_rank = 0;

struct CheckFailed : std::runtime_error {
  using std::runtime_error::runtime_error;
};

void check(bool ok, const std::string& what) {
  if (!ok) throw CheckFailed(what);
}

struct Args {
  std::string scenario;
  int stage = 2;
  int64_t sp = 1, steps = 3, timeout_ms = 30000;
  int victim = -1;
  int writer_world = 0;  // ckpt-load: the world that wrote the checkpoint (its gradients); 0: this one
  std::string dir;
};

constexpr int64_t kMicroBatches = 2;
constexpr double kClip = 100.0;
const train::AdamWOptions kAdamW{0.9, 0.95, 1e-8, 0.1};

double lr_of(int64_t step) { return 1e-2 / static_cast<double>(step + 1); }
// Steps 0 and 2 draw gradients of norm ~1e3 (clipped to kClip), step 1 of ~10 (not clipped).
double scale_of(int64_t step) { return step % 2 == 1 ? 0.01 : 1.0; }

std::unique_ptr<model::LlamaModel> make_model(uint64_t seed = 7) {
  model::ModelOptions mo;
  mo.master_dtype = at::kDouble;
  mo.compute_dtype = at::kDouble;
  mo.seed = seed;
  auto config = model::resolve_model("tiny");
  config.layers = 3;  // three: a third gathered layer can be asked for
  return std::make_unique<model::LlamaModel>(config, mo);
}

// Rank `rank`'s gradient of micro-batch `micro` at `step`, added into `grads`.
void add_gradients(model::ModelWeights& grads, int64_t step, int64_t micro, int rank) {
  auto gen = at::detail::createCPUGenerator(1000003ull * static_cast<uint64_t>(step) + 1009ull * static_cast<uint64_t>(micro) +
                                            static_cast<uint64_t>(rank) + 17);
  for (auto& [name, t] : grads.named())
    t->add_(at::randn(t->sizes(), gen, t->options()) * scale_of(step));
}

// The unsharded run every rank computes: the model, its AdamW, and the step
// norms, advanced one step at a time with the gradients of every rank.
struct Reference {
  std::unique_ptr<model::LlamaModel> model = make_model();
  std::unique_ptr<train::AdamW> adamw;
  std::vector<at::Tensor*> grads;
  int world = 1;

  explicit Reference(int world_size) : world(world_size) {
    std::vector<at::Tensor*> params;
    for (auto& [name, t] : model->master().named()) params.push_back(t);
    for (auto& [name, t] : model->grads().named()) grads.push_back(t);
    adamw = std::make_unique<train::AdamW>(params, grads, kAdamW);
  }
  // Returns the gradients' global norm before clipping.
  double step(int64_t t) {
    model->zero_grads();
    for (int64_t m = 0; m < kMicroBatches; ++m)
      for (int r = 0; r < world; ++r) add_gradients(model->grads(), t, m, r);
    const double norm = train::clip_grad_norm(grads, kClip);
    adamw->step(lr_of(t));
    return norm;
  }
};

double relative_difference(const at::Tensor& got, const at::Tensor& want) {
  const double scale = std::max(want.abs().max().item<double>(), 1e-300);
  return (got - want).abs().max().item<double>() / scale;
}

void check_close(const at::Tensor& got, const at::Tensor& want, const std::string& what) {
  check(got.sizes() == want.sizes(), cat(what, ": shape differs"));
  const double d = relative_difference(got, want);
  check(d <= 1e-10, cat(what, " differs from the unsharded reference by ", d, " relative"));
}

// Walks the stage-3 source as the per-layer program does (forward: acquire i,
// prefetch i + 1, release i; backward the same downwards), checking each
// layer against `expected` when given.
void walk_layers(runtime::ShardedLayerWeights& source, model::ModelWeights* expected, const std::string& when) {
  const int64_t L = source.layers();
  source.prefetch(0);
  for (int64_t i = 0; i < L; ++i) {
    const auto& w = source.acquire(i);
    if (i + 1 < L) source.prefetch(i + 1);
    if (expected) {
      auto want = expected->layers[static_cast<size_t>(i)].named();
      auto got = w.named();
      for (size_t k = 0; k < got.size(); ++k)
        check_close(*got[k].second, *want[k].second, cat(when, ": forward layer ", i, " ", got[k].first));
    }
    source.release(i);
  }
  source.prefetch(L - 1);
  for (int64_t i = L - 1; i >= 0; --i) {
    const auto& w = source.acquire(i);
    if (i > 0) source.prefetch(i - 1);
    if (expected)
      check_close(w.wqkv, expected->layers[static_cast<size_t>(i)].wqkv, cat(when, ": backward layer ", i, " wqkv"));
    source.release(i);
  }
}

// The sharded run: the model (whole weights, the same seed as the
// reference), the ZeRO optimizer and, under stage 3, the weight source.
struct Sharded {
  dist::Context& ctx;
  int stage;
  std::unique_ptr<model::LlamaModel> model;
  std::unique_ptr<train::ZeroOptimizer> zero;
  std::unique_ptr<runtime::ShardedLayerWeights> source;

  Sharded(dist::Context& c, int s, uint64_t seed = 7) : ctx(c), stage(s), model(make_model(seed)) {
    zero = std::make_unique<train::ZeroOptimizer>(ctx.world(), model->master(), stage, kAdamW);
    if (stage == 3) source = std::make_unique<runtime::ShardedLayerWeights>(ctx.world(), model->compute().layers);
  }

  // One step; returns the global norm the optimizer computed.
  double step(int64_t t) {
    auto& grads = model->grads();
    for (int64_t m = 0; m < kMicroBatches; ++m) {
      if (stage == 1) {  // gradients accumulate whole; one reduce-scatter of every unit after the last
        add_gradients(grads, t, m, ctx.rank());
        continue;
      }
      model->zero_grads();
      add_gradients(grads, t, m, ctx.rank());
      if (source) walk_layers(*source, nullptr, "");
      // As the on_layer_gradients hook sees them: the last layer first.
      for (int64_t l = zero->layers() - 1; l >= 0; --l) zero->reduce_layer(l, grads.layers[static_cast<size_t>(l)]);
      zero->reduce_rest(grads);
    }
    if (stage == 1) zero->reduce_all(grads);
    model->zero_grads();
    const double norm = zero->grad_norm().item<double>();
    const double factor = train::clip_factor(norm, kClip);
    if (factor != 1.0) zero->scale_grads(factor);
    zero->step(lr_of(t));
    zero->publish(model->compute(), source.get());
    return norm;
  }

  // Every weight where forward and backward read it, against the reference's master weights.
  void check_weights(Reference& ref, const std::string& when) {
    auto want = ref.model->master().named();
    auto got = const_cast<model::ModelWeights&>(model->compute()).named();  // read only
    for (size_t i = 0; i < got.size(); ++i) {
      if (stage == 3 && got[i].first.starts_with("layers.")) continue;  // in the source
      check_close(*got[i].second, *want[i].second, cat(when, ": ", got[i].first));
    }
    if (source) walk_layers(*source, &ref.model->master(), when);
  }
};

// The CPU meter's allocated bytes once they stop changing: Gloo's worker
// thread drops its reference to a finished collective (and its staging) just
// after the wait returns. Stable for 200 ms, at most 5 s.
int64_t settled_allocated() {
  int64_t last = memory::memory_stats(at::kCPU).allocated;
  int stable = 0;
  for (int i = 0; i < 1000 && stable < 40; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    const int64_t now = memory::memory_stats(at::kCPU).allocated;
    stable = now == last ? stable + 1 : 0;
    last = now;
  }
  return last;
}

// The allocated bytes once they equal `target` (Gloo's staging freed), or
// what they are after 5 s.
int64_t allocated_reaching(int64_t target) {
  int64_t now = memory::memory_stats(at::kCPU).allocated;
  for (int i = 0; i < 1000 && now != target; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    now = memory::memory_stats(at::kCPU).allocated;
  }
  return now;
}

void optimizer(dist::Context& ctx, const Args& a) {
  Reference ref(ctx.world_size());
  Sharded run(ctx, a.stage);
  int clipped = 0;
  for (int64_t t = 0; t < a.steps; ++t) {
    const double want = ref.step(t);
    const double got = run.step(t);
    check(std::abs(got - want) <= 1e-10 * want, cat("step ", t, ": global norm ", got, ", reference ", want));
    clipped += train::clip_factor(want, kClip) != 1.0;
    run.check_weights(ref, cat("step ", t));
  }
  check(clipped > 0 && clipped < a.steps, cat("clipping applied in ", clipped, " of ", a.steps, " steps"));
  check(run.zero->steps_taken() == a.steps, "steps taken");

  if (run.source) {
    // Bytes: one layer's gather moves zero_collective_bytes of its numel, the
    // plan's count for it too.
    auto& source = *run.source;
    const int world = ctx.world_size();
    const int64_t layer_numel = source.layout().numel();
    const auto shape = model::to_plan_shape(run.model->config());
    check(layer_numel == plan::zero_layer_numel(shape),
          cat("layer numel ", layer_numel, ", the plan's ", plan::zero_layer_numel(shape)));
    const int64_t per_layer = dist::zero_collective_bytes(layer_numel, world, 8);
    check(per_layer == plan::zero_collective_bytes(layer_numel, world, 8), "the plan's bytes of one layer's gather");
    ctx.stats().reset();
    const int64_t gathers_before = source.gathers();
    // The memory meter: gathered buffers alive at once, counted by the CPU allocator.
    const int64_t base = settled_allocated();  // no gather's staging left alive
    memory::reset_peak_memory(at::kCPU);
    source.reset_peak();
    walk_layers(source, nullptr, "");
    const int64_t peak = memory::memory_stats(at::kCPU).peak_allocated - base;
    const int64_t L = source.layers();
    const auto gathered = ctx.stats().get(dist::Collective::AllGather);
    check(source.gathers() - gathers_before == 2 * L, cat("gathers in a forward and backward: ", source.gathers() - gathers_before));
    check(gathered.calls == 2 * L && gathered.bytes_sent == 2 * L * per_layer &&
              gathered.bytes_received == 2 * L * per_layer,
          cat("all-gather bytes of a forward and backward ", gathered.bytes_sent, " in ", gathered.calls,
              " calls, expected ", 2 * L * per_layer, " in ", 2 * L));
    check(source.peak_gathered_bytes() == 2 * source.layer_bytes(),
          cat("peak gathered ", source.peak_gathered_bytes(), " bytes, two layers are ", 2 * source.layer_bytes()));
    // The meter over the walk sees the two gathered layers plus Gloo's own
    // staging: ProcessGroupGloo's all-gather receives into a flat temporary
    // of the output's size and copies it out, and its worker thread drops it
    // just after the wait returns, so up to one per Gloo worker thread (two)
    // may be alive (NCCL writes in place). A source that kept its layers
    // would hold all 2 L = 6 gathered here.
    const int64_t layer = source.layer_bytes(), gloo_staging = 2 * layer;
    check(peak >= 2 * layer && peak <= 2 * layer + gloo_staging,
          cat("the memory meter's peak over the walk ", peak, " bytes; two layers are ", 2 * layer,
              ", Gloo's staging at most two more"));
    const int64_t after = allocated_reaching(base) - base;
    check(after == 0 && source.gathered_bytes() == 0,
          cat("a gathered layer outlived its release: ", after, " bytes more allocated"));
    // Exactly, at quiet points (Gloo's staging settled): two layers gathered
    // at once are two layers resident, one released leaves one, none none.
    (void)source.acquire(0);
    source.prefetch(1);
    (void)source.acquire(1);
    const int64_t two = allocated_reaching(base + 2 * layer) - base;
    source.release(0);
    const int64_t one = allocated_reaching(base + layer) - base;
    source.release(1);
    const int64_t none = allocated_reaching(base) - base;
    check(two == 2 * layer && one == layer && none == 0,
          cat("resident bytes with two, one and no layers gathered: ", two, ", ", one, ", ", none, "; a layer is ", layer));
    // A third layer at once is refused.
    source.prefetch(0);
    source.prefetch(1);
    bool refused = false;
    try {
      source.prefetch(2);
    } catch (const Error& e) {
      refused = std::string(e.what()).find("at most two at once") != std::string::npos;
    }
    source.release(0);
    source.release(1);
    check(refused, "a third gathered layer was not refused");
  }
  std::printf("rank %d: optimizer ok (stage %d, %s, %lld steps)\n", g_rank, a.stage, ctx.mesh().describe().c_str(),
              static_cast<long long>(a.steps));
}

std::unique_ptr<train::DataSource> make_data() { return train::make_synthetic_source({256, 0, 5}, 16); }

// The options a checkpoint must agree on: every field of the resume contract, fixed.
nlohmann::json run_info() {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& [pointer, flag] : train::resume_contract()) j[nlohmann::json::json_pointer(pointer)] = "test";
  return j;
}

void ckpt_save(dist::Context& ctx, const Args& a) {
  Reference ref(ctx.world_size());
  Sharded run(ctx, a.stage);
  auto data = make_data();
  for (int64_t t = 0; t < a.steps; ++t) {
    ref.step(t);
    run.step(t);
    (void)data->next(1, 16);
  }
  run.check_weights(ref, "before saving");
  const auto dir = train::save_sharded_checkpoint(ctx.world(), a.dir, a.steps, *run.model, *run.zero, *data,
                                                  run_info(), 0, 1.0);
  std::printf("rank %d: saved %s\n", g_rank, dir.c_str());
}

void ckpt_load(dist::Context& ctx, const Args& a) {
  // The gradients of the run that wrote the checkpoint came from its world.
  const int writer_world = a.writer_world > 0 ? a.writer_world : ctx.world_size();
  Reference ref(writer_world);
  for (int64_t t = 0; t < a.steps; ++t) ref.step(t);
  auto data = make_data();
  const auto dir = train::find_checkpoint(a.dir);
  auto want = ref.model->master().named();
  if (a.stage == 0) {  // today's single-process code
    auto model = make_model(99);
    std::vector<at::Tensor*> params, grads;
    for (auto& [name, t] : model->master().named()) params.push_back(t);
    for (auto& [name, t] : model->grads().named()) grads.push_back(t);
    train::AdamW adamw(params, grads, kAdamW);
    check(train::load_checkpoint(dir, *model, adamw, *data, run_info()) == a.steps, "the checkpoint's step");
    check(adamw.steps_taken() == a.steps, "AdamW steps after load");
    auto got = model->master().named();
    for (size_t i = 0; i < got.size(); ++i) {
      check_close(*got[i].second, *want[i].second, cat("loaded ", got[i].first));
      check_close(adamw.first_moments()[i], ref.adamw->first_moments()[i], cat("loaded m of ", got[i].first));
      check_close(adamw.second_moments()[i], ref.adamw->second_moments()[i], cat("loaded v of ", got[i].first));
    }
    std::printf("rank %d: loaded unsharded (%s)\n", g_rank, dir.c_str());
    return;
  }
  Sharded run(ctx, a.stage, 99);  // other weights: the load must replace them
  check(train::load_into_shards(dir, *run.model, *run.zero, *data, run_info(), run.source.get()) == a.steps,
        "the checkpoint's step");
  check(run.zero->steps_taken() == a.steps, "AdamW steps after load");
  // Every unit's shards gathered whole: the reference's state.
  auto& master = run.model->master();
  const auto named = master.named();
  const auto units = train::zero_units(master);
  for (int64_t u = 0; u < run.zero->units(); ++u) {
    for (auto which : {train::ZeroOptimizer::State::Master, train::ZeroOptimizer::State::FirstMoment,
                       train::ZeroOptimizer::State::SecondMoment}) {
      std::vector<at::Tensor> whole;
      std::vector<at::Tensor*> out;
      for (size_t i : units[static_cast<size_t>(u)]) whole.push_back(at::empty_like(*named[i].second));
      for (auto& t : whole) out.push_back(&t);
      run.zero->gather_unit(u, which, out);
      for (size_t k = 0; k < whole.size(); ++k) {
        const size_t i = units[static_cast<size_t>(u)][k];
        const auto& expected = which == train::ZeroOptimizer::State::Master ? *want[i].second
                               : which == train::ZeroOptimizer::State::FirstMoment ? ref.adamw->first_moments()[i]
                                                                                 : ref.adamw->second_moments()[i];
        check_close(whole[k], expected, cat("loaded state ", static_cast<int>(which), " of ", named[i].first));
      }
    }
  }
  // One more step continues the reference's trajectory (this world's
  // gradients: the reference takes them from as many ranks).
  Reference next(ctx.world_size());
  {
    auto src = ref.model->master().named();
    auto dst = next.model->master().named();
    for (size_t i = 0; i < src.size(); ++i) dst[i].second->copy_(*src[i].second);
    for (size_t i = 0; i < src.size(); ++i) {
      next.adamw->first_moments()[i].copy_(ref.adamw->first_moments()[i]);
      next.adamw->second_moments()[i].copy_(ref.adamw->second_moments()[i]);
    }
    next.adamw->set_steps_taken(a.steps);
  }
  const double want_norm = next.step(a.steps);
  const double got_norm = run.step(a.steps);
  check(std::abs(got_norm - want_norm) <= 1e-10 * want_norm, "the norm of the step after the load");
  run.check_weights(next, "the step after the load");
  std::printf("rank %d: loaded into shards (stage %d, %s)\n", g_rank, a.stage, ctx.mesh().describe().c_str());
}

void ckpt_crash(dist::Context& ctx, const Args& a) {
  Sharded run(ctx, a.stage);
  auto data = make_data();
  run.step(0);
  train::save_sharded_checkpoint(ctx.world(), a.dir, 1, *run.model, *run.zero, *data, run_info(), 0, 1.0);
  run.step(1);
  std::unique_ptr<std::thread> watcher;
  std::atomic<bool> done{false};
  if (ctx.rank() == a.victim) {
    std::printf("rank %d: dies during the second save\n", g_rank);
    std::fflush(stdout);
    if (a.victim == 0) {  // the writer: killed by SIGXFSZ once a file passes 4 KiB
      const rlimit none{0, 0}, small{4096, 4096};
      ::setrlimit(RLIMIT_CORE, &none);
      ::setrlimit(RLIMIT_FSIZE, &small);
    } else {  // another rank: once it has issued the save's first all-gather (of 3 per unit)
      const int64_t start = ctx.stats().get(dist::Collective::AllGather).calls;
      watcher = std::make_unique<std::thread>([&ctx, start, &done] {
        while (!done) {
          if (ctx.stats().get(dist::Collective::AllGather).calls > start) std::_Exit(9);
          std::this_thread::sleep_for(std::chrono::microseconds(100));
        }
      });
    }
  }
  train::save_sharded_checkpoint(ctx.world(), a.dir, 2, *run.model, *run.zero, *data, run_info(), 0, 1.0);
  done = true;
  if (watcher) watcher->join();
  std::printf("rank %d: the second save finished although rank %d died\n", g_rank, a.victim);
  std::fflush(stdout);
  std::_Exit(4);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: memo_zero_worker SCENARIO --stage S [--sp N] [--steps K] [--dir D] [--victim R]\n");
    return 2;
  }
  Args a;
  a.scenario = argv[1];
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--stage") a.stage = std::atoi(argv[i + 1]);
    else if (flag == "--sp") a.sp = std::atoll(argv[i + 1]);
    else if (flag == "--steps") a.steps = std::atoll(argv[i + 1]);
    else if (flag == "--dir") a.dir = argv[i + 1];
    else if (flag == "--victim") a.victim = std::atoi(argv[i + 1]);
    else if (flag == "--writer-world") a.writer_world = std::atoi(argv[i + 1]);
    else if (flag == "--timeout-ms") a.timeout_ms = std::atoll(argv[i + 1]);
  }
  at::set_num_threads(1);
  memory::install_cpu_memory_meter();
  try {
    const dist::LaunchInfo launch = dist::launch_from_environment();
    g_rank = launch.rank;
    const dist::MeshShape mesh = dist::check_mesh(launch.world_size, a.sp, {});
    dist::ContextOptions options;
    options.timeout = std::chrono::milliseconds(a.timeout_ms);
    options.agreement = a.scenario;
    dist::Context ctx(launch, mesh, options);
    if (a.scenario == "optimizer") optimizer(ctx, a);
    else if (a.scenario == "ckpt-save") ckpt_save(ctx, a);
    else if (a.scenario == "ckpt-load") ckpt_load(ctx, a);
    else if (a.scenario == "ckpt-crash") ckpt_crash(ctx, a);
    else throw InputError(cat("unknown scenario ", a.scenario));
    std::fflush(stdout);
    return 0;
  } catch (const CheckFailed& e) {
    std::printf("rank %d: CHECK FAILED: %s\n", g_rank, e.what());
    return 3;
  } catch (const InputError& e) {
    std::printf("rank %d: input error: %s\n", g_rank, e.what());
    return 2;
  } catch (const std::exception& e) {
    std::printf("rank %d: error: %s\n", g_rank, e.what());
    return 1;
  }
}
