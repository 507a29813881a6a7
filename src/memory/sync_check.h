// A scope in which a host synchronisation with the device is an error: on
// CUDA, c10's sync-debug mode set to error, so an .item(), a blocking copy or
// a stream/event/device synchronize made through c10 throws c10::Error
// ("called a synchronizing CUDA operation") instead of stalling the host.
// Elsewhere (CPU, or a build without MEMO_CUDA) it does nothing. Tests arm it
// around a training step between the embedding and the optimizer.
#pragma once

#include <c10/core/Device.h>

namespace memo::memory {

class ScopedSyncCheck {
 public:
  explicit ScopedSyncCheck(const c10::Device& device);
  ~ScopedSyncCheck();
  ScopedSyncCheck(const ScopedSyncCheck&) = delete;
  ScopedSyncCheck& operator=(const ScopedSyncCheck&) = delete;

  // True when the check is in force (a CUDA device in a CUDA build).
  bool armed() const { return armed_; }

 private:
  bool armed_ = false;
  int previous_ = 0;  // the mode to restore
};

}  // namespace memo::memory
