// memo_dist_worker: one rank of a multi-rank test (tests/test_dist_ranks.cpp
// starts 2 or 4 of them with RANK/WORLD_SIZE/MASTER_*, or torchrun does).
//
//   memo_dist_worker SCENARIO [--sp N] [--timeout-ms T] [--victim R]
//
// Scenarios (each checks its results itself and exits 0 when they hold):
//   layouts      Ulysses token <-> head layouts in float64 against the same
//                seeded full tensor sliced locally; GQA split and replicated kv
//                heads; attention on head layout equals attention on the full
//                tensor; the all-to-all bytes equal ulysses_layer_bytes
//   collectives  bf16 all_gather / reduce_scatter, fp32 all_reduce (sum, max),
//                broadcast, uneven all_to_all, ZeRO shards with padding, async
//                issue then waits in reverse order, bytes by kind
//   die          the victim dies with an all_to_all in flight
//   hang         the victim sleeps instead of its next collective
//   freeze       the victim stops itself (SIGSTOP) before its next collective
// Exit codes as memo's: 0 ok, 1 a runtime/communication error, 2 bad input;
// 3 a check failed.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <csignal>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "dist/comm.h"
#include "dist/context.h"
#include "dist/launch.h"
#include "dist/mesh.h"
#include "dist/ulysses.h"
#include "dist/zero.h"

namespace {

using memo::cat;
using namespace memo::dist;

int g_rank = 0;

struct CheckFailed : std::runtime_error {
  using std::runtime_error::runtime_error;
};

void check(bool ok, const std::string& what) {
  if (!ok) throw CheckFailed(what);
}

at::Tensor seeded(std::vector<int64_t> shape, uint64_t seed, at::ScalarType dtype = at::kDouble) {
  auto gen = at::detail::createCPUGenerator(seed);
  return at::randn(shape, gen, at::TensorOptions().dtype(dtype));
}

// Integer-valued float64 in [-1000, 1000): sums of these are exact in any order.
at::Tensor integers(std::vector<int64_t> shape, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  return at::randint(-1000, 1000, shape, gen, at::TensorOptions().dtype(at::kDouble));
}

// Causal softmax attention, heads grouped: q [B, S, Hq, d], k/v [B, S, Hk, d],
// query head i reads kv head kv_of(i). -> [B, S, Hq, d]
template <typename KvOf>
at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, KvOf kv_of) {
  const int64_t S = q.size(1), d = q.size(3);
  std::vector<at::Tensor> heads;
  const auto mask = at::ones({S, S}, at::kBool).triu(1);
  for (int64_t i = 0; i < q.size(2); ++i) {
    const auto qi = q.select(2, i);           // [B, S, d]
    const auto ki = k.select(2, kv_of(i));    // [B, S, d]
    const auto vi = v.select(2, kv_of(i));
    auto scores = at::matmul(qi, ki.transpose(1, 2)) / std::sqrt(static_cast<double>(d));  // [B, S, S]
    scores = scores.masked_fill(mask, -INFINITY);
    heads.push_back(at::matmul(at::softmax(scores, -1), vi));  // [B, S, d]
  }
  return at::stack(heads, 2);
}

