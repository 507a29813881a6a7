// Moves activations between the device and pinned host memory on two side
// streams (device-to-host, host-to-device), ordered against the compute
// stream with events. On CPU the same calls copy synchronously, so every path
// runs in CI. Tensors handed to a copy are held until the copy is waited on,
// so the caching allocator cannot reuse them early.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Event.h>
#include <c10/core/Stream.h>

#include <map>
#include <memory>
#include <optional>
#include <vector>

#include "runtime/trace.h"

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

  // Device-to-host copies for `layer`, after all compute queued so far.
  void copy_out(int64_t layer, std::vector<CopyPair> pairs);
  // The compute stream waits until `layer`'s copy-out has finished.
  void wait_copy_out(int64_t layer);
  // Host-to-device copies for `layer`, after all compute queued so far and
  // after every copy-out issued so far (so host data is complete).
  void copy_in(int64_t layer, std::vector<CopyPair> pairs);
  void wait_copy_in(int64_t layer);

  // Waits for everything and forgets all pending copies.
  void drain();

 private:
  struct Pending {
    std::vector<CopyPair> pairs;
    std::unique_ptr<c10::Event> done;
  };
  void run(Lane lane, int64_t layer, std::vector<CopyPair>& pairs, const c10::Stream& stream,
           Pending& pending, bool after_copy_out);
  void wait(std::map<int64_t, Pending>& table, int64_t layer);

  c10::Device device_;
  TraceRecorder* trace_;
  std::optional<c10::Stream> compute_, d2h_, h2d_;
  std::unique_ptr<c10::Event> last_copy_out_;
  std::map<int64_t, Pending> out_, in_;
};

}  // namespace memo::runtime
