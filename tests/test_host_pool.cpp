// Host pools: whole pages mapped outside c10's CPU allocator (so a CPU run's
// device figures do not count them), given back to the system when the last
// view goes; the host memory budget from synthetic /proc/meminfo and cgroup
// text; the device memory memo may keep resident tokens in.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>

#include "memory/device_memory.h"
#include "memory/host_pool.h"

namespace memo {
namespace {

using memory::HostPool;

constexpr double GiB = static_cast<double>(1ll << 30);
constexpr double KiB = 1024.0;

// The process's mapped address space in bytes (/proc/self/statm, first field).
int64_t mapped_bytes_of_process() {
  std::ifstream in("/proc/self/statm");
  int64_t pages = 0;
  in >> pages;
  return pages * static_cast<int64_t>(::sysconf(_SC_PAGESIZE));
}

TEST(HostPool, WholePagesOutsideTheCpuAllocatorGivenBackWithTheLastView) {
  memory::install_cpu_memory_meter();
  const int64_t page = ::sysconf(_SC_PAGESIZE);
  const int64_t want = (64ll << 20) + 5;  // 64 MiB and a few bytes: one page more
  const auto meter_before = memory::memory_stats(at::kCPU).allocated;
  const auto live_before = HostPool::live_bytes();
  const auto vm_before = mapped_bytes_of_process();

  auto pool = HostPool(want, at::kCPU);
  EXPECT_EQ(pool.mapped_bytes(), (want + page - 1) / page * page);
  EXPECT_EQ(pool.pinned_bytes(), 0);  // CPU: nothing to pin
  EXPECT_EQ(pool.tensor().numel(), pool.mapped_bytes());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(pool.tensor().data_ptr()) % static_cast<uintptr_t>(page), 0u);
  EXPECT_EQ(HostPool::live_bytes() - live_before, pool.mapped_bytes());
  EXPECT_GE(mapped_bytes_of_process() - vm_before, pool.mapped_bytes());
  // Not device memory: the CPU meter (a CPU run's device) did not see it.
  EXPECT_EQ(memory::memory_stats(at::kCPU).allocated, meter_before);