void layouts(Context& ctx) {
  Group& sp = ctx.sp();
  const int64_t n = sp.size(), me = sp.rank();
  const int64_t B = 2, S = 4 * n, H = 4, d = 3;
  const int64_t local = S / n;
  const uint64_t seed = 1000 + 10 * static_cast<uint64_t>(ctx.coords().dp_index);  // each dp replica its own data
  const auto tokens = [&](const at::Tensor& full) { return full.narrow(1, me * local, local).contiguous(); };
  ctx.stats().reset();

  // q: split heads, there and back.
  const auto Q = seeded({B, S, H, d}, seed);  // [B, S, H, d], the same on every rank of the sp group
  const auto q_heads = tokens_to_heads(sp, tokens(Q));  // [B, S, H/sp, d]
  check(at::equal(q_heads, Q.narrow(2, me * H / n, H / n)), "q in head layout is not the full q's heads of this rank");
  check(at::equal(heads_to_tokens(sp, q_heads, H), tokens(Q)), "q back in token layout differs");
  // The head shards gathered over the sp group are the single-process tensor.
  auto gathered = at::empty({n * q_heads.numel()}, q_heads.options());  // [sp * B * S * H/sp * d]
  sp.all_gather(gathered, q_heads.contiguous()).wait();
  check(at::equal(gathered.view({n, B, S, H / n, d}).permute({1, 2, 0, 3, 4}).reshape({B, S, H, d}), Q),
        "q's head shards gathered over the sp group differ from the single-process q");

  for (const int64_t Hkv : {int64_t{2}, int64_t{1}}) {
    if (Hkv % n != 0 && n % Hkv != 0) continue;
    const auto K = seeded({B, S, Hkv, d}, seed + 1 + Hkv), V = seeded({B, S, Hkv, d}, seed + 3 + Hkv);
    const auto k_heads = tokens_to_heads(sp, tokens(K)), v_heads = tokens_to_heads(sp, tokens(V));
    const bool replicated = kv_sharding(Hkv, n) == KvSharding::Replicated;
    const auto expected_k = replicated ? K.narrow(2, me * Hkv / n, 1) : K.narrow(2, me * Hkv / n, Hkv / n);
    check(at::equal(k_heads, expected_k), cat("k (", Hkv, " kv heads, sp ", n, ") in head layout differs"));

    // Attention on this rank's heads of whole sequences, then o back to tokens,
    // equals attention on the full tensors at this rank's tokens.
    const int64_t q_local = H / n, group = H / Hkv;
    const auto o_heads = attention(q_heads, k_heads, v_heads, [&](int64_t i) {
      const int64_t kv_global = (me * q_local + i) / group;
      return replicated ? int64_t{0} : kv_global - me * Hkv / n;
    });
    const auto o = heads_to_tokens(sp, o_heads, H);  // [B, S/sp, H, d]
    const auto o_ref = attention(Q, K, V, [&](int64_t i) { return i / group; });
    check(at::allclose(o, tokens(o_ref), 1e-12, 1e-12), cat("Ulysses attention (", Hkv, " kv heads) differs from the full"));

    // The way back of replicated heads sums the replicas: rank j's gradient
    // for its head j*Hkv/sp, seeded by j, summed per head at this rank's tokens.
    std::vector<at::Tensor> grads;  // [B, S, local kv heads, d] of every rank j
    for (int64_t j = 0; j < n; ++j)  // integer-valued: the replicas' sum is exact in any order
      grads.push_back(integers({B, S, local_heads(Hkv, n), d}, seed + 50 + static_cast<uint64_t>(j)));
    const auto dk = heads_to_tokens(sp, grads[static_cast<size_t>(me)], Hkv);  // [B, S/sp, Hkv, d]
    auto expected = at::zeros({B, S, Hkv, d}, at::kDouble);
    for (int64_t j = 0; j < n; ++j) {
      if (replicated)
        expected.narrow(2, j * Hkv / n, 1).add_(grads[static_cast<size_t>(j)]);
      else
        expected.narrow(2, j * Hkv / n, Hkv / n).copy_(grads[static_cast<size_t>(j)]);
    }
    check(at::equal(dk, tokens(expected)), cat("dk (", Hkv, " kv heads) back in token layout differs"));
    // Gathered over the sp group: the single-process dk.
    auto dk_all = at::empty({n * dk.numel()}, at::kDouble);  // [sp * B * S/sp * Hkv * d]
    sp.all_gather(dk_all, dk.contiguous()).wait();
    check(at::equal(dk_all.view({n, B, local, Hkv, d}).permute({1, 0, 2, 3, 4}).reshape({B, S, Hkv, d}), expected),
          cat("dk (", Hkv, " kv heads) gathered over the sp group differs from the single-process sum"));
  }

  // Bytes of one layer: forward q, k, v in and o out; backward d_o in, dq, dk, dv out.
  if (n % 2 == 0 || n == 1) {
    const int64_t Hkv = 2;
    ctx.stats().reset();
    const auto x = tokens(Q);
    const auto kv = tokens(seeded({B, S, Hkv, d}, seed + 7));
    const auto qh = tokens_to_heads(sp, x), kh = tokens_to_heads(sp, kv), vh = tokens_to_heads(sp, kv);
    (void)heads_to_tokens(sp, qh, H);    // o
    (void)tokens_to_heads(sp, x);        // d_o
    (void)heads_to_tokens(sp, qh, H);    // dq
    (void)heads_to_tokens(sp, kh, Hkv);  // dk
    (void)heads_to_tokens(sp, vh, Hkv);  // dv
    const auto expected = ulysses_layer_bytes(B, S, H, Hkv, d, n, 8);
    const auto got = ctx.stats().get(Collective::AllToAll);
    // Independently: each all-to-all sends all but this rank's 1/n of a token-layout tensor.
    const int64_t q_bytes = B * local * H * d * 8, kv_bytes = B * local * std::max(Hkv, n) * d * 8;
    const int64_t by_hand = 4 * (q_bytes - q_bytes / n) + 4 * (kv_bytes - kv_bytes / n);
    check(got.calls == 8, cat("8 all-to-alls expected, counted ", got.calls));
    check(got.bytes_sent == expected.forward + expected.backward && got.bytes_sent == by_hand,
          cat("all-to-all bytes sent ", got.bytes_sent, ", ulysses_layer_bytes says ",
              expected.forward + expected.backward, ", by hand ", by_hand));
    check(got.bytes_received == got.bytes_sent, "all-to-all bytes received differ from sent");
  }
  std::printf("rank %d: layouts ok (%s, sp group %s)\n", g_rank, ctx.mesh().describe().c_str(), sp.name().c_str());
}

