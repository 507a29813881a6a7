// Chunked attention (model/chunked_attention.h) against the unchunked kernel
// call and against autograd over an explicit score matrix, in float64 on the
// CPU flash kernel: o, lse, dq, dk, dv for query chunks that do and do not
// divide the sequence, key blocks that do and do not divide the prefix, GQA
// and MQA, batch 1 and 3; the claim the backward rests on (a block's kernel
// backward with the merged o and lse gives that block's exact gradients); the
// merge's -inf rows; bfloat16 against float64; bad arguments; and the
// working set of one chunk, counted by the CPU memory meter.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "core/error.h"
#include "memory/device_memory.h"
#include "model/chunked_attention.h"
#include "model/ops.h"
#include "reference.h"

namespace memo {
namespace {

using model::AttentionKernel;
constexpr auto kCpu = AttentionKernel::CpuFlash;
constexpr double kInf = std::numeric_limits<double>::infinity();

struct Shape {
  int64_t B, S, nh, nkv, d;
};

// q, k, v [B, heads, S, d] as views into one token-major qkv tensor (as the
// decoder layer passes them), and an output gradient d_o [B, nh, S, d].
struct Inputs {
  at::Tensor qkv, q, k, v, d_o;
};

Inputs make_inputs(const Shape& s, uint64_t seed, at::ScalarType dtype = at::kDouble,
                   double scale = 1.0) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  Inputs in;
  in.qkv = at::normal(0.0, scale, {s.B, s.S, s.nh + 2 * s.nkv, s.d}, gen, f64).to(dtype);
  in.q = in.qkv.narrow(2, 0, s.nh).transpose(1, 2);
  in.k = in.qkv.narrow(2, s.nh, s.nkv).transpose(1, 2);
  in.v = in.qkv.narrow(2, s.nh + s.nkv, s.nkv).transpose(1, 2);
  in.d_o = at::normal(0.0, 1.0, {s.B, s.S, s.nh, s.d}, gen, f64).to(dtype).transpose(1, 2);
  return in;
}

// Scores of q [B, nh, n, d] against k [B, nkv, P, d], every query seeing every
// key, or (causal) query i of the last n positions seeing keys 0..P-n+i.
at::Tensor ref_scores(const at::Tensor& q, const at::Tensor& k, bool causal) {
  auto kk = k.repeat_interleave(q.size(1) / k.size(1), 1);
  auto scores = at::matmul(q, kk.transpose(-1, -2)) / std::sqrt(static_cast<double>(q.size(3)));
  if (!causal) return scores;
  const int64_t n = q.size(2), P = k.size(2);
  auto mask = at::ones({n, P}, q.options().dtype(at::kBool)).triu(P - n + 1);
  return scores.masked_fill(mask, -kInf);
}

struct Reference {
  at::Tensor o, lse, dq, dk, dv;
};

// Autograd over the explicit score matrix (tests/reference.h's mathematics).
Reference reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    const at::Tensor& d_o, bool causal) {
  auto qr = q.detach().clone().set_requires_grad(true);
  auto kr = k.detach().clone().set_requires_grad(true);
  auto vr = v.detach().clone().set_requires_grad(true);
  auto scores = ref_scores(qr, kr, causal);
  auto o = at::matmul(at::softmax(scores, -1), vr.repeat_interleave(q.size(1) / k.size(1), 1));
  o.backward(d_o);
  return {o.detach(), at::logsumexp(scores, -1).detach(), qr.grad(), kr.grad(), vr.grad()};
}

void expect_near(const at::Tensor& got, const at::Tensor& want, double tol, const std::string& what) {
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  EXPECT_LE(testing::max_rel_error(got, want), tol) << what;
}

std::string block_name(int64_t b) { return b == model::kWholePrefix ? "whole" : std::to_string(b); }

