// ScopedSyncCheck without CUDA: nothing to check (src/cuda/sync_check_cuda.cpp
// is the CUDA build's).
#include "memory/sync_check.h"

#ifndef MEMO_WITH_CUDA
namespace memo::memory {

ScopedSyncCheck::ScopedSyncCheck(const c10::Device&) {}
ScopedSyncCheck::~ScopedSyncCheck() = default;

}  // namespace memo::memory
#endif
