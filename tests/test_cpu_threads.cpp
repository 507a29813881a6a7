// The CPU thread choice (core/cpu_threads.h): a busy machine gets fewer
// threads and a passive wait, an idle one every core, explicit environment
// variables win, and /proc/loadavg is read as the load of other processes.
#include <gtest/gtest.h>

#include "core/cpu_threads.h"

namespace memo {
namespace {

TEST(CpuThreads, IdleMachineUsesEveryCoreWithTheDefaultWait) {
  auto c = choose_cpu_threads(8, 0.1, nullptr, nullptr);
  EXPECT_EQ(c.threads, 8);
  EXPECT_FALSE(c.passive_wait);
}

TEST(CpuThreads, BusyMachineLeavesTheBusyCoresAndWaitsPassively) {
  auto c = choose_cpu_threads(16, 5.6, nullptr, nullptr);
  EXPECT_EQ(c.threads, 10);
  EXPECT_TRUE(c.passive_wait);
}

TEST(CpuThreads, FullyLoadedMachineStillGetsOneThreadAndNoSpinning) {
  auto c = choose_cpu_threads(2, 8.7, nullptr, nullptr);
  EXPECT_EQ(c.threads, 1);
  EXPECT_FALSE(c.passive_wait);  // one thread never waits for a team
}

TEST(CpuThreads, EnvironmentWins) {
  auto c = choose_cpu_threads(2, 8.7, "2", "active");
  EXPECT_EQ(c.threads, 2);
  EXPECT_EQ(c.threads_from, "OMP_NUM_THREADS");
  EXPECT_FALSE(c.passive_wait);
  EXPECT_EQ(c.wait_from, "OMP_WAIT_POLICY");
  auto p = choose_cpu_threads(4, 0.0, nullptr, "passive");
  EXPECT_TRUE(p.passive_wait);
  EXPECT_EQ(p.threads, 4);
}

TEST(CpuThreads, BadOmpNumThreadsFallsBackToTheMachine) {
  auto c = choose_cpu_threads(4, 0.0, "lots", nullptr);
  EXPECT_EQ(c.threads, 4);
  EXPECT_NE(c.threads_from, "OMP_NUM_THREADS");
}

TEST(CpuThreads, LoadIsTheLargerOfTheAverageAndTheRunnableOthers) {
  EXPECT_DOUBLE_EQ(other_cpu_load_from("2.50 1.00 0.50 2/300 999\n"), 2.5);
  EXPECT_DOUBLE_EQ(other_cpu_load_from("0.10 1.00 0.50 5/300 999\n"), 4.0);  // 5 runnable, one is us
  EXPECT_DOUBLE_EQ(other_cpu_load_from("0.00 0.00 0.00 1/300 999\n"), 0.0);
  EXPECT_DOUBLE_EQ(other_cpu_load_from("garbage"), 0.0);
}

}  // namespace
}  // namespace memo