// Chunked o, lse, dq, dk, dv equal the unchunked kernel's and autograd's, for
// every chunk size (1, not dividing, dividing, S, > S) and key block.
TEST(ChunkedAttention, EqualsUnchunkedAndAutogradInFloat64) {
  for (const auto& s : {Shape{1, 16, 4, 2, 8}, Shape{3, 16, 4, 1, 4}, Shape{2, 13, 4, 4, 6}}) {
    const auto in = make_inputs(s, 17 + s.B + s.nkv);
    const auto whole = model::attention_forward(kCpu, in.q, in.k, in.v);
    const auto gw = model::attention_backward(kCpu, in.d_o, in.q, in.k, in.v, whole.o, whole.lse);
    const auto ref = reference(in.q, in.k, in.v, in.d_o, /*causal=*/true);
    // The unchunked kernel itself agrees with autograd (so the reference is a reference).
    expect_near(whole.o, ref.o, 1e-12, "unchunked o");
    expect_near(gw.dk, ref.dk, 1e-12, "unchunked dk");

    for (int64_t chunk : {int64_t{1}, int64_t{3}, int64_t{7}, int64_t{8}, s.S, s.S + 5}) {
      for (int64_t kv_block : {model::kWholePrefix, int64_t{1}, int64_t{3}, int64_t{4}}) {
        const std::string at_ = "B " + std::to_string(s.B) + " S " + std::to_string(s.S) + " nh " +
                                std::to_string(s.nh) + " nkv " + std::to_string(s.nkv) + " chunk " +
                                std::to_string(chunk) + " kv_block " + block_name(kv_block);
        auto out = model::chunked_attention_forward(kCpu, in.q, in.k, in.v, chunk, kv_block);
        expect_near(out.o, whole.o, 1e-10, "o vs unchunked, " + at_);
        expect_near(out.lse, whole.lse, 1e-10, "lse vs unchunked, " + at_);
        expect_near(out.o, ref.o, 1e-10, "o vs autograd, " + at_);
        expect_near(out.lse, ref.lse, 1e-10, "lse vs autograd, " + at_);
        auto g = model::chunked_attention_backward(kCpu, in.d_o, in.q, in.k, in.v, out.o, out.lse,
                                                   chunk, kv_block);
        expect_near(g.dq, gw.dq, 1e-10, "dq vs unchunked, " + at_);
        expect_near(g.dk, gw.dk, 1e-10, "dk vs unchunked, " + at_);
        expect_near(g.dv, gw.dv, 1e-10, "dv vs unchunked, " + at_);
        expect_near(g.dq, ref.dq, 1e-10, "dq vs autograd, " + at_);
        expect_near(g.dk, ref.dk, 1e-10, "dk vs autograd, " + at_);
        expect_near(g.dv, ref.dv, 1e-10, "dv vs autograd, " + at_);
        if (chunk >= s.S) {  // one chunk: the plain kernel call, bit for bit
          EXPECT_TRUE(at::equal(out.o, whole.o)) << at_;
          EXPECT_TRUE(at::equal(out.lse, whole.lse)) << at_;
          EXPECT_TRUE(at::equal(g.dq, gw.dq)) << at_;
        }
      }
    }
  }
}

// One chunk in the middle of the sequence, called directly: its rows of o and
// lse, its dq, and its share of dk, dv (zero beyond its prefix).
TEST(ChunkedAttention, OneChunkIsItsRowsOfTheWholeAndItsShareOfDkDv) {
  const Shape s{2, 20, 4, 2, 8};
  const auto in = make_inputs(s, 5);
  const int64_t t0 = 6, n = 5, P = t0 + n;
  auto q = in.q.narrow(2, t0, n);
  auto k = in.k.narrow(2, 0, P);
  auto v = in.v.narrow(2, 0, P);
  auto d_o = in.d_o.narrow(2, t0, n);
  // Autograd over the chunk's queries alone: the loss sum(o_chunk * d_o).
  const auto ref = reference(q, k, v, d_o, /*causal=*/true);
  for (int64_t kv_block : {model::kWholePrefix, int64_t{2}, int64_t{6}, int64_t{4}}) {
    const std::string at_ = "kv_block " + block_name(kv_block);
    auto out = model::attention_chunk_forward(kCpu, q, k, v, kv_block);
    expect_near(out.o, ref.o, 1e-10, "o, " + at_);
    expect_near(out.lse, ref.lse, 1e-10, "lse, " + at_);
    auto dk = at::zeros(k.sizes(), k.options());
    auto dv = at::zeros(v.sizes(), v.options());
    auto dq = model::attention_chunk_backward(kCpu, d_o, q, k, v, out.o, out.lse, dk, dv, kv_block);
    expect_near(dq, ref.dq, 1e-10, "dq, " + at_);
    expect_near(dk, ref.dk, 1e-10, "dk, " + at_);
    expect_near(dv, ref.dv, 1e-10, "dv, " + at_);
    // Accumulates: a second call adds the same again.
    model::attention_chunk_backward(kCpu, d_o, q, k, v, out.o, out.lse, dk, dv, kv_block);
    expect_near(dk, 2 * ref.dk, 1e-10, "dk twice, " + at_);
  }
}

