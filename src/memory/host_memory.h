// How much memory this process can still allocate on the host, before it
// allocates: the kernel's MemAvailable, the room left under the process's
// cgroup memory limit (v1 or v2, the tightest of its ancestors) and under its
// address-space limit (`ulimit -v`, RLIMIT_AS). The fit check (train/
// fit_check.h) compares its estimates with this.
// Also the one reader of /proc/meminfo and the cgroup memory files, which the
// host pools' budget (host_pool.h) reads too.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace memo::memory {

struct HostMemory {
  int64_t available = 0;   // the smallest of the limits below that apply
  std::string limited_by;  // which one: "MemAvailable", "the cgroup memory limit", "ulimit -v (RLIMIT_AS)"
  int64_t mem_available = -1;       // /proc/meminfo MemAvailable (-1: unknown)
  int64_t mem_total = -1;           // /proc/meminfo MemTotal
  int64_t cgroup_room = -1;         // limit - usage of the tightest cgroup (-1: no limit)
  int64_t address_space_room = -1;  // RLIMIT_AS - current virtual size (-1: unlimited)
};

// /proc/meminfo's text ("Key:   123 kB" lines) -> bytes by key. Pure, for tests.
std::map<std::string, double> parse_meminfo(const std::string& text);
// /proc/meminfo now, parsed.
std::map<std::string, double> read_meminfo();

// A cgroup memory file's value in bytes; -1 for "max", empty or not a number.
int64_t parse_cgroup_bytes(const std::string& text);

// One memory cgroup that bounds this process: its directory, its limit
// (-1: none; limits of 2^62 and more, cgroup v1's "unlimited", count as none)
// and its usage (-1: unknown).
struct CgroupMemory {
  std::string dir;
  int64_t limit = -1;
  int64_t usage = -1;
};
// The process's own memory cgroup and its ancestors up to the root (cgroup v2,
// or v1's memory controller), own group first. Inside a cgroup namespace the
// process's group shows as the root.
std::vector<CgroupMemory> memory_cgroups();

// Reads the figures now. Unknown figures are left at -1 and ignored.
HostMemory host_memory();

// Which limit applies, for messages: "limited by MemAvailable".
std::string describe(const HostMemory& m);

}  // namespace memo::memory
