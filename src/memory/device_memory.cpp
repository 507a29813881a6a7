// Counting CPU allocator and device memory statistics.
#include "memory/device_memory.h"

#include <ATen/Context.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/CachingDeviceAllocator.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <atomic>
#include <cstring>

namespace memo::memory {

namespace {

// Wraps the default CPU allocator; every DataPtr it hands out carries a
// context that remembers its size, so the free is counted too.
class CountingCpuAllocator final : public c10::Allocator {
 public:
  explicit CountingCpuAllocator(c10::Allocator* base) : base_(base) {}

  c10::DataPtr allocate(size_t n) override {
    c10::DataPtr inner = base_->allocate(n);
    void* data = inner.get();
    auto* ctx = new Context{std::move(inner), n, this};
    mallocs_.fetch_add(1);
    add(static_cast<int64_t>(n));
    return {data, ctx, &CountingCpuAllocator::release, c10::Device(c10::DeviceType::CPU)};
  }

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
  struct Context {
    c10::DataPtr inner;
    size_t bytes;
    CountingCpuAllocator* owner;
  };

  static void release(void* p) {
    auto* ctx = static_cast<Context*>(p);
    ctx->owner->frees_.fetch_add(1);
    ctx->owner->add(-static_cast<int64_t>(ctx->bytes));
    delete ctx;  // frees the inner allocation
  }

  void add(int64_t delta) {
    int64_t now = current_.fetch_add(delta) + delta;
    int64_t peak = peak_.load();
    while (now > peak && !peak_.compare_exchange_weak(peak, now)) {
    }
  }

  c10::Allocator* base_;
  std::atomic<int64_t> current_{0};
  std::atomic<int64_t> peak_{0};
  std::atomic<int64_t> mallocs_{0};
  std::atomic<int64_t> frees_{0};
};

CountingCpuAllocator* g_meter = nullptr;
DeviceMemorySource* g_device_source = nullptr;

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
