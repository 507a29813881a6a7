// ScopedSyncCheck on CUDA: c10's sync-debug mode (what
// torch.cuda.set_sync_debug_mode("error") sets), restored on exit.
#include <c10/cuda/CUDAFunctions.h>

#include "memory/sync_check.h"

namespace memo::memory {

ScopedSyncCheck::ScopedSyncCheck(const c10::Device& device) {
  if (!device.is_cuda()) return;
  auto& state = c10::cuda::warning_state();
  previous_ = static_cast<int>(state.get_sync_debug_mode());
  state.set_sync_debug_mode(c10::cuda::SyncDebugMode::L_ERROR);
  armed_ = true;
}

ScopedSyncCheck::~ScopedSyncCheck() {
  if (armed_) c10::cuda::warning_state().set_sync_debug_mode(static_cast<c10::cuda::SyncDebugMode>(previous_));
}

}  // namespace memo::memory
