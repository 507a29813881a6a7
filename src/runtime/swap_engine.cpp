// SwapEngine: stream-ordered copies with events; synchronous on CPU.
#include "runtime/swap_engine.h"

#include <ATen/ATen.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>

namespace memo::runtime {

namespace {
int64_t bytes_of(const std::vector<CopyPair>& pairs) {
  int64_t b = 0;
  for (const auto& p : pairs) b += static_cast<int64_t>(p.src.numel() * p.src.element_size());
  return b;
}
}  // namespace

SwapEngine::SwapEngine(c10::Device device, TraceRecorder* trace) : device_(device), trace_(trace) {
  if (async()) {
    c10::impl::VirtualGuardImpl impl(device_.type());
    compute_ = impl.getStream(device_);
    d2h_ = impl.getStreamFromGlobalPool(device_, /*isHighPriority=*/false);
    h2d_ = impl.getStreamFromGlobalPool(device_, /*isHighPriority=*/false);
    if (*h2d_ == *d2h_) h2d_ = impl.getNewStream(device_);
  }
}

SwapEngine::~SwapEngine() {
  // Outside any step: the host waits, so nothing the copies use is freed under them.
  try {
    synchronize();
    drain();
  } catch (...) {
  }
}

c10::Stream SwapEngine::compute_stream() const {
  return compute_ ? *compute_ : c10::Stream(c10::Stream::DEFAULT, device_);
}

void SwapEngine::run(Lane lane, Unit unit, std::vector<CopyPair>& pairs,
                     const c10::Stream& stream, Pending& pending, bool after_copy_out) {
  const char* verb = lane == Lane::DeviceToHost ? "d2h " : "h2d ";
  if (!async()) {
    TraceSpan span(trace_, lane, verb, unit, bytes_of(pairs), stream);
    for (auto& p : pairs) p.dst.copy_(p.src);
    return;
  }
  // The side stream starts after the compute queued so far (and, for
  // copy-in, after every copy-out: the host data must be complete).
  c10::Event ready(device_.type());
  ready.record(*compute_);
  ready.block(stream);
  if (after_copy_out && last_copy_out_) last_copy_out_->block(stream);
  {
    c10::StreamGuard guard(stream);
    TraceSpan span(trace_, lane, verb, unit, bytes_of(pairs), stream);
    for (auto& p : pairs) p.dst.copy_(p.src, /*non_blocking=*/true);
  }
  pending.done = std::make_unique<c10::Event>(device_.type());
  pending.done->record(stream);
  pending.pairs = std::move(pairs);  // keeps sources and destinations alive
}

void SwapEngine::copy_out(Unit unit, std::vector<CopyPair> pairs) {
  auto& p = out_[unit];
  run(Lane::DeviceToHost, unit, pairs, d2h_ ? *d2h_ : compute_stream(), p, false);
  if (async()) {
    last_copy_out_ = std::make_unique<c10::Event>(device_.type());
    last_copy_out_->record(*d2h_);
  }
}

void SwapEngine::copy_in(Unit unit, std::vector<CopyPair> pairs) {
  auto& p = in_[unit];
  run(Lane::HostToDevice, unit, pairs, h2d_ ? *h2d_ : compute_stream(), p, true);
}

void SwapEngine::wait(std::map<Unit, Pending>& table, Unit unit) {
  auto it = table.find(unit);
  if (it == table.end()) return;
  if (it->second.done) it->second.done->block(*compute_);
  table.erase(it);  // tensors may be released: later compute is ordered after the copy
}

void SwapEngine::wait_copy_out(Unit unit) { wait(out_, unit); }
void SwapEngine::wait_copy_in(Unit unit) { wait(in_, unit); }

void SwapEngine::drain() {
  if (async()) {
    // One event per side stream covers every copy queued on it so far.
    for (const auto& side : {d2h_, h2d_}) {
      if (!side) continue;
      c10::Event done(device_.type());
      done.record(*side);
      done.block(*compute_);
    }
  }
  out_.clear();
  in_.clear();
  last_copy_out_.reset();
}

void SwapEngine::synchronize() {
  if (!async()) return;
  if (d2h_) d2h_->synchronize();
  if (h2d_) h2d_->synchronize();
}

}  // namespace memo::runtime
