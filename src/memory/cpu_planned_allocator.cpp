// The CPU half of the planned allocator: a c10::Allocator installed as the
// CPU allocator (above the memory meter), so the planning logic runs in CI.
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <cstring>

#include "memory/device_memory.h"
#include "memory/planned_allocator.h"

namespace memo::memory {

namespace {

class CpuPlannedAllocator final : public PlannedAllocator, public c10::Allocator {
 public:
  explicit CpuPlannedAllocator(c10::Allocator* base) : base_(base) {}

  c10::DeviceType device_type() const override { return c10::DeviceType::CPU; }
  int64_t alignment() const override { return 64; }  // c10's CPU alignment

  c10::DataPtr allocate(size_t n) override {
    const Grant g = acquire(n);
    auto* block = new Block{this, g, {}};
    void* data = nullptr;
    if (g.offset >= 0) {
      data = arena_base() + g.offset;
    } else {
      block->inner = base_->allocate(n);
      data = block->inner.get();
    }
    return {data, block, &CpuPlannedAllocator::free_block, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    std::memcpy(dest, src, count);
  }

 protected:
  void* allocate_arena(int64_t bytes) override {
    arena_ = base_->allocate(static_cast<size_t>(bytes));
    return arena_.get();
  }
  void free_arena(void*) override { arena_ = c10::DataPtr(); }

 private:
  // What every DataPtr handed out carries, so its free is seen too.
  struct Block {
    CpuPlannedAllocator* owner;
    Grant grant;
    c10::DataPtr inner;  // from the wrapped allocator (empty for arena blocks)
  };

  static void free_block(void* ctx) {
    auto* block = static_cast<Block*>(ctx);
    block->owner->release(block->grant);
    delete block;  // frees the inner allocation, if any
  }

  c10::Allocator* base_;
  c10::DataPtr arena_;
};

}  // namespace

PlannedAllocator& install_cpu_planned_allocator() {
  // The meter goes below, so memory statistics see what the planner passes
  // on (installed later, it could not get under a higher-priority allocator).
  install_cpu_memory_meter();
  // Lives for the whole process: tensors it handed out may outlive any scope.
  auto* a = new CpuPlannedAllocator(c10::GetCPUAllocator());
  c10::SetCPUAllocator(a, /*priority=*/200);
  PlannedAllocator::set_instance(a);
  return *a;
}

}  // namespace memo::memory
