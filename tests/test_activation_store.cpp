// The activation store's pieces on CPU (runtime/unit.h, rounding_buffers.h,
// host_slots.h, activation_store.h): units keyed apart by layer and chunk,
// the rounding buffers' ownership and validity rules, and a round trip of
// skeletal sets through the host pool, whose bytes are counted where they
// really are (the pool's pages, the CPU meter for the device side).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <map>
#include <vector>

#include "core/error.h"
#include "memory/device_memory.h"
#include "memory/host_pool.h"
#include "model/skeletal.h"
#include "reference.h"
#include "runtime/activation_store.h"
#include "runtime/rounding_buffers.h"
#include "runtime/swap_engine.h"
#include "runtime/unit.h"

namespace memo {
namespace {

using runtime::Unit;

TEST(Unit, OrdersByLayerThenChunkAndKeysChunksApart) {
  EXPECT_LT((Unit{3, 0}), (Unit{3, 1}));
  EXPECT_LT((Unit{3, 7}), (Unit{4, 0}));
  EXPECT_EQ(Unit(3), (Unit{3, 0}));
  std::map<Unit, int> m;
  m[Unit{3, 0}] = 1;
  m[Unit{3, 1}] = 2;
  m[Unit(3)] += 10;
  EXPECT_EQ(m.size(), 2u);
  EXPECT_EQ((m[Unit{3, 0}]), 11);
  EXPECT_EQ(runtime::to_string(Unit{3}), "3");
  EXPECT_EQ(runtime::to_string(Unit{3, 1}), "3.1");
}

TEST(Unit, SwapEngineKeepsTheCopiesOfTwoChunksOfOneLayerApart) {
  runtime::SwapEngine engine(at::Device(at::kCPU), nullptr);
  auto a = at::zeros({4}), b = at::zeros({4});
  engine.copy_out(Unit{1, 0}, {{a, at::ones({4})}});
  engine.copy_out(Unit{1, 1}, {{b, at::full({4}, 2.0)}});
  EXPECT_EQ(engine.pending(), 2);
  engine.wait_copy_out(Unit{1, 1});
  EXPECT_EQ(engine.pending(), 1);
  engine.wait_copy_out(Unit{1, 0});
  EXPECT_EQ(engine.pending(), 0);
}

TEST(RoundingBuffers, OwnerAndValidityFollowTheStep) {
  const auto cfg = testing::small_config(4, 2, 4, 24);
  runtime::RoundingBuffers buffers(cfg, 2, 7, at::kFloat, at::kCPU);
  int64_t set_bytes = 0;
  for (const auto& s : model::skeletal_specs(cfg, 2, 7, at::kFloat))
    if (!s.layer_input) set_bytes += s.bytes();
  EXPECT_EQ(buffers.buffer_bytes(), set_bytes);
  EXPECT_NE(buffers.index_of(Unit{0}), buffers.index_of(Unit{1}));
  EXPECT_EQ(buffers.index_of(Unit{0}), buffers.index_of(Unit{2}));
  EXPECT_NE(buffers.buffer(0).slots.n1.data_ptr(), buffers.buffer(1).slots.n1.data_ptr());

  // Forward: layers 0, 1, 2; layer 2 takes layer 0's buffer and says so.
  EXPECT_FALSE(buffers.claim_for_forward(Unit{0}));
  EXPECT_FALSE(buffers.claim_for_forward(Unit{1}));
  EXPECT_EQ(buffers.claim_for_forward(Unit{2}), Unit{0});
  EXPECT_FALSE(buffers.holds_forward_output(Unit{0}));
  EXPECT_TRUE(buffers.holds_forward_output(Unit{1}));
  EXPECT_TRUE(buffers.holds_forward_output(Unit{2}));
  // Layer 0's buffer is taken: no copy-in into it.
  EXPECT_FALSE(buffers.free_for(Unit{0}));
  EXPECT_THROW(buffers.claim_for_copy_in(Unit{0}), Error);

  // Backward reaches layer 1: layer 2's buffer is free, layer 1's untouched.
  buffers.release_after(Unit{1});
  EXPECT_TRUE(buffers.free_for(Unit{0}));
  EXPECT_TRUE(buffers.holds_forward_output(Unit{1}));
  buffers.claim_for_copy_in(Unit{0});
  EXPECT_EQ(buffers.of(Unit{0}).owner, Unit{0});
  EXPECT_EQ(buffers.of(Unit{0}).holds, runtime::BufferHolds::CopyIn);
  EXPECT_FALSE(buffers.holds_forward_output(Unit{0})) << "a copy-in is not forward's output";

  buffers.reset();
  for (int i = 0; i < 2; ++i) {
    EXPECT_FALSE(buffers.buffer(i).owner);
    EXPECT_EQ(buffers.buffer(i).holds, runtime::BufferHolds::Nothing);
  }

  // Chunks alternate in the order they run: with two chunks a layer, chunk 1
  // of layer 0 and chunk 0 of layer 1 use different buffers.
  runtime::RoundingBuffers chunked(cfg, 1, 4, at::kFloat, at::kCPU, 2);
  EXPECT_NE(chunked.index_of(Unit{0, 1}), chunked.index_of(Unit{1, 0}));
  EXPECT_EQ(chunked.index_of(Unit{0, 0}), chunked.index_of(Unit{1, 0}));
}

// A skeletal set of random values for [B, S] (every tensor, x included).
model::LayerActivations random_set(const model::ModelConfig& cfg, int64_t B, int64_t S, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  model::LayerActivations acts;
  for (const auto& s : model::skeletal_specs(cfg, B, S, at::kDouble))
    acts.*s.member = at::normal(0.0, 1.0, s.shape, gen, at::TensorOptions().dtype(s.dtype));
  return acts;
}

// Runs one unit's forward through the store: writes `values` into the
// storage it hands out and saves it.
void forward_into(runtime::ActivationStore& store, Unit u, const model::LayerActivations& values) {
  model::LayerActivations acts = *store.forward_storage(u);
  for (const auto& r : model::skeletal_table()) {
    if (r.layer_input) continue;
    (acts.*r.member).copy_(values.*r.member);
  }
  acts.x = values.x.clone();
  store.save(u, acts);
}

TEST(ActivationStore, RoundTripThroughThePoolWithResidentAndDroppedTokens) {
  memory::install_cpu_memory_meter();
  const auto cfg = testing::small_config(4, 2, 4, 24, /*layers=*/4);
  const int64_t B = 2, S = 9, host = 4, resident = 2;  // tokens [6, 9) dropped in layer 0
  std::map<Unit, runtime::UnitPlacement> placement = {
      {Unit{0}, {true, host, resident}}, {Unit{1}, {true, S, 0}}, {Unit{2}, {false, 0, 0}}, {Unit{3}, {false, 0, 0}}};
  const auto specs = model::skeletal_specs(cfg, B, S, at::kDouble);
  const int64_t page = ::sysconf(_SC_PAGESIZE);

  const auto device_before = memory::memory_stats(at::kCPU).allocated;
  const auto pool_before = memory::HostPool::live_bytes();
  runtime::ActivationStore store(cfg, B, S, at::kDouble, at::kCPU, placement, 1e9, nullptr);

  // The host slots by hand: layer 0 keeps x, o, lse whole and 4 tokens of the
  // rest, layer 1 everything; each slot rounded up to 16 bytes.
  auto a16 = [](int64_t b) { return (b + 15) / 16 * 16; };
  int64_t want_host = 0, set_bytes = 0, resident_bytes = 0;
  for (const auto& s : specs) {
    want_host += a16(s.always_offloaded ? s.bytes() : s.bytes() / S * host) + a16(s.bytes());
    set_bytes += s.bytes();
    if (!s.always_offloaded) resident_bytes += s.bytes() / S * resident;
  }
  const int64_t x_bytes = B * S * cfg.hidden * 8;
  EXPECT_EQ(store.host_bytes(), want_host);
  // Resident where they are: the pool's whole pages on the host, the two
  // rounding buffers (no x slot) on the device.
  const int64_t pool = memory::HostPool::live_bytes() - pool_before;
  EXPECT_GE(pool, want_host);
  EXPECT_LT(pool, want_host + page);
  EXPECT_EQ(store.buffer_bytes(), set_bytes - x_bytes);
  EXPECT_EQ(memory::memory_stats(at::kCPU).allocated - device_before, 2 * store.buffer_bytes());
  EXPECT_EQ(store.device_bytes(), 2 * store.buffer_bytes());

  std::vector<model::LayerActivations> sets;
  for (int64_t i = 0; i < 4; ++i) sets.push_back(random_set(cfg, B, S, 100 + static_cast<uint64_t>(i)));
  store.begin_step();
  for (int64_t i = 0; i < 4; ++i) forward_into(store, Unit{i}, sets[static_cast<size_t>(i)]);
  // Held now: both buffers, the inputs of layers 2 and 3 (0 and 1 let theirs
  // go when their buffers were reused), layer 0's resident tokens.
  EXPECT_EQ(store.device_bytes(), 2 * store.buffer_bytes() + 2 * x_bytes + resident_bytes);
  EXPECT_EQ(store.held_inputs(), 2);

  // Backward, top down. Layers 3 and 2 never left their buffers.
  for (int64_t i : {3, 2}) {
    store.backward_reached(Unit{i});
    ASSERT_TRUE(store.in_buffer(Unit{i})) << i;
    auto acts = store.take_from_buffer(Unit{i});
    for (const auto& r : model::skeletal_table())
      EXPECT_TRUE(at::equal(acts.*r.member, sets[static_cast<size_t>(i)].*r.member)) << i << " " << r.name;
  }
  // Layer 1: every token back from the pool (its buffer was written over by layer 3).
  store.backward_reached(Unit{1});
  ASSERT_FALSE(store.in_buffer(Unit{1}));
  ASSERT_TRUE(store.buffer_free_for(Unit{1}));
  store.prefetch(Unit{1});
  EXPECT_TRUE(store.prefetched(Unit{1}));
  EXPECT_EQ(store.kept_tokens(Unit{1}), S);
  {
    auto acts = store.take_copied_in(Unit{1});
    for (const auto& r : model::skeletal_table())
      EXPECT_TRUE(at::equal(acts.*r.member, sets[1].*r.member)) << "layer 1 " << r.name;
  }
  // Layer 0: x, o, lse whole; of the others the 4 host tokens and the 2
  // resident ones; the 3 dropped tokens still hold layer 2's values (the
  // policy recomputes them).
  store.backward_reached(Unit{0});
  ASSERT_TRUE(store.buffer_free_for(Unit{0}));
  store.prefetch(Unit{0});
  EXPECT_EQ(store.kept_tokens(Unit{0}), host + resident);
  auto acts = store.take_copied_in(Unit{0});
  for (const auto& s : specs) {
    const auto& got = acts.*s.member;
    const auto& want = sets[0].*s.member;
    if (s.always_offloaded) {
      EXPECT_TRUE(at::equal(got, want)) << "layer 0 " << s.name;
      continue;
    }
    const int64_t kept = host + resident;
    EXPECT_TRUE(at::equal(got.narrow(s.token_dim, 0, kept), want.narrow(s.token_dim, 0, kept))) << s.name;
    EXPECT_TRUE(at::equal(got.narrow(s.token_dim, kept, S - kept), (sets[2].*s.member).narrow(s.token_dim, kept, S - kept)))
        << s.name << ": dropped tokens are not restored";
  }
  store.end_step();
  EXPECT_EQ(store.engine().pending(), 0);
  EXPECT_EQ(store.held_inputs(), 0);
  EXPECT_EQ(store.device_bytes(), 2 * store.buffer_bytes());
}

// memo's K, V rebuild reads every chunk's input of a layer before its
// backward (ActivationStore::for_each_input): in chunk order, the held ones
// (the last two units) as they are, the others back from the host, equal to
// what forward saved, through no more than two chunk-sized staging tensors
// on the device, with the bytes copied counted.
TEST(ActivationStore, ForEachInputVisitsEveryChunkThroughTwoStagingTensors) {
  memory::install_cpu_memory_meter();
  const auto cfg = testing::small_config(4, 2, 4, 24, /*layers=*/2);
  const int64_t B = 2, C = 4, S = 10, chunks = 3;  // chunks of 4, 4, 2
  std::map<Unit, runtime::UnitPlacement> placement;
  for (int64_t l = 0; l < 2; ++l)
    for (int64_t c = 0; c < chunks; ++c) {
      const bool held = l == 1 && c >= 1;  // memo's last two units
      placement[Unit{l, c}] = {!held, 0, 0, std::min(C, S - c * C)};
    }
  runtime::ActivationStore store(cfg, B, C, at::kDouble, at::kCPU, placement, 1e9, nullptr, chunks);
  std::map<Unit, at::Tensor> inputs;
  store.begin_step();
  for (const auto& [u, p] : placement) {
    const auto values = random_set(cfg, B, p.tokens, 300 + static_cast<uint64_t>(u.layer * chunks + u.chunk));
    auto acts = model::token_slice(*store.forward_storage(u), 0, p.tokens);
    for (const auto& r : model::skeletal_table())
      if (!r.layer_input) (acts.*r.member).copy_(values.*r.member);
    acts.x = values.x.clone();
    inputs[u] = values.x;
    store.save(u, acts);
  }
  store.forward_done();

  const int64_t x_chunk = B * C * cfg.hidden * 8;  // one full chunk's input, float64
  int64_t copied = 0;
  for (int64_t layer : {1, 0}) {
    std::vector<int64_t> order;
    const auto before = memory::memory_stats(at::kCPU).allocated;
    int64_t most = 0;
    store.for_each_input(layer, [&](int64_t chunk, const at::Tensor& x) {
      order.push_back(chunk);
      EXPECT_TRUE(at::equal(x, inputs.at(Unit{layer, chunk}))) << layer << "." << chunk;
      most = std::max(most, memory::memory_stats(at::kCPU).allocated - before);
    });
    EXPECT_EQ(order, (std::vector<int64_t>{0, 1, 2})) << layer;
    EXPECT_LE(most, 2 * x_chunk) << layer;  // two staging tensors at most, nothing per chunk
    for (int64_t c = 0; c < chunks; ++c)
      if (placement.at(Unit{layer, c}).swapped) copied += static_cast<int64_t>(inputs.at(Unit{layer, c}).nbytes());
    EXPECT_EQ(store.rebuild_h2d_bytes(), copied) << layer;
  }
  EXPECT_EQ(copied, B * (4 + 4 + 2 + 4) * cfg.hidden * 8);  // layer 0 whole, layer 1's chunk 0
  store.end_step();
  EXPECT_EQ(store.engine().pending(), 0);
}

TEST(ActivationStore, AUnitOffTheHostHasNoSlotsAndCannotBePrefetched) {
  const auto cfg = testing::small_config(2, 2, 4, 16, /*layers=*/2);
  runtime::ActivationStore store(cfg, 1, 5, at::kFloat, at::kCPU,
                                 {{Unit{0}, {true, 2, 0}}, {Unit{1}, {false, 0, 0}}}, 1e9, nullptr);
  store.begin_step();
  EXPECT_THROW(store.prefetch(Unit{1}), Error);  // nothing of it on the host
  EXPECT_THROW(store.placement(Unit{5}), Error);
  EXPECT_THROW(store.take_from_buffer(Unit{0}), Error);  // never ran forward
}

}  // namespace
}  // namespace memo
