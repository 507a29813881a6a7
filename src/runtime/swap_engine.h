// Moves activations between the device and pinned host memory on two side
// streams (device-to-host, host-to-device), ordered against the compute
// stream with events. On CPU the same calls copy synchronously, so every path
// runs in CI. Tensors handed to a copy are held until the compute stream has
// been made to wait for the copy (wait_copy_*, drain); after that they may be
// freed: the host never waits.
//
// Why releasing after a stream wait is safe: every device tensor handed to a
// copy was allocated on the compute stream, and the caching allocator (and
// the planned one, whose plan is in compute-stream order) reuses a freed
// block only for a later allocation whose kernels are queued on the compute
// stream, that is after the wait, hence after the copy. The side streams
// allocate only their own staging (a non-contiguous source's contiguous
// copy), which stays in their own stream's order. Pinned host memory is the
// policy's pool, allocated once and never freed during training.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Event.h>
#include <c10/core/Stream.h>

#include <map>
#include <memory>
#include <optional>
#include <vector>

#include "runtime/trace.h"
#include "runtime/unit.h"

namespace memo::runtime {

struct CopyPair {
  at::Tensor dst;
  at::Tensor src;
};

class SwapEngine {
 public:
  SwapEngine(c10::Device device, TraceRecorder* trace);
  ~SwapEngine();

  bool async() const { return !device_.is_cpu(); }
  c10::Stream compute_stream() const;

  // Device-to-host copies for `unit`, after all compute queued so far.
  void copy_out(Unit unit, std::vector<CopyPair> pairs);
  // The compute stream waits until `unit`'s copy-out has finished.
  void wait_copy_out(Unit unit);
  // Host-to-device copies for `unit`, after all compute queued so far and
  // after every copy-out issued so far (so host data is complete).
  void copy_in(Unit unit, std::vector<CopyPair> pairs);
  void wait_copy_in(Unit unit);

  // The end of a step: the compute stream waits (on the device, not the
  // host) for every copy issued so far, and the pending copies are forgotten
  // (their tensors released, see above).
  void drain();
  // Waits on the host for both side streams (teardown, measurements).
  void synchronize();

  // Copies issued and not yet waited on or drained (their tensors are held).
  int64_t pending() const { return static_cast<int64_t>(out_.size() + in_.size()); }

 private:
  struct Pending {
    std::vector<CopyPair> pairs;
    std::unique_ptr<c10::Event> done;
  };
  void run(Lane lane, Unit unit, std::vector<CopyPair>& pairs, const c10::Stream& stream,
           Pending& pending, bool after_copy_out);
  void wait(std::map<Unit, Pending>& table, Unit unit);

  c10::Device device_;
  TraceRecorder* trace_;
  std::optional<c10::Stream> compute_, d2h_, h2d_;
  std::unique_ptr<c10::Event> last_copy_out_;
  std::map<Unit, Pending> out_, in_;
};

}  // namespace memo::runtime
