// How many intra-op CPU threads memo uses, and how idle OpenMP threads wait.
// OpenMP threads that spin-wait on cores other processes are using slow a run
// by 5-10x (docs/perf/cpu-threads-2026-12-02.md), so a busy machine gets fewer
// threads and a passive wait; an idle one gets every core and libgomp's
// default (short spin, then sleep), which is fastest there. Explicit
// OMP_NUM_THREADS / OMP_WAIT_POLICY always win.
#pragma once

#include <sched.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

namespace memo {

struct CpuThreads {
  int cores = 1;            // usable by this process (affinity mask, cgroup quota)
  double other_load = 0.0;  // runnable work of other processes, in cores
  int threads = 1;          // intra-op threads to use
  std::string threads_from;
  bool passive_wait = false;  // OMP_WAIT_POLICY=PASSIVE in effect (or to be set)
  std::string wait_from;
};

// The choice from the machine's figures and the two environment variables
// (nullptr when unset). Pure, for tests.
inline CpuThreads choose_cpu_threads(int cores, double other_load, const char* omp_num_threads,
                                     const char* omp_wait_policy, bool wait_set_by_memo = false) {
  CpuThreads c;
  c.cores = std::max(1, cores);
  c.other_load = std::max(0.0, other_load);
  const int env_threads = omp_num_threads ? std::atoi(omp_num_threads) : 0;
  if (env_threads > 0) {
    c.threads = env_threads;
    c.threads_from = "OMP_NUM_THREADS";
  } else {
    // Leave the cores other processes keep busy; never fewer than one.
    const int free_cores = c.cores - static_cast<int>(std::lround(c.other_load));
    c.threads = std::clamp(free_cores, 1, c.cores);
    c.threads_from = c.threads < c.cores ? "cores not busy with other processes" : "all cores (machine idle)";
  }
  const bool busy = c.other_load >= 0.5;
  if (omp_wait_policy && *omp_wait_policy) {
    std::string p = omp_wait_policy;
    for (auto& ch : p) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
    c.passive_wait = p == "PASSIVE";
    c.wait_from = wait_set_by_memo ? "set by memo: the machine is busy" : "OMP_WAIT_POLICY";
  } else if (c.threads > 1 && busy) {
    c.passive_wait = true;  // memo sets it (libgomp reads it only at load time: see cli/main.cpp)
    c.wait_from = "set by memo: the machine is busy";
  } else {
    c.wait_from = c.threads > 1 ? "libgomp default (machine idle)" : "no spinning with one thread";
  }
  return c;
}

// CPUs in this process's affinity mask, capped by a cgroup v2 CPU quota.
inline int usable_cores() {
  int n = 1;
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) n = std::max(1, CPU_COUNT(&set));
  std::ifstream quota("/sys/fs/cgroup/cpu.max");
  std::string max_s;
  long long period = 0;
  if (quota >> max_s >> period && max_s != "max" && period > 0) {
    const long long q = std::atoll(max_s.c_str());
    if (q > 0) n = std::min(n, std::max(1, static_cast<int>((q + period - 1) / period)));
  }
  return n;
}

// Runnable work of other processes, in cores: the larger of the one-minute
// load average and the processes runnable right now (less this one).
// `loadavg` is the text of /proc/loadavg ("0.52 0.40 0.31 3/250 12345").
inline double other_cpu_load_from(const std::string& loadavg) {
  std::istringstream in(loadavg);
  double one = 0.0, five = 0.0, fifteen = 0.0;
  std::string running;
  if (!(in >> one >> five >> fifteen >> running)) return 0.0;
  const double now = std::atof(running.substr(0, running.find('/')).c_str()) - 1.0;
  return std::max({0.0, one, now});
}

inline double other_cpu_load() {
  std::ifstream in("/proc/loadavg");
  std::stringstream text;
  text << in.rdbuf();
  return other_cpu_load_from(text.str());
}

// The choice on this machine, now.
inline CpuThreads current_cpu_threads() {
  const char* by_memo = std::getenv("MEMO_SET_OMP_WAIT_POLICY");
  return choose_cpu_threads(usable_cores(), other_cpu_load(), std::getenv("OMP_NUM_THREADS"),
                            std::getenv("OMP_WAIT_POLICY"), by_memo && *by_memo == '1');
}

}  // namespace memo
