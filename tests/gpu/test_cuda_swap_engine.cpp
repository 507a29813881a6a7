// CUDA-only checks of the swap engine (skipped without a CUDA device): data
// that goes to pinned host memory on the device-to-host stream and comes back
// on the host-to-device stream is bitwise what was there, even when the
// compute stream overwrites the device tensor right after the copy-out wait.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "memory/device_memory.h"
#include "runtime/swap_engine.h"

namespace memo {
namespace {

TEST(CudaSwapEngine, RoundTripIsExactUnderStreamOrdering) {
  if (!memory::cuda_available()) GTEST_SKIP() << "no CUDA device";
  const at::Device dev(at::kCUDA, 0);
  runtime::SwapEngine engine(dev, nullptr);
  ASSERT_TRUE(engine.async());
  auto opts = at::TensorOptions().device(dev).dtype(at::kBFloat16);
  // 64 MiB per tensor: long enough that an unordered copy would be caught mid-flight.
  auto a = at::randn({32 << 20}, opts);
  auto expected = a.cpu();
  auto host = at::empty_like(expected).pin_memory();
  engine.copy_out(0, {{host, a}});
  engine.wait_copy_out(0);
  a.fill_(0);  // compute stream, ordered after the copy-out by the wait
  engine.copy_in(0, {{a, host}});
  engine.wait_copy_in(0);
  auto back = a.cpu();  // compute stream, ordered after the copy-in
  EXPECT_TRUE(at::equal(back, expected));
  engine.drain();
}

}  // namespace
}  // namespace memo