// The CPU flash kernel takes non-causal blocks with fewer or more queries than
// keys, forward and backward, and agrees with autograd.
TEST(ChunkedAttention, CpuKernelTakesNonCausalRectangularBlocks) {
  using Sizes = std::pair<int64_t, int64_t>;  // queries, keys
  for (const auto& [n, P] : {Sizes{3, 11}, Sizes{9, 4}, Sizes{1, 1}, Sizes{5, 5}}) {
    const auto in = make_inputs(Shape{2, std::max(n, P), 4, 2, 8}, 31);
    auto q = in.q.narrow(2, 0, n);
    auto k = in.k.narrow(2, 0, P);
    auto v = in.v.narrow(2, 0, P);
    auto d_o = in.d_o.narrow(2, 0, n);
    const auto ref = reference(q, k, v, d_o, /*causal=*/false);
    auto out = model::attention_forward(kCpu, q, k, v, /*causal=*/false);
    const std::string at_ = "n " + std::to_string(n) + " P " + std::to_string(P);
    expect_near(out.o, ref.o, 1e-12, "o, " + at_);
    expect_near(out.lse, ref.lse, 1e-12, "lse, " + at_);
    auto g = model::attention_backward(kCpu, d_o, q, k, v, out.o, out.lse, /*causal=*/false);
    expect_near(g.dq, ref.dq, 1e-12, "dq, " + at_);
    expect_near(g.dk, ref.dk, 1e-12, "dk, " + at_);
    expect_near(g.dv, ref.dv, 1e-12, "dv, " + at_);
  }
}

// What the backward rests on: the kernel's backward over a block of keys,
// given o and lse of attention over all keys, returns that block's exact
// share of dq, dk, dv; given the block's own o and lse instead, it does not.
TEST(ChunkedAttention, BlockBackwardWithMergedOAndLseIsExact) {
  const auto in = make_inputs(Shape{1, 12, 4, 2, 8}, 43);
  const int64_t split = 5;
  const auto ref = reference(in.q, in.k, in.v, in.d_o, /*causal=*/false);
  auto whole = model::attention_forward(kCpu, in.q, in.k, in.v, /*causal=*/false);
  auto block = [&](const at::Tensor& t, int64_t part) {
    return part == 0 ? t.narrow(2, 0, split) : t.narrow(2, split, t.size(2) - split);
  };
  at::Tensor dq = at::zeros(in.q.sizes(), in.q.options());
  at::Tensor dq_own = dq.clone();
  for (int part : {0, 1}) {
    auto kb = block(in.k, part), vb = block(in.v, part);
    auto g = model::attention_backward(kCpu, in.d_o, in.q, kb, vb, whole.o, whole.lse, false);
    dq.add_(g.dq);
    expect_near(g.dk, block(ref.dk, part), 1e-12, "dk of block " + std::to_string(part));
    expect_near(g.dv, block(ref.dv, part), 1e-12, "dv of block " + std::to_string(part));
    // The negative control: the block's own (unmerged) o and lse.
    auto own = model::attention_forward(kCpu, in.q, kb, vb, false);
    dq_own.add_(model::attention_backward(kCpu, in.d_o, in.q, kb, vb, own.o, own.lse, false).dq);
  }
  expect_near(dq, ref.dq, 1e-12, "dq summed over blocks");
  EXPECT_GT(testing::max_rel_error(dq_own, ref.dq), 1e-2) << "unmerged o and lse should be wrong";
}

