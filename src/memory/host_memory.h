// How much memory this process can still allocate on the host, before it
// allocates: the kernel's MemAvailable, the room left under the process's
// cgroup memory limit (v1 or v2, the tightest of its ancestors) and under its
// address-space limit (`ulimit -v`, RLIMIT_AS). The fit check (train/
// fit_check.h) compares its estimates with this.
#pragma once

#include <cstdint>
#include <string>

namespace memo::memory {

struct HostMemory {
  int64_t available = 0;   // the smallest of the limits below that apply
  std::string limited_by;  // which one: "MemAvailable", "the cgroup memory limit", "ulimit -v (RLIMIT_AS)"
  int64_t mem_available = -1;       // /proc/meminfo MemAvailable (-1: unknown)
  int64_t mem_total = -1;           // /proc/meminfo MemTotal
  int64_t cgroup_room = -1;         // limit - usage of the tightest cgroup (-1: no limit)
  int64_t address_space_room = -1;  // RLIMIT_AS - current virtual size (-1: unlimited)
};

// Reads the figures now. Unknown figures are left at -1 and ignored.
HostMemory host_memory();

// Which limit applies, for messages: "limited by MemAvailable".
std::string describe(const HostMemory& m);

}  // namespace memo::memory
