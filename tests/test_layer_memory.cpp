// A decoder layer's working set, counted by the CPU memory meter against the
// bounds docs/memory-per-token.md states, computed here from the shapes:
// forward into a rounding buffer of offload or memo allocates nothing beyond
// its transients (the attention kernel's outputs, the layer output, fixed-size
// blocks), token-wise recompute into it nothing per token at all, and
// backward stays within its per-token working set.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/CPUAllocator.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <string>

#include "memory/device_memory.h"
#include "model/llama.h"
#include "reference.h"
#include "runtime/policy.h"

namespace memo {
namespace {

// One layer's shape in docs/design.md's names, and the element sizes: c the
// compute dtype, s the statistics dtype (ops.h stat_dtype).
struct Dims {
  int64_t B, S, h, f, nh, nkv, d;
  int64_t c, s;
  int64_t T() const { return B * S; }
  int64_t q() const { return (nh + 2 * nkv) * d; }  // qkv per token
  int64_t a() const { return nh * d; }              // attention output per token
};

Dims dims_of(const model::ModelConfig& cfg, int64_t B, int64_t S, at::ScalarType compute) {
  return {B, S, cfg.hidden, cfg.ffn, cfg.heads, cfg.kv_heads, cfg.head_dim,
          static_cast<int64_t>(c10::elementSize(compute)),
          static_cast<int64_t>(c10::elementSize(model::stat_dtype(compute)))};
}

// Elements of one token block of a [B, n, row] operand of RMSNorm or RoPE:
// as many whole tokens as fit in `block` elements, at least one (ops.h).
int64_t block_of(const Dims& m, int64_t n, int64_t row, int64_t block) {
  const int64_t per_token = m.B * row;
  return std::min(std::max<int64_t>(1, block / per_token), n) * per_token;
}

// Fixed-size temporaries of the row-wise ops on token blocks (ops.cpp): RMSNorm
// forward holds a float copy of the block and its square, or the copy and the
// product before rounding (2 s per element); RMSNorm backward xhat, the float
// copy of dn, xhat rounded and re-widened, and their product (4 s + c); RoPE
// the two sine products, half a row each (c).
int64_t norm_forward_block(const Dims& m, int64_t n, int64_t block) {
  return 2 * m.s * block_of(m, n, m.h, block);
}
int64_t norm_backward_block(const Dims& m, int64_t block) {
  return (4 * m.s + m.c) * block_of(m, m.S, m.h, block);
}
int64_t rope_block(const Dims& m, int64_t n, int64_t block) {
  return m.c * block_of(m, n, (m.nh + m.nkv) * m.d, block);
}

// The CPU flash-attention kernel's scratch: per thread a q block of qs rows
// against a kv block of kvs keys, in float plus (16-bit) a rounded copy
// (aten/src/ATen/native/cpu/FlashAttentionKernel.cpp); in bfloat16 each block
// matmul goes through oneDNN, which stages at most float copies of its
// operands and result, one at a time per thread.
int64_t cpu_attention_scratch(const Dims& m, bool backward) {
  const int64_t qs = std::min<int64_t>(m.S >= 768 ? 256 : m.S >= 192 ? 64 : 32, m.S);
  const int64_t kvs = std::min<int64_t>(512, m.S);
  const bool reduced = m.c < m.s;
  int64_t per_thread = backward
                           ? 2 * qs * kvs * m.s + (reduced ? 2 * qs * kvs * m.c : 0) + qs * m.s
                           : (qs * kvs + 2 * qs + qs * m.d) * m.s + (reduced ? qs * kvs * m.c : 0);
  if (reduced) per_thread += 4 * (qs * kvs + kvs * m.d + qs * m.d);
  return at::get_num_threads() * per_thread;
}

// A CPU matmul [M, K] x [K, N] in bfloat16 runs through oneDNN, which stages
// at most float copies of both operands and the result (float32 and float64
// matmuls stage nothing): the largest matmul of the pass.
int64_t cpu_matmul_staging(const Dims& m, std::initializer_list<std::array<int64_t, 3>> mms) {
  if (m.c >= m.s) return 0;
  int64_t worst = 0;
  for (const auto& [M, K, N] : mms) worst = std::max(worst, 4 * (M * K + K * N + M * N));
  return worst;
}

// Tiny tensors no bound above names: the [h] weight-gradient sums of the
// norms and their conversion, per-block statistics columns ([B, block] and
// [B, block, 1]), the attention kernel's row sums, and a few bytes of
// per-op scratch (TensorIterator reductions: 12 bytes seen).
int64_t slack(const Dims& m) { return 4096 + 4 * (m.h + m.T()) * 8; }

// docs/memory-per-token.md, forward into preallocated storage: per token
// the attention kernel's o and lse until they are copied into their slots, or
// the layer output y; plus the blocks, the kernel's scratch and staging.
int64_t forward_bound(const Dims& m, int64_t block) {
  const int64_t per_token = std::max(m.a() * m.c + m.nh * m.s, m.h * m.c);
  const int64_t T = m.T();
  return T * per_token + std::max(norm_forward_block(m, m.S, block), rope_block(m, m.S, block)) +
         cpu_attention_scratch(m, /*backward=*/false) +
         cpu_matmul_staging(m, {{T, m.h, m.q()}, {T, m.a(), m.h}, {T, m.h, 2 * m.f}, {T, m.f, m.h}}) +
         slack(m);
}

// Token-wise recompute of n tokens per sequence into preallocated storage:
// nothing per token, only the blocks and staging.
int64_t recompute_bound(const Dims& m, int64_t n, int64_t block) {
  const int64_t T = m.B * n;
  return std::max(norm_forward_block(m, n, block), rope_block(m, n, block)) +
         cpu_matmul_staging(m, {{T, m.h, m.q()}, {T, m.a(), m.h}, {T, m.h, 2 * m.f}}) + slack(m);
}

// Backward: per token the largest of the four phases' live sets (MLP: d(gu)
// and dn2; attention: dx2, d_o, dq dk dv; gather: dx2, dq dk dv, dqkv; QKV
// input gradient: dx2, dqkv, dn1), plus the blocks or one weight-sized
// gradient product (with float32 gradients of 16-bit compute: the product
// in c, and on CPU its float widening), the kernel's scratch and staging.
int64_t backward_per_token(const Dims& m) {
  return m.c * std::max({2 * m.f + m.h, m.h + m.a() + m.q(), m.h + 2 * m.q(), 2 * m.h + m.q()});
}
int64_t backward_bound(const Dims& m, int64_t block, int64_t grad_size) {
  const int64_t T = m.T();
  const int64_t largest_weight = std::max({m.q() * m.h, m.h * m.a(), 2 * m.f * m.h, m.h * m.f});
  const int64_t grad_product = grad_size == m.c ? 0 : largest_weight * (m.c + grad_size);
  return T * backward_per_token(m) +
         std::max({grad_product, norm_backward_block(m, block), rope_block(m, m.S, block)}) +
         cpu_attention_scratch(m, /*backward=*/true) +
         cpu_matmul_staging(m, {{T, m.h, m.f}, {m.h, T, m.f}, {T, 2 * m.f, m.h}, {2 * m.f, T, m.h},
                                {T, m.h, m.a()}, {m.h, T, m.a()}, {T, m.q(), m.h}, {m.q(), T, m.h}}) +
         slack(m);
}

// Bytes allocated at the peak of fn() beyond what was allocated before it.
template <class Fn>
int64_t peak_during(Fn&& fn) {
  const at::Device cpu(at::kCPU);
  memory::reset_peak_memory(cpu);
  const int64_t before = memory::memory_stats(cpu).allocated;
  fn();
  return memory::memory_stats(cpu).peak_allocated - before;
}

const char* dtype_name(at::ScalarType t) { return t == at::kBFloat16 ? "bf16" : "f32"; }

struct ForwardCase {
  std::string policy;
  at::ScalarType dtype;
  int64_t batch, seq;
  int64_t block_tokens;  // RMSNorm/RoPE token block; 0: the library default
};

class ForwardMemory : public ::testing::TestWithParam<ForwardCase> {};

TEST_P(ForwardMemory, IntoARoundingBufferOnlyTransientsAndRecomputeNothingPerToken) {
  const auto p = GetParam();
  memory::install_cpu_memory_meter();  // before the model: its tensors are counted
  auto cfg = testing::small_config(4, 2, 8, 96, /*layers=*/3, /*vocab=*/64);  // h 32, f 96
  model::ModelOptions mo;
  mo.compute_dtype = p.dtype;
  mo.seed = 5;
  model::LlamaModel model(cfg, mo);
  runtime::PolicyOptions po;
  po.alpha = 0.5;
  po.host_memory_bytes = 1 << 28;
  auto policy = runtime::make_policy(p.policy, po);
  policy->prepare(model, p.batch, p.seq);
  policy->begin_step({cfg.layers, p.batch, p.seq});
  const model::LayerActivations buffer = *policy->forward_storage(0);
  const int64_t block = p.block_tokens > 0 ? p.block_tokens * p.batch * cfg.hidden : model::kBlockElements;
  const model::DecoderLayer layer(cfg, model.layer().kernel(), block);

  const auto& w = model.compute().layers.front();
  const auto rope = model.rope(p.seq);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(9);
  auto x = at::normal(0.0, 1.0, {p.batch, p.seq, cfg.hidden}, gen).to(p.dtype);  // [B, S, h]
  const Dims m = dims_of(cfg, p.batch, p.seq, p.dtype);

  model::LayerActivations acts = buffer;
  at::Tensor y;
  const int64_t fwd = peak_during([&] { y = layer.forward(w, rope, x, acts); });
  EXPECT_LE(fwd, forward_bound(m, block)) << "forward allocated " << fwd << " bytes";
  // It is right (against float64 on the same values) ...
  {
    model::LayerWeights w64 = w;
    for (auto& [name, t] : w64.named()) *t = t->to(at::kDouble);
    model::LayerActivations acts64;
    auto y64 = model::DecoderLayer(cfg, model::AttentionKernel::CpuFlash)
                   .forward(w64, model::RopeTable::build(cfg, p.seq, at::kDouble, at::kCPU),
                            x.to(at::kDouble), acts64);
    EXPECT_LE(testing::max_rel_error(y, y64), p.dtype == at::kFloat ? 1e-5 : 3e-2) << "y";
  }
  // ... and it wrote into the buffer: every slot is still the buffer's own tensor.
  EXPECT_FALSE(buffer.x.defined()) << "a rounding buffer has no x slot";
  size_t k = 0;
  std::vector<at::Tensor> slots;
  buffer.for_each([&](const char*, const at::Tensor& t) { slots.push_back(t); });
  acts.for_each([&](const char* name, const at::Tensor& t) {
    const auto& b = slots[k++];
    if (b.defined()) EXPECT_EQ(t.data_ptr(), b.data_ptr()) << name << " left its buffer slot";
  });

  // Token-wise recompute of the last two thirds of every sequence, into the
  // buffer, gives back what forward wrote there.
  std::vector<at::Tensor> saved;
  acts.for_each([&](const char*, const at::Tensor& t) { saved.push_back(t.clone()); });
  const int64_t t0 = p.seq / 3;
  acts.n1.narrow(1, t0, p.seq - t0).fill_(0);
  acts.gu.narrow(1, t0, p.seq - t0).fill_(0);
  acts.a.narrow(1, t0, p.seq - t0).fill_(0);
  const int64_t rec = peak_during([&] { layer.recompute_tokens(w, rope, acts, t0); });
  EXPECT_LE(rec, recompute_bound(m, p.seq - t0, block)) << "recompute allocated " << rec << " bytes";
  k = 0;
  acts.for_each([&](const char* name, const at::Tensor& t) {
    const auto& want = saved[k++];
    if (t.defined()) EXPECT_LE(testing::max_rel_error(t, want), p.dtype == at::kFloat ? 1e-5 : 1e-2) << name;
  });
}

INSTANTIATE_TEST_SUITE_P(
    Cases, ForwardMemory,
    ::testing::Values(ForwardCase{"memo", at::kFloat, 1, 64, 8}, ForwardCase{"memo", at::kFloat, 2, 48, 4},
                      ForwardCase{"offload", at::kFloat, 2, 48, 4},
                      ForwardCase{"memo", at::kBFloat16, 1, 64, 8},
                      ForwardCase{"offload", at::kBFloat16, 2, 48, 4},
                      ForwardCase{"memo", at::kFloat, 2, 40, 0}),
    [](const auto& info) {
      const auto& c = info.param;
      return c.policy + "_" + dtype_name(c.dtype) + "_B" + std::to_string(c.batch) + "_S" +
             std::to_string(c.seq) + "_block" + std::to_string(c.block_tokens);
    });

struct BackwardCase {
  at::ScalarType dtype;
  int64_t batch, seq, heads, kv_heads, head_dim, ffn;
  int64_t block_tokens;  // 0: the library default
};

class BackwardMemory : public ::testing::TestWithParam<BackwardCase> {};

TEST_P(BackwardMemory, WithinTheStatedWorkingSet) {
  const auto p = GetParam();
  memory::install_cpu_memory_meter();
  auto cfg = testing::small_config(p.heads, p.kv_heads, p.head_dim, p.ffn);
  const int64_t block = p.block_tokens > 0 ? p.block_tokens * p.batch * cfg.hidden : model::kBlockElements;
  const model::DecoderLayer layer(cfg, model::AttentionKernel::CpuFlash, block);
  auto w = testing::random_layer_weights(cfg, p.dtype, 7);
  // Milder attention logits than the test default (softmax near one-hot
  // amplifies 16-bit rounding past any useful tolerance below).
  w.wqkv.mul_(0.25);
  model::LayerWeights grads = w;  // float32, as the trainer keeps them
  for (auto& [name, t] : grads.named()) *t = at::zeros(t->sizes(), at::kFloat);
  auto rope = model::RopeTable::build(cfg, p.seq, p.dtype, at::kCPU);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
  auto x = at::normal(0.0, 1.0, {p.batch, p.seq, cfg.hidden}, gen).to(p.dtype);
  auto dy = at::normal(0.0, 1.0, {p.batch, p.seq, cfg.hidden}, gen).to(p.dtype);
  model::LayerActivations acts;
  layer.forward(w, rope, x, acts);

  at::Tensor dx;
  const int64_t bwd = peak_during([&] { dx = layer.backward(w, grads, rope, acts, dy); });
  const Dims m = dims_of(cfg, p.batch, p.seq, p.dtype);
  EXPECT_LE(bwd, backward_bound(m, block, 4))
      << "backward allocated " << bwd << " bytes; per-token working set "
      << backward_per_token(m) << " x " << m.T() << " tokens";
  // And it is right: against the same layer in float64 on the same values
  // (16-bit rounding of every intermediate allowed for).
  model::LayerWeights w64 = w, g64 = grads;
  for (auto& [name, t] : w64.named()) *t = t->to(at::kDouble);
  for (auto& [name, t] : g64.named()) *t = at::zeros(t->sizes(), at::kDouble);
  auto rope64 = model::RopeTable::build(cfg, p.seq, at::kDouble, at::kCPU);
  const model::DecoderLayer layer64(cfg, model::AttentionKernel::CpuFlash, block);
  model::LayerActivations acts64;
  layer64.forward(w64, rope64, x.to(at::kDouble), acts64);
  auto dx64 = layer64.backward(w64, g64, rope64, acts64, dy.to(at::kDouble));
  const double tol = p.dtype == at::kFloat ? 1e-4 : 3e-2;
  EXPECT_LE(testing::max_rel_error(dx, dx64), tol) << "dx";
  auto got = grads.named();
  auto want = g64.named();
  for (size_t i = 0; i < got.size(); ++i)
    EXPECT_LE(testing::max_rel_error(*got[i].second, *want[i].second), tol) << "gradient of " << got[i].first;
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, BackwardMemory,
    ::testing::Values(BackwardCase{at::kFloat, 1, 64, 4, 2, 8, 96, 8},     // GQA, f = 3h
                      BackwardCase{at::kFloat, 2, 48, 4, 1, 16, 160, 4},   // MQA, batch 2
                      BackwardCase{at::kFloat, 1, 40, 2, 2, 8, 48, 0},     // MHA, default block
                      BackwardCase{at::kBFloat16, 1, 64, 4, 2, 8, 96, 8},
                      BackwardCase{at::kBFloat16, 2, 48, 4, 1, 16, 160, 4}),
    [](const auto& info) {
      const auto& c = info.param;
      return std::string(dtype_name(c.dtype)) + "_B" + std::to_string(c.batch) + "_S" +
             std::to_string(c.seq) + "_h" + std::to_string(c.heads) + "kv" + std::to_string(c.kv_heads) +
             "_d" + std::to_string(c.head_dim) + "_f" + std::to_string(c.ffn) + "_block" +
             std::to_string(c.block_tokens);
    });

// The building blocks one by one, where CPU matmul staging does not blur the
// picture: in bfloat16 too, SwiGLU makes no [tokens, f] temporary beyond its
// output, RMSNorm and RoPE nothing beyond one token block.
class OpsMemory : public ::testing::TestWithParam<at::ScalarType> {};

TEST_P(OpsMemory, SwiGluRmsNormAndRopeAllocateOnlyTheirOutputsAndOneBlock) {
  const auto dtype = GetParam();
  memory::install_cpu_memory_meter();
  const int64_t B = 2, S = 128, f = 96, nh = 4, nkv = 2, d = 16, h = nh * d;
  const int64_t block_tokens = 8, block = block_tokens * B * h;
  auto cfg = testing::small_config(nh, nkv, d, f);
  const Dims m = dims_of(cfg, B, S, dtype);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
  auto rnd = [&](std::vector<int64_t> shape) { return at::normal(0.0, 1.0, shape, gen).to(dtype); };

  // SwiGLU: backward allocates d(gu) [T, 2f] and nothing else of [T, f];
  // forward into a preallocated a nothing.
  auto gu = rnd({B, S, 2 * f});
  auto da = rnd({B, S, f});
  at::Tensor dgu;
  const int64_t swiglu_bwd = peak_during([&] { dgu = model::swiglu_backward(da, gu); });
  EXPECT_LE(swiglu_bwd, m.T() * 2 * f * m.c + slack(m)) << "swiglu backward";
  auto a = at::empty({B, S, f}, dtype);
  const int64_t swiglu_fwd = peak_during([&] { model::swiglu_forward(gu, a); });
  EXPECT_LE(swiglu_fwd, slack(m)) << "swiglu forward into a";

  // RMSNorm forward into preallocated n and rstd, backward written over dn.
  auto x = rnd({B, S, h});
  auto w = 1.0 + 0.1 * rnd({h});
  auto n = at::empty({B, S, h}, dtype);
  auto rstd = at::empty({B, S}, model::stat_dtype(dtype));
  const int64_t norm_fwd =
      peak_during([&] { model::rmsnorm_forward(x, w, 1e-5, n, rstd, block); });
  EXPECT_LE(norm_fwd, norm_forward_block(m, S, block) + slack(m)) << "rmsnorm forward";
  auto dn = rnd({B, S, h});
  auto dw = at::zeros({h}, at::kFloat);
  const int64_t norm_bwd =
      peak_during([&] { model::rmsnorm_backward(dn, x, rstd, w, dw, dn, block); });
  EXPECT_LE(norm_bwd, norm_backward_block(m, block) + slack(m)) << "rmsnorm backward";

  // RoPE in place on the q and k heads of a [B, S, nh + 2 nkv, d] tensor.
  auto qkv = rnd({B, S, nh + 2 * nkv, d});
  auto rope = model::RopeTable::build(cfg, S, dtype, at::kCPU);
  const int64_t rope_peak = peak_during([&] {
    model::rope_apply_(qkv.narrow(2, 0, nh + nkv), rope, /*inverse=*/false, (nh + nkv) * d * B * block_tokens);
  });
  EXPECT_LE(rope_peak, rope_block(m, S, (nh + nkv) * d * B * block_tokens) + slack(m)) << "rope";
}

INSTANTIATE_TEST_SUITE_P(Dtypes, OpsMemory, ::testing::Values(at::kFloat, at::kBFloat16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

// Some CPU kernels (oneDNN matmuls in bfloat16 among them) use the
// allocator's raw interface, which needs a DataPtr whose context is its data.
TEST(MemoryMeter, RawInterfaceWorksAndIsCounted) {
  memory::install_cpu_memory_meter();
  const at::Device cpu(at::kCPU);
  auto* alloc = c10::GetCPUAllocator();
  const auto before = memory::memory_stats(cpu).allocated;
  void* p = alloc->raw_allocate(1 << 16);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(memory::memory_stats(cpu).allocated - before, 1 << 16);
  alloc->raw_deallocate(p);
  EXPECT_EQ(memory::memory_stats(cpu).allocated, before);
}

}  // namespace
}  // namespace memo
