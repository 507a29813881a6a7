// Names the rank at fault when a collective fails. Every rank beats into the
// rendezvous store ("hb/<rank>" = "<beats> <collectives issued>", from a
// thread of its own, every interval); after a failure the survivors read the
// beats twice, a few intervals apart: a rank whose beat stood still died or
// is frozen, a rank that beats but has issued fewer collectives is stuck
// outside communication (a hang in compute, or slow). Internal to src/dist/.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#ifdef MEMO_WITH_DIST
#include <torch/csrc/distributed/c10d/Store.hpp>
#endif

namespace memo::dist {

class FailureMonitor {
 public:
#ifdef MEMO_WITH_DIST
  // Starts beating. `store` is the job's (prefixed) store; the monitor uses
  // clones of it with a short timeout, so a gone store never holds it long.
  // `store_host` names it for messages ("rank 0 at host:port").
  FailureMonitor(const c10::intrusive_ptr<c10d::Store>& store, int rank, int world,
                 std::chrono::milliseconds interval, std::string store_host);
#endif
  ~FailureMonitor();  // stops beating (the thread is left to the process after a failure)

  // Counts a collective this process issues; returns its number (1-based).
  int64_t on_issue();
  int64_t issued() const;

  void mark_failed() { failed_.store(true); }
  bool failed() const { return failed_.load(); }

  // After a failure: what the beats say about `ranks` (global ranks), e.g.
  // "rank 1 stopped beating (died or frozen)". Takes about three intervals.
  // Also records that this rank has diagnosed ("diag/<rank>" in the store).
  std::string diagnose(const std::vector<int>& ranks);

  // After a failure, on the rank that hosts the store: waits until every
  // other rank has diagnosed, stopped beating (a dead rank never will) or is
  // behind this one in collectives (stuck outside communication, it may never
  // time out), at most until `deadline`. A survivor still blocked in a
  // collective reads the beats only when that collective times out, so the
  // host must outlast it.
  void wait_for_survivors(std::chrono::steady_clock::time_point deadline);

  std::chrono::milliseconds interval() const { return interval_; }

 private:
  // What the beating thread shares with the monitor; owned by both, so a
  // thread left running after a failure never outlives what it touches.
  struct Beat;

  int rank_ = 0, world_ = 1;
  std::chrono::milliseconds interval_{1000};
  std::string store_host_;
  std::atomic<bool> failed_{false};
  std::shared_ptr<Beat> beat_;
#ifdef MEMO_WITH_DIST
  c10::intrusive_ptr<c10d::Store> read_store_;
#endif
  std::thread thread_;
};

}  // namespace memo::dist
