// Counting CPU allocator and device memory statistics.
#include "memory/device_memory.h"

#include <ATen/Context.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/CachingDeviceAllocator.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <unordered_map>

namespace memo::memory {

namespace {

// Wraps the default CPU allocator and counts bytes, mallocs and frees. Every
// DataPtr it hands out has the data pointer as its context and one plain
// deleter (raw_deleter()), as c10's own CPU allocator does: oneDNN (ideep,
// used for bfloat16 matmuls on CPU) allocates through
// Allocator::raw_allocate, which requires exactly that. The sizes are kept
// in a map by pointer so the free is counted too.
class CountingCpuAllocator final : public c10::Allocator {
 public:
  explicit CountingCpuAllocator(c10::Allocator* base) : base_(base) {}

  c10::DataPtr allocate(size_t n) override {
    void* data = base_->raw_allocate(n);  // nullptr for 0 bytes: no malloc, no free will come
    if (data != nullptr) {
      {
        std::lock_guard<std::mutex> lock(mutex_);
        sizes_[data] = n;
      }
      mallocs_.fetch_add(1);
      add(static_cast<int64_t>(n));
    }
    return {data, data, &CountingCpuAllocator::release, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &CountingCpuAllocator::release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    std::memcpy(dest, src, count);
  }

  MemoryStats stats() const {
    int64_t cur = current_.load();
    int64_t peak = peak_.load();
    return {cur, peak, cur, peak, mallocs_.load(), frees_.load()};
  }
  void reset_peak() { peak_.store(current_.load()); }

 private:
  static void release(void* p);

  void free_block(void* p) {
    size_t bytes = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = sizes_.find(p);
      if (it != sizes_.end()) {
        bytes = it->second;
        sizes_.erase(it);
      }
    }
    frees_.fetch_add(1);
    add(-static_cast<int64_t>(bytes));
    base_->raw_deallocate(p);
  }

  void add(int64_t delta) {
    int64_t now = current_.fetch_add(delta) + delta;
    int64_t peak = peak_.load();
    while (now > peak && !peak_.compare_exchange_weak(peak, now)) {
    }
  }

  c10::Allocator* base_;
  std::mutex mutex_;
  std::unordered_map<void*, size_t> sizes_;
  std::atomic<int64_t> current_{0};
  std::atomic<int64_t> peak_{0};
  std::atomic<int64_t> mallocs_{0};
  std::atomic<int64_t> frees_{0};
};

CountingCpuAllocator* g_meter = nullptr;
DeviceMemorySource* g_device_source = nullptr;

void CountingCpuAllocator::release(void* p) { g_meter->free_block(p); }

}  // namespace

void install_cpu_memory_meter() {
  if (g_meter) return;
  // Lives for the whole process: tensors it allocated may outlive any scope.
  g_meter = new CountingCpuAllocator(c10::GetDefaultCPUAllocator());
  c10::SetCPUAllocator(g_meter, /*priority=*/100);
}

bool cpu_memory_meter_installed() { return g_meter != nullptr; }

void set_device_memory_source(DeviceMemorySource* source) { g_device_source = source; }

void reset_peak_memory(const at::Device& device) {
  if (device.is_cpu()) {
    if (g_meter) g_meter->reset_peak();
    return;
  }
  if (g_device_source) return g_device_source->reset_peak();
  c10::getDeviceAllocator(device.type())->resetPeakStats(device.index() < 0 ? 0 : device.index());
}

MemoryStats memory_stats(const at::Device& device) {
  if (device.is_cpu()) return g_meter ? g_meter->stats() : MemoryStats{};
  if (g_device_source) return g_device_source->stats();
  auto s = c10::getDeviceAllocator(device.type())->getDeviceStats(device.index() < 0 ? 0 : device.index());
  const auto all = static_cast<size_t>(c10::CachingDeviceAllocator::StatType::AGGREGATE);
  return {s.allocated_bytes[all].current, s.allocated_bytes[all].peak,
          s.reserved_bytes[all].current,  s.reserved_bytes[all].peak,
          s.num_device_alloc,             s.num_device_free};
}

void release_cached_memory(const at::Device& device) {
  if (device.is_cpu()) return;
  synchronize(device);
  if (g_device_source) return g_device_source->release_cached();
  c10::getDeviceAllocator(device.type())->emptyCache();
}

DeviceMemoryInfo device_memory_info(const at::Device& device) {
  if (device.is_cpu()) return {};
  auto [free_b, total_b] =
      c10::getDeviceAllocator(device.type())->getMemoryInfo(device.index() < 0 ? 0 : device.index());
  return {static_cast<int64_t>(free_b), static_cast<int64_t>(total_b)};
}

double spare_device_bytes(const DeviceHeadroom& h, double planned, double slack) {
  const double cached = std::max(0.0, h.reserved - h.allocated);
  const double can_allocate = std::min(h.free + cached, std::max(0.0, h.total - h.allocated));
  return std::max(0.0, can_allocate - planned - slack);
}

void synchronize(const at::Device& device) {
  if (device.is_cpu()) return;
  c10::impl::getDeviceGuardImpl(device.type())
      ->synchronizeDevice(device.index() < 0 ? 0 : device.index());
}

bool cuda_available() { return at::hasCUDA(); }

int64_t device_total_memory(const at::Device& device) {
  if (device.is_cpu()) return -1;
  const auto [free_bytes, total_bytes] =
      c10::getDeviceAllocator(device.type())->getMemoryInfo(device.index() < 0 ? 0 : device.index());
  (void)free_bytes;
  return static_cast<int64_t>(total_bytes);
}

}  // namespace memo::memory
