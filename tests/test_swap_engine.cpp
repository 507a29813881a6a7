// The swap engine's bookkeeping on CPU, where copies run synchronously: a
// copy stays pending until it is waited on or drained, the drain forgets
// every pending copy and nothing of theirs stays allocated, and the engine
// works again after it. (On CUDA a pending copy also holds its tensors, and
// the drain makes the compute stream wait on events instead of the host;
// tests/test_sync_free_step.cpp checks that on a GPU.)
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "memory/device_memory.h"
#include "runtime/swap_engine.h"

namespace memo {
namespace {

int64_t allocated() { return memory::memory_stats(at::Device(at::kCPU)).allocated; }

TEST(SwapEngine, CopiesStayPendingUntilWaitedOrDrained) {
  memory::install_cpu_memory_meter();
  runtime::SwapEngine engine(at::Device(at::kCPU), nullptr);
  auto host = at::zeros({1 << 16});  // the host side stays with the caller
  const int64_t src_bytes = (1 << 16) * 4;
  const int64_t base = allocated();
  {
    auto src = at::full({1 << 16}, 3.0);
    engine.copy_out(0, {{host, src}});
    auto src2 = at::full({1 << 16}, 5.0);
    engine.copy_out(1, {{host, src2}});
    EXPECT_EQ(allocated() - base, 2 * src_bytes);
  }
  EXPECT_EQ(engine.pending(), 2);
  EXPECT_EQ(allocated() - base, 0);  // synchronous copies hold nothing
  engine.wait_copy_out(0);
  EXPECT_EQ(engine.pending(), 1);
  engine.drain();
  EXPECT_EQ(engine.pending(), 0);
  EXPECT_EQ(allocated() - base, 0);
  EXPECT_EQ(host[0].item<float>(), 5.0f);  // the copies ran, in order

  // After a drain the engine serves the next step.
  auto back = at::empty({1 << 16});
  engine.copy_in(0, {{back, host}});
  engine.wait_copy_in(0);
  EXPECT_EQ(engine.pending(), 0);
  EXPECT_TRUE(at::equal(back, host));
}

}  // namespace
}  // namespace memo
