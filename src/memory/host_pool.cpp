// Host pools mapped with mmap, pinned through src/cuda/ on CUDA, and the
// host memory budget (from the figures memory/host_memory.h reads).
#include "memory/host_pool.h"

#include <ATen/ops/from_blob.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <map>

#include "core/units.h"
#include "memory/host_memory.h"

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

// The pools' budget from the parsed figures: see host_budget_from.
HostBudget budget_from(const std::map<std::string, double>& meminfo, int64_t cgroup_limit, int64_t cgroup_usage) {
  const double f = kHostBudgetFraction;
  HostBudget b;
  const auto get = [&](const char* key) {
    auto it = meminfo.find(key);
    return it == meminfo.end() ? 0.0 : it->second;
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
  if (cgroup_limit > 0) {
    const double limit = static_cast<double>(cgroup_limit);
    const double current = static_cast<double>(std::max<int64_t>(0, cgroup_usage));
    const double by_cgroup = std::max(0.0, f * limit - current);
    if (b.bytes <= 0 || by_cgroup < b.bytes)
      b = {by_cgroup, strf("cgroup memory.max %s x %.2f - %s in use (memory.current)",
                           format_bytes(limit).c_str(), f, format_bytes(current).c_str())};
  }
  return b;
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
  return budget_from(parse_meminfo(meminfo), parse_cgroup_bytes(cgroup_max), parse_cgroup_bytes(cgroup_current));
}

HostBudget host_budget(double flag_gib) {
  if (flag_gib > 0) return host_budget_from(flag_gib, "", "", "");
  // The cgroup (the process's own or an ancestor) that leaves the least.
  const CgroupMemory* tightest = nullptr;
  const auto cgroups = memory_cgroups();
  for (const auto& g : cgroups) {
    if (g.limit <= 0) continue;
    const auto room = [](const CgroupMemory& c) {
      return kHostBudgetFraction * static_cast<double>(c.limit) - static_cast<double>(std::max<int64_t>(0, c.usage));
    };
    if (!tightest || room(g) < room(*tightest)) tightest = &g;
  }
  auto b = budget_from(read_meminfo(), tightest ? tightest->limit : -1, tightest ? tightest->usage : -1);
  if (b.source.rfind("cgroup", 0) == 0) b.source += ", " + tightest->dir;
  return b;
}

}  // namespace memo::memory
