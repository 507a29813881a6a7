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

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
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

std::map<std::string, double> parse_meminfo(const std::string& text) {
  std::map<std::string, double> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    std::istringstream ls(line);
    std::string key, unit;
    double value = 0;
    if (!(ls >> key >> value) || key.empty() || key.back() != ':') continue;
    key.pop_back();
    ls >> unit;
    out[key] = unit == "kB" ? value * 1024.0 : value;
  }
  return out;
}

std::map<std::string, double> read_meminfo() { return parse_meminfo(read_text("/proc/meminfo")); }

int64_t parse_cgroup_bytes(const std::string& text) {
  std::istringstream in(text);
  std::string word, rest;
  if (!(in >> word) || (in >> rest) || word == "max") return -1;
  try {
    size_t used = 0;
    const long long v = std::stoll(word, &used);
    return used == word.size() && v >= 0 ? v : -1;
  } catch (const std::exception&) {
    return -1;
  }
}

std::vector<CgroupMemory> memory_cgroups() {
  std::vector<CgroupMemory> out;
  std::istringstream in(read_text("/proc/self/cgroup"));
  for (std::string line; std::getline(in, line);) {
    // "ID:CONTROLLERS:PATH"; v2 is "0::PATH", v1 lists "memory" among the controllers.
    const auto a = line.find(':'), b = line.find(':', a + 1);
    if (a == std::string::npos || b == std::string::npos) continue;
    const std::string controllers = line.substr(a + 1, b - a - 1);
    std::string path = line.substr(b + 1);
    const char *root, *limit_file, *usage_file;
    if (controllers.empty()) {
      root = "/sys/fs/cgroup";
      limit_file = "/memory.max";
      usage_file = "/memory.current";
    } else if (("," + controllers + ",").find(",memory,") != std::string::npos) {
      root = "/sys/fs/cgroup/memory";
      limit_file = "/memory.limit_in_bytes";
      usage_file = "/memory.usage_in_bytes";
    } else {
      continue;
    }
    // The group and its ancestors (inside a cgroup namespace the path may be "/").
    while (true) {
      CgroupMemory g;
      g.dir = std::string(root) + (path == "/" ? "" : path);
      g.limit = parse_cgroup_bytes(read_text(g.dir + limit_file));
      if (g.limit >= (int64_t{1} << 62)) g.limit = -1;
      g.usage = parse_cgroup_bytes(read_text(g.dir + usage_file));
      out.push_back(g);
      // The parent: "/a/b" -> "/a" -> "/" (then stop).
      const size_t cut = path.rfind('/');
      if (path.size() <= 1 || cut == std::string::npos) break;
      path.erase(cut == 0 ? 1 : cut);
    }
  }
  return out;
}

HostMemory host_memory() {
  HostMemory m;
  const auto info = read_meminfo();
  const auto field = [&](const char* key) {
    const auto it = info.find(key);
    return it == info.end() ? int64_t{-1} : static_cast<int64_t>(it->second);
  };
  m.mem_available = field("MemAvailable");
  m.mem_total = field("MemTotal");
  // limit - usage of the tightest cgroup; -1 when none is limited.
  for (const auto& g : memory_cgroups()) {
    if (g.limit < 0) continue;
    const int64_t room = std::max<int64_t>(0, g.limit - std::max<int64_t>(0, g.usage));
    m.cgroup_room = m.cgroup_room < 0 ? room : std::min(m.cgroup_room, room);
  }
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