  // A view keeps the memory alive after the pool object goes...
  auto view = pool.tensor().narrow(0, pool.mapped_bytes() - 8, 8).view(at::kLong);  // [1] int64, the last bytes
  view.fill_(42);
  pool = HostPool();
  EXPECT_EQ(HostPool::live_bytes() - live_before, (want + page - 1) / page * page);
  EXPECT_EQ(view.item<int64_t>(), 42);
  // ...and the last one gives it back to the system.
  const auto vm_with = mapped_bytes_of_process();
  view.reset();
  EXPECT_EQ(HostPool::live_bytes(), live_before);
  EXPECT_GE(vm_with - mapped_bytes_of_process(), 64ll << 20);
}

// A balloon VM: 128 GiB of RAM, of which MemAvailable shows only 20 GiB at
// start, 2 GiB held by processes.
const char* kBalloonMeminfo =
    "MemTotal:       134217728 kB\n"
    "MemFree:        19922944 kB\n"
    "MemAvailable:   20971520 kB\n"
    "Buffers:           11820 kB\n"
    "Cached:          1048576 kB\n"
    "AnonPages:       2097152 kB\n"
    "Shmem:             65536 kB\n";

TEST(HostBudget, TheFlagWins) {
  auto b = memory::host_budget_from(12.5, kBalloonMeminfo, "1073741824\n", "0\n");
  EXPECT_DOUBLE_EQ(b.bytes, 12.5 * GiB);
  EXPECT_EQ(b.source, "--host-memory-gib");
}

TEST(HostBudget, OnABalloonVmMemTotalMinusWhatProcessesHold) {
  auto b = memory::host_budget_from(0, kBalloonMeminfo, "max\n", "123\n");
  // 0.75 x 128 GiB - (2 GiB + 64 MiB), not half of MemAvailable's 20 GiB.
  EXPECT_DOUBLE_EQ(b.bytes, 0.75 * 128 * GiB - (2 * GiB + 64 * KiB * KiB));
  EXPECT_NE(b.source.find("MemTotal 128.00 GiB x 0.75"), std::string::npos) << b.source;
  EXPECT_NE(b.source.find("/proc/meminfo"), std::string::npos) << b.source;
}

TEST(HostBudget, NeverBelowHalfOfMemAvailable) {
  // Processes hold 70 of 100 GiB, yet 28 GiB are available (reclaimable).
  const std::string meminfo =
      "MemTotal: 104857600 kB\nMemAvailable: 29360128 kB\nAnonPages: 73400320 kB\nShmem: 0 kB\n";
  auto b = memory::host_budget_from(0, meminfo, "", "");
  EXPECT_DOUBLE_EQ(b.bytes, 14 * GiB);
  EXPECT_NE(b.source.find("MemAvailable 28.00 GiB / 2"), std::string::npos) << b.source;
}

TEST(HostBudget, ACgroupLimitCapsIt) {
  auto b = memory::host_budget_from(0, kBalloonMeminfo, "68719476736\n", "1073741824\n");
  EXPECT_DOUBLE_EQ(b.bytes, 0.75 * 64 * GiB - 1 * GiB);
  EXPECT_NE(b.source.find("cgroup memory.max 64.00 GiB x 0.75 - 1.00 GiB"), std::string::npos) << b.source;
  // A limit above what meminfo allows does not raise it.
  auto high = memory::host_budget_from(0, kBalloonMeminfo, "1099511627776\n", "0\n");
  EXPECT_NE(high.source.find("MemTotal"), std::string::npos) << high.source;
}

TEST(HostBudget, UnreadableMeminfoMeansNoLimitAndSaysSo) {
  auto b = memory::host_budget_from(0, "", "", "");
  EXPECT_EQ(b.bytes, 0.0);
  EXPECT_NE(b.source.find("--host-memory-gib"), std::string::npos) << b.source;
}

TEST(HostBudget, ThisMachineHasOne) {
  auto b = memory::host_budget(0);
  EXPECT_GT(b.bytes, 0.0) << b.source;
  EXPECT_FALSE(b.source.empty());
}

TEST(SpareDevice, CachedBlocksCountAsAvailableSoReleasingThemChangesNothing) {
  // 141 GiB device; 40 GiB allocated; the allocator holds 60 GiB (20 cached,
  // unused, e.g. after memo's measurement); the driver has 80 GiB free.
  memory::DeviceHeadroom cached{80 * GiB, 141 * GiB, 40 * GiB, 60 * GiB};
  // The same after emptyCache: the 20 GiB went back to the driver.
  memory::DeviceHeadroom released{100 * GiB, 141 * GiB, 40 * GiB, 40 * GiB};
  const double planned = 30 * GiB, slack = 2 * GiB;
  EXPECT_DOUBLE_EQ(memory::spare_device_bytes(cached, planned, slack), 68 * GiB);
  EXPECT_DOUBLE_EQ(memory::spare_device_bytes(released, planned, slack), 68 * GiB);
}

TEST(SpareDevice, NeverMoreThanTotalMinusAllocatedNorBelowZero) {
  // A driver figure that does not add up (another context freed memory
  // meanwhile) cannot promise more than the device has.
  EXPECT_DOUBLE_EQ(memory::spare_device_bytes({120 * GiB, 141 * GiB, 40 * GiB, 60 * GiB}, 10 * GiB, 1 * GiB),
                   90 * GiB);
  EXPECT_DOUBLE_EQ(memory::spare_device_bytes({5 * GiB, 141 * GiB, 130 * GiB, 131 * GiB}, 10 * GiB, 2 * GiB), 0.0);
}

}  // namespace
}  // namespace memo