// The merge against logsumexp and the weighted sum written out, including
// rows where one or both sides are -inf (no key seen).
TEST(ChunkedAttention, MergeIsTheLogSumExpWeightedSumAndHandlesEmptyRows) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  auto o_a = at::normal(0.0, 1.0, {2, 3, 4, 5}, gen, f64);
  auto o_b = at::normal(0.0, 1.0, {2, 3, 4, 5}, gen, f64);
  auto lse_a = at::normal(0.0, 30.0, {2, 3, 4}, gen, f64);  // far apart: overflow if unshifted
  auto lse_b = at::normal(0.0, 30.0, {2, 3, 4}, gen, f64);
  lse_a.index_put_({0, 0, 0}, -kInf);  // only b saw keys
  lse_b.index_put_({0, 0, 1}, -kInf);  // only a saw keys
  lse_a.index_put_({1, 2, 3}, -kInf);  // neither
  lse_b.index_put_({1, 2, 3}, -kInf);
  o_a.index_put_({1, 2, 3}, 0.0);
  o_b.index_put_({1, 2, 3}, 0.0);

  auto lse_want = at::logsumexp(at::stack({lse_a, lse_b}), 0);  // -inf where both are
  auto w_a = (lse_a - lse_want).exp().nan_to_num(0.0).unsqueeze(-1);
  auto w_b = (lse_b - lse_want).exp().nan_to_num(0.0).unsqueeze(-1);
  auto o_want = w_a * o_a + w_b * o_b;

  auto o_acc = o_a.clone(), lse_acc = lse_a.clone();
  model::merge_attention_partial_(o_acc, lse_acc, o_b, lse_b);
  EXPECT_FALSE(o_acc.isnan().any().item<bool>());
  EXPECT_TRUE(at::equal(lse_acc.isneginf(), lse_want.isneginf()));
  auto finite = lse_want.isfinite();
  expect_near(lse_acc.masked_select(finite), lse_want.masked_select(finite), 1e-14, "lse");
  expect_near(o_acc, o_want, 1e-14, "o");
  EXPECT_TRUE(at::equal(o_acc[0][0][0], o_b[0][0][0])) << "a row only b saw is b's";
  EXPECT_TRUE(at::equal(o_acc[0][0][1], o_a[0][0][1])) << "a row only a saw is a's";
  EXPECT_EQ(o_acc[1][2][3].abs().max().item<double>(), 0.0) << "a row nobody saw is 0";
}

// bfloat16 on the CPU kernel against float64 on the same (rounded) inputs:
// chunking adds at most a rounding's worth of error to the unchunked call's.
// Measured: unchunked 1.2e-2 (o) .. 2.1e-2 (dq), chunked within 2e-3 of it.
TEST(ChunkedAttention, Bfloat16StaysWithinTheUnchunkedErrorOfFloat64) {
  const Shape s{2, 40, 4, 2, 16};
  const auto in = make_inputs(s, 8, at::kBFloat16, 0.5);
  auto q64 = in.q.to(at::kDouble), k64 = in.k.to(at::kDouble), v64 = in.v.to(at::kDouble);
  auto do64 = in.d_o.to(at::kDouble);
  const auto ref = reference(q64, k64, v64, do64, /*causal=*/true);
  auto whole = model::attention_forward(kCpu, in.q, in.k, in.v);
  auto gw = model::attention_backward(kCpu, in.d_o, in.q, in.k, in.v, whole.o, whole.lse);
  using Sizes = std::pair<int64_t, int64_t>;  // chunk, kv_block
  for (const auto& [chunk, kv_block] : {Sizes{7, model::kWholePrefix}, Sizes{8, 3}, Sizes{1, 16}}) {
    const std::string at_ = "chunk " + std::to_string(chunk) + " kv_block " + block_name(kv_block);
    auto out = model::chunked_attention_forward(kCpu, in.q, in.k, in.v, chunk, kv_block);
    ASSERT_EQ(out.o.scalar_type(), at::kBFloat16);
    ASSERT_EQ(out.lse.scalar_type(), at::kFloat);
    auto g = model::chunked_attention_backward(kCpu, in.d_o, in.q, in.k, in.v, out.o, out.lse,
                                               chunk, kv_block);
    ASSERT_EQ(g.dk.scalar_type(), at::kBFloat16);
    const std::vector<std::tuple<const char*, at::Tensor, at::Tensor, at::Tensor>> rows = {
        {"o", out.o, whole.o, ref.o}, {"lse", out.lse, whole.lse, ref.lse},
        {"dq", g.dq, gw.dq, ref.dq},  {"dk", g.dk, gw.dk, ref.dk},
        {"dv", g.dv, gw.dv, ref.dv}};
    for (const auto& [name, got, unchunked, want] : rows) {
      const double err = testing::max_rel_error(got, want);
      const double base = testing::max_rel_error(unchunked, want);
      EXPECT_LE(err, 3e-2) << name << ", " << at_;
      EXPECT_LE(err, base + 8e-3) << name << ", " << at_ << " (unchunked " << base << ")";
    }
  }
}