// Expected bytes per kind, by the definitions in comm.h.
void collectives(Context& ctx) {
  Group& world = ctx.world();
  const int64_t n = world.size(), me = world.rank();
  auto bf16 = at::TensorOptions().dtype(at::kBFloat16);
  ctx.stats().reset();

  // bf16 all_gather (small integers: exact in bf16).
  const int64_t shard = 8;
  auto mine = (at::arange(shard, at::kFloat) + 8 * me).to(at::kBFloat16);  // [8]
  auto gathered = at::empty({n * shard}, bf16);
  // bf16 reduce_scatter: rank r contributes (r + 1) * (j % 16) at index j.
  auto contribution = (at::arange(n * shard, at::kFloat).remainder(16) * (me + 1)).to(at::kBFloat16);  // [n * 8]
  auto reduced = at::empty({shard}, bf16);
  // Both in flight at once, waited in reverse order.
  Work w1 = world.all_gather(gathered, mine);
  Work w2 = world.reduce_scatter(reduced, contribution);
  w2.wait();
  w1.wait();
  check(at::equal(gathered.to(at::kFloat), at::arange(n * shard, at::kFloat)), "bf16 all_gather");
  const auto scale = static_cast<double>(n * (n + 1) / 2);
  check(at::equal(reduced.to(at::kFloat),
                  at::arange(me * shard, (me + 1) * shard, at::kFloat).remainder(16) * scale),
        "bf16 reduce_scatter");

  // fp32 all_reduce, sum and max; broadcast from the last rank; barrier.
  auto t = at::full({5}, static_cast<double>(me + 1), at::kFloat);
  world.all_reduce(t).wait();
  check(at::equal(t, at::full({5}, scale, at::kFloat)), "fp32 all_reduce sum");
  auto m = at::full({5}, static_cast<double>(me), at::kFloat);
  world.all_reduce(m, ReduceOp::Max).wait();
  check(at::equal(m, at::full({5}, static_cast<double>(n - 1), at::kFloat)), "fp32 all_reduce max");
  auto b = me == n - 1 ? at::arange(6, at::kFloat) : at::zeros({6}, at::kFloat);
  world.broadcast(b, static_cast<int>(n - 1)).wait();
  check(at::equal(b, at::arange(6, at::kFloat)), "broadcast");
  world.barrier().wait();

  // Uneven all_to_all: rank i sends (i + j) % 3 + 1 rows of 5 to rank j,
  // each row encoding (source, destination, row).
  std::vector<int64_t> in_splits, out_splits;
  for (int64_t j = 0; j < n; ++j) in_splits.push_back((me + j) % 3 + 1);
  for (int64_t i = 0; i < n; ++i) out_splits.push_back((i + me) % 3 + 1);
  std::vector<at::Tensor> rows_in, rows_expected;
  for (int64_t j = 0; j < n; ++j)
    for (int64_t k = 0; k < in_splits[static_cast<size_t>(j)]; ++k)
      rows_in.push_back(at::full({1, 5}, static_cast<double>(100 * me + 10 * j + k), at::kFloat));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < out_splits[static_cast<size_t>(i)]; ++k)
      rows_expected.push_back(at::full({1, 5}, static_cast<double>(100 * i + 10 * me + k), at::kFloat));
  const auto in = at::cat(rows_in), expected = at::cat(rows_expected);  // [rows, 5]
  auto out = at::empty_like(expected);
  world.all_to_all(out, in, out_splits, in_splits).wait();
  check(at::equal(out, expected), "uneven all_to_all");

  // ZeRO in float64: a flat buffer of 37 (padded to n x ceil(37 / n)). The
  // gathered shards are the single-process buffer; the reduce-scattered
  // shard is this rank's slice of the single-process sum of every rank's
  // gradient (integer-valued, so the sum is exact in any order).
  const int64_t numel = 37;
  const FlatShard fs = flat_shard(numel, static_cast<int>(n), static_cast<int>(me));
  check(fs.padded == n * fs.shard && fs.padded >= numel && fs.padded < numel + n, "flat_shard padding");
  const auto padded = [&](const at::Tensor& flat) {  // [numel] -> [padded], zeros after
    return at::cat({flat, at::zeros({fs.padded - numel}, flat.options())});
  };
  const auto weights = padded(seeded({numel}, 77));  // [padded], the same on every rank
  const auto own = weights.narrow(0, me * fs.shard, fs.shard).clone();  // [shard]
  auto full = at::empty({fs.padded}, at::kDouble);
  gather_shards(world, full, own).wait();
  check(at::equal(full, weights), "ZeRO gather_shards differs from the single-process buffer");
  auto grad_sum = at::zeros({fs.padded}, at::kDouble);  // [padded]: the single-process sum
  for (int64_t r = 0; r < n; ++r) grad_sum.add_(padded(integers({numel}, 500 + static_cast<uint64_t>(r))));
  const auto my_grad = padded(integers({numel}, 500 + static_cast<uint64_t>(me)));  // [padded]
  auto grad_shard = at::empty({fs.shard}, at::kDouble);
  reduce_scatter_shards(world, grad_shard, my_grad).wait();
  check(at::equal(grad_shard, grad_sum.narrow(0, me * fs.shard, fs.shard)),
        "ZeRO reduce_scatter_shards differs from the single-process sum");
  // The shards gathered again are the whole single-process sum.
  auto summed = at::empty({fs.padded}, at::kDouble);
  gather_shards(world, summed, grad_shard).wait();
  check(at::equal(summed, grad_sum), "ZeRO reduce-scattered shards gathered differ from the single-process sum");

  // Bytes by kind, from the definitions in comm.h.
  const auto get = [&](Collective k) { return ctx.stats().get(k); };
  const int64_t zero = zero_collective_bytes(numel, static_cast<int>(n), 8);
  check(zero == (n - 1) * ((numel + n - 1) / n) * 8, "zero_collective_bytes");
  const int64_t ag = (n - 1) * shard * 2 + 2 * zero;  // bf16 gather + two ZeRO gathers
  const int64_t rs = (n - 1) * shard * 2 + zero;
  check(get(Collective::AllGather).calls == 3 && get(Collective::AllGather).bytes_sent == ag &&
            get(Collective::AllGather).bytes_received == ag,
        cat("all_gather bytes ", get(Collective::AllGather).bytes_sent, " expected ", ag));
  check(get(Collective::ReduceScatter).calls == 2 && get(Collective::ReduceScatter).bytes_sent == rs,
        cat("reduce_scatter bytes ", get(Collective::ReduceScatter).bytes_sent, " expected ", rs));
  const int64_t ar = 2 * (2 * (n - 1) * 20 / n);
  check(get(Collective::AllReduce).calls == 2 && get(Collective::AllReduce).bytes_sent == ar,
        cat("all_reduce bytes ", get(Collective::AllReduce).bytes_sent, " expected ", ar));
  const bool root = me == n - 1;
  check(get(Collective::Broadcast).bytes_sent == (root ? 24 : 0) &&
            get(Collective::Broadcast).bytes_received == (root ? 0 : 24),
        "broadcast bytes");
  int64_t a2a_sent = 0, a2a_received = 0;
  for (int64_t j = 0; j < n; ++j)
    if (j != me) a2a_sent += in_splits[static_cast<size_t>(j)] * 20, a2a_received += out_splits[static_cast<size_t>(j)] * 20;
  check(get(Collective::AllToAll).bytes_sent == a2a_sent && get(Collective::AllToAll).bytes_received == a2a_received,
        cat("all_to_all bytes ", get(Collective::AllToAll).bytes_sent, " expected ", a2a_sent));
  check(get(Collective::Barrier).calls == 1 && get(Collective::Barrier).bytes_sent == 0, "barrier");
  const auto total = ctx.stats().total();
  check(total.calls == 10 && total.bytes_sent == ag + rs + ar + (root ? 24 : 0) + a2a_sent, "total bytes");
  ctx.stats().reset();
  check(ctx.stats().total().calls == 0 && ctx.stats().total().bytes_sent == 0, "reset");

  // Spans when tracing: one per waited collective.
  ctx.stats().set_tracing(true);
  world.barrier().wait();
  auto spans = ctx.stats().take_spans();
  check(spans.size() == 1 && spans[0].kind == Collective::Barrier && spans[0].group == "world" &&
            spans[0].completed >= spans[0].issued,
        "a traced barrier leaves one span");

  // The sp and dp groups: an all_reduce of the global rank over each.
  for (Group* g : {&ctx.sp(), &ctx.dp()}) {
    auto r = at::full({1}, static_cast<double>(ctx.rank()), at::kDouble);
    g->all_reduce(r).wait();
    double sum = 0;
    for (int x : g->ranks()) sum += x;
    check(r.item<double>() == sum, cat("all_reduce over ", g->name()));
  }
  std::printf("rank %d: collectives ok (%s, launcher %s, agent store %d, backend %s)\n", g_rank,
              ctx.mesh().describe().c_str(), ctx.launch().launcher.c_str(), ctx.launch().agent_store ? 1 : 0,
              ctx.backend_name().c_str());
}

