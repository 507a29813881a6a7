// The raw-pointer planned allocator that the CUDA half wraps, driven on CPU
// with a malloc-backed fallback: planned requests land at arena + offset,
// zero-byte requests keep the request count in step, a failing fallback books
// nothing, and live/peak bytes (what CUDA reports as allocated) add up.
#include <gtest/gtest.h>

#include <cstdlib>
#include <new>
#include <set>

#include "memory/pointer_planned_allocator.h"
#include "plan/bilevel.h"

namespace memo {
namespace {

class HeapPlanned final : public memory::PointerPlannedAllocator {
 public:
  c10::DeviceType device_type() const override { return c10::DeviceType::CPU; }
  int64_t alignment() const override { return 64; }

  int fallback_mallocs = 0, fallback_frees = 0;
  bool fail_next = false;
  std::set<void*> arena_seen;

  char* arena() const { return arena_base(); }

 protected:
  void* fallback_malloc(size_t n, void*) override {
    if (fail_next) throw std::bad_alloc();
    fallback_mallocs++;
    return std::malloc(n);
  }
  void fallback_free(void* p) override {
    fallback_frees++;
    std::free(p);
  }
  void* allocate_arena(int64_t bytes) override { return std::malloc(static_cast<size_t>(bytes)); }
  void free_arena(void* arena) override { std::free(arena); }
};

// Requests a (0..), b (1..), both freed: the recorded trace, then a plan.
plan::BilevelPlan two_buffer_plan(int64_t a_bytes, int64_t b_bytes) {
  plan::BilevelPlan p;
  p.arena_bytes = 1024;
  p.placements = {{plan::Placement::Kind::Arena, a_bytes, 0}, {plan::Placement::Kind::Arena, b_bytes, 512}};
  return p;
}

TEST(PointerPlannedAllocator, PlannedRequestsLandAtArenaPlusOffset) {
  HeapPlanned h;
  h.arm(two_buffer_plan(100, 200));
  h.begin_step();
  void* a = h.malloc(100, nullptr);
  void* b = h.malloc(200, nullptr);
  EXPECT_EQ(a, h.arena());
  EXPECT_EQ(b, h.arena() + 512);
  EXPECT_EQ(h.live_bytes(), 300);
  h.free(a);
  h.free(b);
  h.end_step();
  EXPECT_EQ(h.fallback_mallocs, 0);
  EXPECT_EQ(h.stats().planned, 2);
  EXPECT_EQ(h.live_bytes(), 0);
  EXPECT_EQ(h.peak_bytes(), 300);
  h.disarm();
}

TEST(PointerPlannedAllocator, ZeroByteRequestsReturnNullAndKeepTheRequestCount) {
  // The plan was profiled with a zero-byte request between a and b: b must
  // still be request 2 and land at its offset.
  HeapPlanned h;
  plan::BilevelPlan p;
  p.arena_bytes = 1024;
  p.placements = {{plan::Placement::Kind::Arena, 100, 0},
                  {plan::Placement::Kind::Arena, 0, 128},
                  {plan::Placement::Kind::Arena, 200, 512}};
  h.arm(p);
  h.begin_step();
  void* a = h.malloc(100, nullptr);
  EXPECT_EQ(h.malloc(0, nullptr), nullptr);
  void* b = h.malloc(200, nullptr);
  EXPECT_EQ(b, h.arena() + 512);
  h.free(a);
  h.free(b);
  h.end_step();
  EXPECT_EQ(h.stats().fallback, 0);
  h.disarm();  // throws if the zero-byte grant were still booked live
}

TEST(PointerPlannedAllocator, MismatchedSizeGoesToTheFallbackAndIsFreedThere) {
  HeapPlanned h;
  h.arm(two_buffer_plan(100, 200));
  h.begin_step();
  void* a = h.malloc(100, nullptr);
  void* b = h.malloc(300, nullptr);  // the plan expected 200
  EXPECT_NE(b, h.arena() + 512);
  EXPECT_EQ(h.fallback_mallocs, 1);
  h.free(b);
  h.free(a);
  h.end_step();
  EXPECT_EQ(h.fallback_frees, 1);
  const auto s = h.stats();
  EXPECT_EQ(s.fallback, 1);
  EXPECT_EQ(s.first_fallback_request, 1);
  EXPECT_EQ(s.first_fallback_bytes, 300);
  EXPECT_EQ(s.base_allocs, s.base_frees);
  h.disarm();
}

TEST(PointerPlannedAllocator, AFailingFallbackBooksNothing) {
  HeapPlanned h;
  h.begin_step();
  h.fail_next = true;
  EXPECT_THROW(h.malloc(64, nullptr), std::bad_alloc);
  h.end_step();
  const auto s = h.stats();
  EXPECT_EQ(s.base_allocs, s.base_frees);
  EXPECT_EQ(h.live_bytes(), 0);
}

TEST(PointerPlannedAllocator, RecordingLogsEveryRequestAndItsFree) {
  HeapPlanned h;
  h.start_recording();
  h.begin_step();
  void* a = h.malloc(64, nullptr);
  EXPECT_EQ(h.malloc(0, nullptr), nullptr);
  void* b = h.malloc(32, nullptr);
  h.free(a);
  h.end_step();
  const auto t = h.stop_recording();
  ASSERT_EQ(t.requests.size(), 3u);
  EXPECT_EQ(t.requests[0].bytes, 64);
  EXPECT_GE(t.requests[0].free_time, 0);
  EXPECT_GE(t.requests[1].free_time, 0) << "a zero-byte request is freed at once";
  EXPECT_EQ(t.requests[2].free_time, -1) << "b outlives the step";
  h.free(b);
}

// A side stream as the pluggable CUDA allocator would pass it (opaque handle).
void* const kSideStream = reinterpret_cast<void*>(0x5151);

plan::SolveOptions deterministic() {
  plan::SolveOptions o;
  o.node_limit = 50;
  return o;
}

TEST(PointerPlannedAllocator, RequestsOnAnotherStreamAreRecordedAsSuchAndLeftToTheFallback) {
  // Profile: a and c on the compute stream, b on a side stream, all freed in
  // the step. The plan puts a and c in the arena and leaves b to the fallback:
  // reusing b's bytes in host order would race with the side stream.
  HeapPlanned h;
  auto step = [&h] {
    h.begin_step();
    void* a = h.malloc(256, nullptr);
    void* b = h.malloc(256, kSideStream);
    h.free(a);
    h.free(b);
    h.free(h.malloc(256, nullptr));
    h.end_step();
  };
  h.start_recording();
  step();
  const auto trace = h.stop_recording();
  ASSERT_EQ(trace.requests.size(), 3u);
  EXPECT_EQ(trace.requests[0].stream, 0);
  EXPECT_EQ(trace.requests[1].stream, 1);
  EXPECT_EQ(trace.requests[2].stream, 0);
  const auto plan = plan::plan_bilevel(trace, 64, deterministic());
  EXPECT_EQ(plan.placements[0].kind, plan::Placement::Kind::Arena);
  EXPECT_EQ(plan.placements[1].kind, plan::Placement::Kind::Fallback);
  EXPECT_EQ(plan.placements[2].kind, plan::Placement::Kind::Arena);

  // Replayed, b goes to the fallback as planned: not a miss.
  h.arm(plan);
  h.reset_counters();
  step();
  EXPECT_EQ(h.stats().planned, 2);
  EXPECT_EQ(h.stats().fallback, 0);
  EXPECT_EQ(h.fallback_mallocs, 4);  // all three while profiling, then b only
  h.disarm();
}

TEST(PointerPlannedAllocator, APlannedRequestArrivingOnAnotherStreamIsAFallbackNotArenaBytes) {
  HeapPlanned h;
  h.arm(two_buffer_plan(100, 200));
  h.begin_step();
  void* a = h.malloc(100, kSideStream);
  EXPECT_NE(a, h.arena());
  EXPECT_EQ(h.fallback_mallocs, 1);
  EXPECT_EQ(h.stats().fallback, 1);
  h.free(a);
  h.end_step();
  h.disarm();
}

TEST(PointerPlannedAllocator, UnknownPointersAreIgnored) {
  HeapPlanned h;
  int x = 0;
  h.free(&x);
  h.free(nullptr);
  EXPECT_EQ(h.fallback_frees, 0);
  EXPECT_EQ(h.stats().base_frees, 0);
}

}  // namespace
}  // namespace memo