template <class Fn>
std::string input_error(Fn&& fn) {
  try {
    fn();
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

template <class Fn>
std::string programmer_error(Fn&& fn) {
  try {
    fn();
  } catch (const InputError& e) {
    return std::string("InputError: ") + e.what();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(ChunkedAttention, BadArgumentsAreRefusedClearlyBeforeAnythingIsAllocated) {
  memory::install_cpu_memory_meter();
  const at::Device cpu(at::kCPU);
  const auto in = make_inputs(Shape{1, 8, 4, 2, 8}, 1);
  auto whole = model::attention_forward(kCpu, in.q, in.k, in.v);

  const auto before = memory::memory_stats(cpu).allocated;
  memory::reset_peak_memory(cpu);
  auto msg = input_error([&] { model::chunked_attention_forward(kCpu, in.q, in.k, in.v, 0); });
  EXPECT_NE(msg.find("query chunk of 0 tokens"), std::string::npos) << msg;
  EXPECT_NE(msg.find("at least 1"), std::string::npos) << msg;
  msg = input_error([&] {
    model::chunked_attention_backward(kCpu, in.d_o, in.q, in.k, in.v, whole.o, whole.lse, -3);
  });
  EXPECT_NE(msg.find("query chunk of -3 tokens"), std::string::npos) << msg;
  msg = input_error([&] { model::chunked_attention_forward(kCpu, in.q, in.k, in.v, 4, 0); });
  EXPECT_NE(msg.find("key block of 0 tokens"), std::string::npos) << msg;
  msg = input_error([&] { model::attention_chunk_forward(kCpu, in.q, in.k, in.v, -1); });
  EXPECT_NE(msg.find("key block of -1 tokens"), std::string::npos) << msg;
  EXPECT_EQ(memory::memory_stats(cpu).peak_allocated, before) << "allocated before refusing";

  // Shapes that do not fit are programmer errors (Error, not InputError).
  auto q4 = in.q.narrow(2, 0, 4);
  msg = programmer_error([&] {  // more queries than keys in the prefix
    model::attention_chunk_forward(kCpu, in.q, in.k.narrow(2, 0, 4), in.v.narrow(2, 0, 4));
  });
  EXPECT_NE(msg.find("P >= n"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("InputError"), std::string::npos) << msg;
  msg = programmer_error([&] {  // 4 query heads over 3 kv heads
    auto k3 = at::zeros({1, 3, 8, 8}, in.k.options());
    model::attention_chunk_forward(kCpu, q4, k3, k3);
  });
  EXPECT_NE(msg.find("nkv dividing nh"), std::string::npos) << msg;
  msg = programmer_error([&] { model::attention_chunk_forward(kCpu, q4, in.k, in.v.narrow(2, 0, 7)); });
  EXPECT_NE(msg.find("[1, 2, 7, 8]"), std::string::npos) << msg;
  msg = programmer_error([&] { model::chunked_attention_forward(kCpu, q4, in.k, in.v, 2); });
  EXPECT_NE(msg.find("4 tokens but k and v 8"), std::string::npos) << msg;
  msg = programmer_error([&] {
    auto dk = at::zeros({1, 2, 7, 8}, in.k.options()), dv = at::zeros(in.v.sizes(), in.v.options());
    model::attention_chunk_backward(kCpu, in.d_o, in.q, in.k, in.v, whole.o, whole.lse, dk, dv);
  });
  EXPECT_NE(msg.find("dk accumulator is [1, 2, 7, 8]"), std::string::npos) << msg;
  msg = programmer_error([&] {
    model::chunked_attention_backward(kCpu, in.d_o, in.q, in.k, in.v, whole.o,
                                      whole.lse.narrow(2, 0, 5), 2);
  });
  EXPECT_NE(msg.find("lse is [1, 4, 5]"), std::string::npos) << msg;
  msg = programmer_error([&] {  // a causal block must be square
    model::attention_forward(kCpu, q4, in.k, in.v, /*causal=*/true);
  });
  EXPECT_NE(msg.find("as many queries as keys"), std::string::npos) << msg;
}

// The CPU flash kernel's tiles for q_len queries against kv_len keys
// (aten/src/ATen/native/cpu/FlashAttentionKernel.cpp: q split 32/64/256 by
// length, kv split up to 512), one set per thread, in the accumulation dtype.
int64_t cpu_kernel_tiles(int64_t q_len, int64_t kv_len, int64_t d, int64_t s, bool backward) {
  const int64_t qs = std::min<int64_t>(q_len >= 768 ? 256 : q_len >= 192 ? 64 : 32, q_len);
  const int64_t kvs = std::min<int64_t>(512, kv_len);
  const int64_t per_thread = backward ? (2 * qs * kvs + qs) * s : (qs * kvs + 2 * qs + qs * d) * s;
  return at::get_num_threads() * per_thread;
}

// One chunk's forward and backward, the last chunk of a long sequence (the
// largest prefix), allocate what the header states per query token and per
// key of a block, not anything that grows with the prefix.
TEST(ChunkedAttention, OneChunkWorkingSetIsWithinTheStatedBytes) {
  memory::install_cpu_memory_meter();
  const at::Device cpu(at::kCPU);
  auto peak_during = [&](auto&& fn) {
    memory::reset_peak_memory(cpu);
    const int64_t before = memory::memory_stats(cpu).allocated;
    fn();
    return memory::memory_stats(cpu).peak_allocated - before;
  };
  for (auto dtype : {at::kFloat, at::kDouble}) {
    const Shape s{1, 2048, 4, 2, 16};
    const int64_t n = 64, kv_block = 256;
    const auto in = make_inputs(s, 2, dtype, 0.5);
    const int64_t P = s.S, t0 = P - n;
    auto q = in.q.narrow(2, t0, n), d_o = in.d_o.narrow(2, t0, n);
    const int64_t c = static_cast<int64_t>(c10::elementSize(dtype)), st = c;
    const int64_t slack = 4096 + 64 * s.B * s.nh * n;

    model::AttentionOutput out;
    const int64_t fwd = peak_during([&] { out = model::attention_chunk_forward(kCpu, q, in.k, in.v, kv_block); });
    const int64_t fwd_bound = s.B * n * (s.nh * s.d * (c + st) + 6 * s.nh * st) +
                              cpu_kernel_tiles(n, std::max(n, kv_block), s.d, st, false) + slack;
    EXPECT_LE(fwd, fwd_bound) << c10::toString(dtype) << " forward";
    // What a whole-prefix computation would need: o over every position, or
    // one chunk's scores against the prefix.
    EXPECT_LT(fwd_bound, s.B * s.nh * n * P * st) << "the bound would not catch [n, P] scores";
    EXPECT_LT(fwd_bound, s.B * s.nh * P * s.d * c) << "the bound would not catch a whole o";

    auto dk = at::zeros(in.k.sizes(), in.k.options()), dv = at::zeros(in.v.sizes(), in.v.options());
    const int64_t bwd = peak_during([&] {
      model::attention_chunk_backward(kCpu, d_o, q, in.k, in.v, out.o, out.lse, dk, dv, kv_block);
    });
    const int64_t bwd_bound = s.B * n * (s.nh * s.d * (c + st) + s.nh * st) +
                              2 * s.B * std::max(n, kv_block) * s.nkv * s.d * c +
                              cpu_kernel_tiles(n, std::max(n, kv_block), s.d, st, true) + slack;
    EXPECT_LE(bwd, bwd_bound) << c10::toString(dtype) << " backward";
    EXPECT_LT(bwd_bound, s.B * s.nh * n * P * st) << "the bound would not catch [n, P] scores";
  }
}

// The whole sequence chunk by chunk: forward allocates o and lse and, beyond
// them, one chunk's working set; backward dq, dk, dv and one chunk's working
// set. The bound is computed from the chunk and the key block, not the
// sequence, and holds at 512 and at 2048 tokens alike; with the whole prefix
// in one key block, backward adds one prefix-sized dk, dv pair (GQA-sized).
TEST(ChunkedAttention, WholeSequenceWorkingSetIsBoundedByTheChunk) {
  memory::install_cpu_memory_meter();
  const at::Device cpu(at::kCPU);
  auto peak_during = [&](auto&& fn) {
    memory::reset_peak_memory(cpu);
    const int64_t before = memory::memory_stats(cpu).allocated;
    fn();
    return memory::memory_stats(cpu).peak_allocated - before;
  };
  auto bytes = [](const at::Tensor& t) { return static_cast<int64_t>(t.numel() * t.element_size()); };
  const int64_t n = 64;
  for (auto dtype : {at::kFloat, at::kDouble}) {
    for (int64_t kv_block : {n, model::kWholePrefix}) {
      for (int64_t S : {int64_t{512}, int64_t{2048}}) {
        const Shape s{2, S, 4, 2, 16};
        const std::string at_ = std::string(c10::toString(dtype)) + " S " + std::to_string(S) +
                                " kv_block " + block_name(kv_block);
        const auto in = make_inputs(s, 11, dtype, 0.5);
        const int64_t c = static_cast<int64_t>(c10::elementSize(dtype)), st = c;
        const int64_t slack = 4096 + 64 * s.B * s.nh * n;
        const int64_t block = kv_block == model::kWholePrefix ? S : kv_block;

        model::AttentionOutput out;
        const int64_t fwd = peak_during([&] {
          out = model::chunked_attention_forward(kCpu, in.q, in.k, in.v, n, kv_block);
        });
        const int64_t fwd_chunk = s.B * n * (s.nh * s.d * (c + st) + 6 * s.nh * st) +
                                  cpu_kernel_tiles(n, std::max(n, block), s.d, st, false) + slack;
        EXPECT_LE(fwd - bytes(out.o) - bytes(out.lse), fwd_chunk) << "forward, " << at_;

        model::AttentionGrads g;
        const int64_t bwd = peak_during([&] {
          g = model::chunked_attention_backward(kCpu, in.d_o, in.q, in.k, in.v, out.o, out.lse, n,
                                                kv_block);
        });
        // d_o's chunk is a token range of a batch of 2, not dense: one copy (nh d c).
        const int64_t bwd_chunk = s.B * n * (s.nh * s.d * (2 * c + st) + s.nh * st) +
                                  2 * s.B * std::max(n, block) * s.nkv * s.d * c +
                                  cpu_kernel_tiles(n, std::max(n, block), s.d, st, true) + slack;
        EXPECT_LE(bwd - bytes(g.dq) - bytes(g.dk) - bytes(g.dv), bwd_chunk) << "backward, " << at_;
        if (kv_block != model::kWholePrefix) {
          // The bound would catch anything sequence-sized: one o, or dk and dv.
          EXPECT_LT(std::max(fwd_chunk, bwd_chunk), s.B * s.nh * S * s.d * c) << at_;
          if (S == 2048) EXPECT_LT(bwd_chunk, bytes(g.dk) + bytes(g.dv)) << at_;
        }
      }
    }
  }
}

}  // namespace
}  // namespace memo
