// TraceRecorder: event- or clock-timed spans, Chrome trace output.
#include "runtime/trace.h"

#include <nlohmann/json.hpp>

#include <algorithm>

#include <c10/core/impl/VirtualGuardImpl.h>

#include "core/files.h"

namespace memo::runtime {

const char* lane_name(Lane lane) {
  switch (lane) {
    case Lane::Compute: return "compute";
    case Lane::DeviceToHost: return "device-to-host";
    case Lane::HostToDevice: return "host-to-device";
    case Lane::Comm: return "comm";
  }
  return "?";
}

struct TraceRecorder::Pending {
  Span span;
  std::chrono::steady_clock::time_point host_start, host_end;
  std::unique_ptr<c10::Event> start, end;
};

TraceRecorder::TraceRecorder(c10::Device device)
    : device_(device), origin_(std::chrono::steady_clock::now()) {}

TraceRecorder::~TraceRecorder() = default;

c10::Stream TraceRecorder::current_stream() const {
  if (device_.is_cpu()) return c10::Stream(c10::Stream::DEFAULT, device_);
  return c10::impl::VirtualGuardImpl(device_.type()).getStream(device_);
}

int64_t TraceRecorder::begin(Lane lane, const std::string& name, int64_t layer, int64_t bytes,
                             const c10::Stream& stream) {
  if (!enabled_) return -1;
  auto p = std::make_unique<Pending>();
  p->span = {lane, name, layer, bytes, 0.0, 0.0};
  if (device_.is_cpu()) {
    p->host_start = std::chrono::steady_clock::now();
  } else {
    if (!origin_event_) {
      origin_event_ = std::make_unique<c10::Event>(device_.type(), c10::EventFlag::BACKEND_DEFAULT);
      origin_event_->record(stream);
      origin_host_ = std::chrono::steady_clock::now();
    }
    p->start = std::make_unique<c10::Event>(device_.type(), c10::EventFlag::BACKEND_DEFAULT);
    p->start->record(stream);
  }
  pending_.push_back(std::move(p));
  return static_cast<int64_t>(pending_.size()) - 1;
}

void TraceRecorder::end(int64_t handle, const c10::Stream& stream) {
  if (!enabled_ || handle < 0) return;
  auto& p = *pending_[static_cast<size_t>(handle)];
  if (device_.is_cpu()) {
    p.host_end = std::chrono::steady_clock::now();
  } else {
    p.end = std::make_unique<c10::Event>(device_.type(), c10::EventFlag::BACKEND_DEFAULT);
    p.end->record(stream);
  }
}

void TraceRecorder::flush() {
  using us = std::chrono::duration<double, std::micro>;
  for (auto& p : pending_) {
    Span s = p->span;
    if (device_.is_cpu()) {
      s.start_us = us(p->host_start - origin_).count();
      s.duration_us = us(p->host_end - p->host_start).count();
    } else if (p->start && p->end) {
      s.start_us = origin_event_->elapsedTime(*p->start) * 1000.0;
      s.duration_us = p->start->elapsedTime(*p->end) * 1000.0;
    }
    spans_.push_back(s);
  }
  pending_.clear();
}

void TraceRecorder::add_host_span(Lane lane, const std::string& name, int64_t bytes,
                                  std::chrono::steady_clock::time_point start,
                                  std::chrono::steady_clock::time_point end) {
  if (!enabled_) return;
  using us = std::chrono::duration<double, std::micro>;
  // On a device the timeline starts at the first span's event: the host time
  // it was recorded at stands in for it (so host spans are placed to within
  // the launch queue's depth).
  const auto origin = device_.is_cpu() || !origin_event_ ? origin_ : origin_host_;
  spans_.push_back({lane, name, -1, bytes, us(start - origin).count(), us(end - start).count()});
}

std::string TraceRecorder::chrome_json() const {
  nlohmann::json events = nlohmann::json::array();
  std::vector<Lane> lanes = {Lane::Compute, Lane::DeviceToHost, Lane::HostToDevice};
  if (std::any_of(spans_.begin(), spans_.end(), [](const Span& s) { return s.lane == Lane::Comm; }))
    lanes.push_back(Lane::Comm);  // many ranks only
  for (Lane lane : lanes)
    events.push_back({{"name", "thread_name"},
                      {"ph", "M"},
                      {"pid", 0},
                      {"tid", static_cast<int>(lane)},
                      {"args", {{"name", lane_name(lane)}}}});
  for (const auto& s : spans_)
    events.push_back({{"name", s.name},
                      {"cat", lane_name(s.lane)},
                      {"ph", "X"},
                      {"pid", 0},
                      {"tid", static_cast<int>(s.lane)},
                      {"ts", s.start_us},
                      {"dur", s.duration_us},
                      {"args", {{"layer", s.layer}, {"bytes", s.bytes}, {"stream", lane_name(s.lane)}}}});
  return nlohmann::json{{"traceEvents", events}, {"displayTimeUnit", "ms"}}.dump(1);
}

void TraceRecorder::write(const std::string& path) const { write_file_atomic(path, chrome_json() + "\n"); }

}  // namespace memo::runtime
