// Timeline of one step's streams (compute, device-to-host, host-to-device) in
// Chrome trace format, which Perfetto and chrome://tracing open. Spans are
// timed with device events on CUDA (so async copies show where they really
// ran) and with the host clock on CPU, where every copy is synchronous.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/Event.h>
#include <c10/core/Stream.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "runtime/unit.h"

namespace memo::runtime {

// Comm: collectives between ranks (dist/comm.h), as the host saw them.
enum class Lane { Compute = 0, DeviceToHost = 1, HostToDevice = 2, Comm = 3 };
const char* lane_name(Lane lane);

struct Span {
  Lane lane;
  std::string name;  // "fwd 3", "d2h 3", "recompute 3"...
  int64_t layer = -1;
  int64_t bytes = 0;
  double start_us = 0.0;
  double duration_us = 0.0;
};

class TraceRecorder {
 public:
  explicit TraceRecorder(c10::Device device);
  ~TraceRecorder();

  bool enabled() const { return enabled_; }
  void set_enabled(bool on) { enabled_ = on; }

  // The device's current (compute) stream.
  c10::Stream current_stream() const;
  // Opens and closes a span on the current stream.
  int64_t begin(Lane lane, const std::string& name, int64_t layer) {
    return begin(lane, name, layer, 0, current_stream());
  }
  void end(int64_t handle) { end(handle, current_stream()); }

  // Opens a span on `stream` (ignored on CPU); returns its handle.
  int64_t begin(Lane lane, const std::string& name, int64_t layer, int64_t bytes,
                const c10::Stream& stream);
  void end(int64_t handle, const c10::Stream& stream);

  // A span timed on the host clock (a collective from issue to completion,
  // dist::CommSpan), placed on the recorder's host timeline.
  void add_host_span(Lane lane, const std::string& name, int64_t bytes,
                     std::chrono::steady_clock::time_point start, std::chrono::steady_clock::time_point end);

  // Resolves event timings (the device must be synchronised) and appends the
  // spans to the finished list; times count from the recorder's creation on
  // CPU, from its first span's start on a device.
  void flush();

  // {"traceEvents": [...]} with one named thread per lane.
  std::string chrome_json() const;
  void write(const std::string& path) const;

 private:
  struct Pending;
  c10::Device device_;
  bool enabled_ = false;
  std::vector<std::unique_ptr<Pending>> pending_;
  std::vector<Span> spans_;
  std::chrono::steady_clock::time_point origin_;
  std::unique_ptr<c10::Event> origin_event_;
  std::chrono::steady_clock::time_point origin_host_;  // when origin_event_ was recorded
};

// A span that closes itself when it goes out of scope, like
// memory::RegionScope: TraceSpan span(trace, Lane::Compute, "fwd ", i);
// names the span "fwd 3" (a chunk's unit: "fwd 3.1"). Nothing is recorded (and no name is built) when
// `trace` is null or not enabled. The stream is the device's current one
// unless given (a copy engine's side stream).
class TraceSpan {
 public:
  TraceSpan(TraceRecorder* trace, Lane lane, const char* verb, Unit unit, int64_t bytes = 0)
      : trace_(trace && trace->enabled() ? trace : nullptr) {
    if (trace_) {
      stream_ = trace_->current_stream();
      handle_ = trace_->begin(lane, verb + to_string(unit), unit.layer, bytes, *stream_);
    }
  }
  TraceSpan(TraceRecorder* trace, Lane lane, const char* verb, Unit unit, int64_t bytes,
            const c10::Stream& stream)
      : trace_(trace && trace->enabled() ? trace : nullptr), stream_(stream) {
    if (trace_) handle_ = trace_->begin(lane, verb + to_string(unit), unit.layer, bytes, stream);
  }
  ~TraceSpan() {
    if (trace_) trace_->end(handle_, *stream_);
  }
  TraceSpan(const TraceSpan&) = delete;
  TraceSpan& operator=(const TraceSpan&) = delete;

 private:
  TraceRecorder* trace_;
  std::optional<c10::Stream> stream_;
  int64_t handle_ = -1;
};

}  // namespace memo::runtime
