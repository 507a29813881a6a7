// Inside a Group: the c10d backend (none for a group of one), the shared
// counters and the failure monitor. Internal to src/dist/ (and the NCCL
// factory in src/cuda/); with heartbeat.h, the only headers that name c10d types.
#pragma once

#include <chrono>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#ifdef MEMO_WITH_DIST
#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>
#endif

namespace memo::dist {

// Complete in dist/comm.h; named here only, so that comm.cpp can include
// this header without an include circle.
class CommStats;
class FailureMonitor;

struct GroupState {
  std::string name;               // "world", "sp0", "dp1"
  std::vector<int> ranks;         // global ranks, ascending
  int rank = 0;                   // this process's index in `ranks`
  std::chrono::milliseconds timeout{300000};
  std::shared_ptr<CommStats> stats;
  std::shared_ptr<FailureMonitor> monitor;  // null in a world of one
#ifdef MEMO_WITH_DIST
  c10::intrusive_ptr<c10d::Backend> backend;  // null: a group of one, done locally
#endif
  // After a failed collective the backend is left alive (leaked): its
  // destructor would wait for work stuck on a dead peer, and the process is
  // about to exit 1 anyway.
  ~GroupState();
};

#ifdef MEMO_WITH_DIST
// The first line of an error's message, without c10's backtrace.
inline std::string error_text(const std::exception& e) {
  const auto* c10_error = dynamic_cast<const c10::Error*>(&e);
  const std::string what = c10_error ? c10_error->what_without_backtrace() : e.what();
  return what.substr(0, what.find('\n'));
}

// Backends over `store` (already prefixed for this group). Gloo: the device
// from GLOO_SOCKET_IFNAME, else loopback when the master is this host's
// loopback, else this host's name. NCCL (src/cuda/process_group_nccl.cpp,
// MEMO_WITH_NCCL builds only): the given CUDA device.
c10::intrusive_ptr<c10d::Backend> make_gloo_backend(const c10::intrusive_ptr<c10d::Store>& store, int rank,
                                                     int size, std::chrono::milliseconds timeout,
                                                     const std::string& master_addr);
c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store, int rank,
                                                     int size, std::chrono::milliseconds timeout, int device_index);
#endif

}  // namespace memo::dist
