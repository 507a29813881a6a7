// Host memory limits from /proc and /sys (Linux); see host_memory.h.
#include "memory/host_memory.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <vector>


namespace memo::memory {

namespace {

// The first integer in a file, or -1 ("max" in cgroup v2 means no limit).
int64_t read_int(const std::string& path) {
  std::ifstream in(path);
  std::string word;
  if (!(in >> word) || word == "max") return -1;
  try {
    size_t used = 0;
    const long long v = std::stoll(word, &used);
    return used == word.size() && v >= 0 ? v : -1;
  } catch (const std::exception&) {
    return -1;
  }
}

int64_t meminfo(const std::string& field) {
  std::ifstream in("/proc/meminfo");
  std::string key, unit;
  long long kb = 0;
  while (in >> key >> kb) {
    std::getline(in, unit);
    if (key == field + ":") return static_cast<int64_t>(kb) * 1024;
  }
  return -1;
}

// limit - usage of the tightest cgroup on the path from the process's cgroup
// to the root; -1 when none is limited. Limits of 2^62 and more mean "none"
// (cgroup v1 writes 2^63 - 4096 for an unlimited group).
int64_t cgroup_room() {
  std::ifstream in("/proc/self/cgroup");
  int64_t best = -1;
  auto consider = [&](const std::string& dir, const char* limit_file, const char* usage_file) {
    const int64_t limit = read_int(dir + "/" + limit_file);
    if (limit < 0 || limit >= (int64_t{1} << 62)) return;
    const int64_t usage = std::max<int64_t>(0, read_int(dir + "/" + usage_file));
    const int64_t room = std::max<int64_t>(0, limit - usage);
    best = best < 0 ? room : std::min(best, room);
  };
  for (std::string line; std::getline(in, line);) {
    // "ID:CONTROLLERS:PATH"; v2 is "0::PATH", v1 lists "memory" among the controllers.
    const auto a = line.find(':'), b = line.find(':', a + 1);
    if (a == std::string::npos || b == std::string::npos) continue;
    const std::string controllers = line.substr(a + 1, b - a - 1);
    std::string path = line.substr(b + 1);
    std::string root, limit_file, usage_file;
    if (controllers.empty()) {
      root = "/sys/fs/cgroup";
      limit_file = "memory.max";
      usage_file = "memory.current";
    } else if (("," + controllers + ",").find(",memory,") != std::string::npos) {
      root = "/sys/fs/cgroup/memory";
      limit_file = "memory.limit_in_bytes";
      usage_file = "memory.usage_in_bytes";
    } else {
      continue;
    }
    // The group and its ancestors (inside a cgroup namespace the path may be "/").
    while (true) {
      consider(root + (path == "/" ? "" : path), limit_file.c_str(), usage_file.c_str());
      if (path.empty() || path == "/") break;
      path = path.substr(0, path.rfind('/'));
      if (path.empty()) path = "/";
    }
  }
  return best;
}

// RLIMIT_AS minus the virtual size already mapped; -1 when unlimited.
int64_t address_space_room() {
  struct rlimit rl {};
  if (::getrlimit(RLIMIT_AS, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return -1;
  std::ifstream in("/proc/self/statm");
  long long pages = 0;
  in >> pages;
  const int64_t mapped = static_cast<int64_t>(pages) * ::sysconf(_SC_PAGESIZE);
  const auto limit = static_cast<int64_t>(std::min<rlim_t>(rl.rlim_cur, static_cast<rlim_t>(INT64_MAX)));
  return std::max<int64_t>(0, limit - mapped);
}

}  // namespace

HostMemory host_memory() {
  HostMemory m;
  m.mem_available = meminfo("MemAvailable");
  m.mem_total = meminfo("MemTotal");
  m.cgroup_room = cgroup_room();
  m.address_space_room = address_space_room();
  m.available = -1;
  auto take = [&](int64_t v, const char* why) {
    if (v >= 0 && (m.available < 0 || v < m.available)) {
      m.available = v;
      m.limited_by = why;
    }
  };
  take(m.mem_available, "MemAvailable");
  take(m.cgroup_room, "the cgroup memory limit");
  take(m.address_space_room, "ulimit -v (RLIMIT_AS)");
  if (m.available < 0) {  // nothing readable: do not guess a limit
    m.available = INT64_MAX;
    m.limited_by = "unknown";
  }
  return m;
}

std::string describe(const HostMemory& m) {
  if (m.limited_by == "unknown") return "an unknown amount (no /proc/meminfo)";
  return "limited by " + m.limited_by;
}

}  // namespace memo::memory
