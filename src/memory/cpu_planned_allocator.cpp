// The CPU half of the planned allocator: a c10::Allocator installed as the
// CPU allocator (above the memory meter), so the planning logic runs in CI.
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <cstring>

#include "memory/device_memory.h"
#include "memory/planned_allocator.h"
#include "memory/pointer_planned_allocator.h"

namespace memo::memory {

namespace {

// Every DataPtr it hands out has the data pointer as its context and one
// plain deleter (raw_deleter()), as c10's own CPU allocator does: oneDNN
// (ideep, used for bfloat16 matmuls on CPU) allocates through
// Allocator::raw_allocate, which requires exactly that. The pointer -> grant
// bookkeeping is PointerPlannedAllocator's, the same as the CUDA half's.
class CpuPlannedAllocator final : public PointerPlannedAllocator, public c10::Allocator {
 public:
  explicit CpuPlannedAllocator(c10::Allocator* base) : base_(base) {}

  c10::DeviceType device_type() const override { return c10::DeviceType::CPU; }
  int64_t alignment() const override { return 64; }  // c10's CPU alignment

  c10::DataPtr allocate(size_t n) override {
    void* data = malloc(n, nullptr);  // nullptr for 0 bytes: no free will come
    return {data, data, &free_raw, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &free_raw; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    std::memcpy(dest, src, count);
  }

 protected:
  void* fallback_malloc(size_t n, void*) override { return base_->raw_allocate(n); }
  void fallback_free(void* p) override { base_->raw_deallocate(p); }
  void* allocate_arena(int64_t bytes) override {
    arena_ = base_->allocate(static_cast<size_t>(bytes));
    return arena_.get();
  }
  void free_arena(void*) override { arena_ = c10::DataPtr(); }

 private:
  static void free_raw(void* p);

  c10::Allocator* base_;  // the memory meter (raw_allocate-capable)
  c10::DataPtr arena_;
};

CpuPlannedAllocator* g_cpu_planned = nullptr;  // the one instance (installed once)

void CpuPlannedAllocator::free_raw(void* p) { g_cpu_planned->free(p); }

}  // namespace

PlannedAllocator& install_cpu_planned_allocator() {
  // The meter goes below, so memory statistics see what the planner passes
  // on (installed later, it could not get under a higher-priority allocator).
  install_cpu_memory_meter();
  // Lives for the whole process: tensors it handed out may outlive any scope.
  auto* a = new CpuPlannedAllocator(c10::GetCPUAllocator());
  g_cpu_planned = a;
  c10::SetCPUAllocator(a, /*priority=*/200);
  PlannedAllocator::set_instance(a);
  return *a;
}

}  // namespace memo::memory
