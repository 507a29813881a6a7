// Host pools mapped with mmap, pinned through src/cuda/ on CUDA, and the
// host memory budget.
#include "memory/host_pool.h"

#include <ATen/ops/from_blob.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

#include "core/units.h"

namespace memo::memory {

namespace {

std::atomic<int64_t> g_live{0};
std::atomic<int64_t> g_live_pinned{0};

constexpr double kGiB = static_cast<double>(1ll << 30);

int64_t page_size() {
  static const int64_t page = [] {
    const long p = ::sysconf(_SC_PAGESIZE);
    return p > 0 ? static_cast<int64_t>(p) : int64_t{4096};
  }();
  return page;
}

// Runs when the last tensor viewing the pool goes: unpin, unmap, uncount.
// Never throws (it runs inside a tensor's destructor).
void release(void* ptr, int64_t bytes, bool pinned, c10::DeviceIndex device) {
#ifdef MEMO_WITH_CUDA
  if (pinned) {
    try {
      cuda_unpin_host(ptr, device);
    } catch (...) {
    }
  }
#else
  (void)device;
#endif
  ::munmap(ptr, static_cast<size_t>(bytes));
  g_live.fetch_sub(bytes);
  if (pinned) g_live_pinned.fetch_sub(bytes);
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string trim(std::string s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  const auto e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

// "Key:   123 kB" lines -> bytes by key.
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

// A whole number of bytes, or nothing ("max", empty, junk).
bool parse_bytes(const std::string& text, double& bytes) {
  const std::string t = trim(text);
  if (t.empty() || t == "max") return false;
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(t.c_str(), &end);
  if (errno != 0 || end == t.c_str() || *end != '\0' || v <= 0) return false;
  bytes = v;
  return true;
}

}  // namespace

HostPool::HostPool(int64_t bytes, c10::Device device) {
  const int64_t page = page_size();
  mapped_ = std::max<int64_t>(1, (std::max<int64_t>(bytes, 1) + page - 1) / page) * page;
  void* ptr = ::mmap(nullptr, static_cast<size_t>(mapped_), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                     -1, 0);
  if (ptr == MAP_FAILED)
    throw HostMemoryError(cat("host memory: cannot map a pool of ", format_bytes(static_cast<double>(mapped_)),
                              " (", std::strerror(errno), "); use a smaller --host-memory-gib, a shorter --seq-len "
                              "or --policy recompute"),
                          static_cast<double>(mapped_), 0.0);
  const c10::DeviceIndex index = device.has_index() ? device.index() : 0;
  bool pinned = false;
#ifdef MEMO_WITH_CUDA
  if (device.is_cuda()) {
    try {
      pin_seconds_ = cuda_pin_host(ptr, mapped_, index);
    } catch (...) {
      ::munmap(ptr, static_cast<size_t>(mapped_));
      throw;
    }
    pinned = true;
  }
#endif
  pinned_ = pinned ? mapped_ : 0;
  g_live.fetch_add(mapped_);
  if (pinned) g_live_pinned.fetch_add(mapped_);
  const int64_t size = mapped_;
  tensor_ = at::from_blob(
      ptr, {mapped_}, [size, pinned, index](void* p) { release(p, size, pinned, index); },
      at::TensorOptions().dtype(at::kByte).device(at::kCPU));
}

int64_t HostPool::live_bytes() { return g_live.load(); }
int64_t HostPool::live_pinned_bytes() { return g_live_pinned.load(); }

HostBudget host_budget_from(double flag_gib, const std::string& meminfo, const std::string& cgroup_max,
                            const std::string& cgroup_current) {
  if (flag_gib > 0) return {flag_gib * kGiB, "--host-memory-gib"};
  const double f = kHostBudgetFraction;
  HostBudget b;
  const auto m = parse_meminfo(meminfo);
  const auto get = [&](const char* key) {
    auto it = m.find(key);
    return it == m.end() ? 0.0 : it->second;
  };
  const double total = get("MemTotal"), available = get("MemAvailable");
  const double in_use = get("AnonPages") + get("Shmem");
  if (total > 0) {
    const double by_total = f * total - in_use;
    if (by_total >= available / 2)
      b = {by_total, strf("MemTotal %s x %.2f - %s in use (AnonPages + Shmem), /proc/meminfo",
                          format_bytes(total).c_str(), f, format_bytes(in_use).c_str())};
    else
      b = {available / 2, strf("MemAvailable %s / 2, /proc/meminfo", format_bytes(available).c_str())};
  } else {
    b = {0, "unknown (no MemTotal in /proc/meminfo): no limit; set --host-memory-gib"};
  }
  double limit = 0;
  if (parse_bytes(cgroup_max, limit)) {
    double current = 0;
    if (!parse_bytes(cgroup_current, current)) current = 0;
    const double by_cgroup = std::max(0.0, f * limit - current);
    if (b.bytes <= 0 || by_cgroup < b.bytes)
      b = {by_cgroup, strf("cgroup memory.max %s x %.2f - %s in use (memory.current)",
                           format_bytes(limit).c_str(), f, format_bytes(current).c_str())};
  }
  return b;
}

HostBudget host_budget(double flag_gib) {
  if (flag_gib > 0) return host_budget_from(flag_gib, "", "", "");
  // cgroup v2: "0::/path" names this process's group under /sys/fs/cgroup.
  std::string group;
  {
    std::istringstream in(read_text("/proc/self/cgroup"));
    for (std::string line; std::getline(in, line);)
      if (line.rfind("0::", 0) == 0) group = trim(line.substr(3));
  }
  std::string dir = "/sys/fs/cgroup" + (group == "/" ? std::string() : group);
  std::string max = read_text(dir + "/memory.max");
  if (max.empty()) {  // a namespaced cgroup shows its own group as the root
    dir = "/sys/fs/cgroup";
    max = read_text(dir + "/memory.max");
  }
  auto b = host_budget_from(0, read_text("/proc/meminfo"), max, read_text(dir + "/memory.current"));
  if (b.source.rfind("cgroup", 0) == 0) b.source += ", " + dir;
  return b;
}

}  // namespace memo::memory