// Three good all_reduces (collectives #2-#4: the join's barrier is #1), then
// the victim fails in the way named; the others wait in collective #5.
void failure(Context& ctx, const std::string& how, int victim) {
  Group& world = ctx.world();
  for (int i = 0; i < 3; ++i) {
    auto t = at::ones({4}, at::kFloat);
    world.all_reduce(t).wait();
  }
  if (ctx.rank() == victim) {
    std::printf("rank %d: %s now\n", g_rank, how.c_str());
    std::fflush(stdout);
    // Dies while the others wait in collective #5. (It used to issue its
    // all-to-all first: under load its sends could complete before the
    // exit, and a peer's collective then completed, so the test was flaky.)
    if (how == "die") std::_Exit(7);
    if (how == "freeze") std::raise(SIGSTOP);
    std::this_thread::sleep_for(std::chrono::seconds(600));  // hang
  }
  auto big_in = at::ones({world.size() * 1024 * 1024}, at::kFloat), big_out = at::empty_like(big_in);
  world.all_to_all(big_out, big_in).wait();
  std::printf("rank %d: the collective completed although rank %d failed\n", g_rank, victim);
  std::exit(3);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: memo_dist_worker SCENARIO [--sp N] [--timeout-ms T] [--victim R]\n");
    return 2;
  }
  const std::string scenario = argv[1];
  int64_t sp = 1, timeout_ms = 30000;
  int victim = -1;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--sp") sp = std::atoll(argv[i + 1]);
    else if (flag == "--timeout-ms") timeout_ms = std::atoll(argv[i + 1]);
    else if (flag == "--victim") victim = std::atoi(argv[i + 1]);
  }
  at::set_num_threads(1);
  try {
    const LaunchInfo launch = launch_from_environment();
    g_rank = launch.rank;
    if (victim < 0) victim = launch.world_size - 1;
    const MeshShape mesh = check_mesh(launch.world_size, sp, {});
    ContextOptions options;
    options.timeout = std::chrono::milliseconds(timeout_ms);
    options.agreement = scenario;
    Context ctx(launch, mesh, options);
    if (scenario == "layouts") layouts(ctx);
    else if (scenario == "collectives") collectives(ctx);
    else if (scenario == "die" || scenario == "hang" || scenario == "freeze") failure(ctx, scenario, victim);
    else throw memo::InputError(cat("unknown scenario ", scenario));
    std::fflush(stdout);
    return 0;
  } catch (const CheckFailed& e) {
    std::printf("rank %d: CHECK FAILED: %s\n", g_rank, e.what());
    return 3;
  } catch (const memo::InputError& e) {
    std::printf("rank %d: input error: %s\n", g_rank, e.what());
    return 2;
  } catch (const std::exception& e) {
    std::printf("rank %d: error: %s\n", g_rank, e.what());
    return 1;
  }
}
