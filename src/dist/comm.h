// Collectives on one group of ranks, each counted by kind (calls, bytes this
// rank sends and receives) and optionally timed for the Chrome trace. Every
// collective is issued asynchronously and returns a Work to wait on: on CPU
// Gloo runs it on its own threads, on CUDA NCCL runs it on its own stream
// (Work::wait then makes the current stream wait, without blocking the host).
// A group of one rank does the same work locally (a copy, or nothing) and
// moves no bytes, so callers need no single-process branch.
//
// No c10d type appears here: memo builds without c10d too (dist::available()).
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/error.h"

namespace memo::dist {

// A collective failed or timed out (a peer died, hung or was unreachable); the
// message names the collective, the group and, where the store can tell, the
// rank(s) at fault. An Error: exit 1.
class CommError : public Error {
 public:
  explicit CommError(const std::string& what) : Error(what) {}
};

enum class Collective { AllToAll = 0, AllGather, ReduceScatter, AllReduce, Broadcast, Barrier };
constexpr int kCollectiveKinds = 6;
const char* collective_name(Collective kind);  // "all_to_all", "all_gather", ...

enum class ReduceOp { Sum, Max };

// Bytes one rank moves for one kind of collective. sent/received are the
// payload this rank hands to / takes from other ranks (its own part excluded):
//   all_to_all      exact: the rows sent to and received from the other ranks
//   all_gather      (n-1) x shard both ways (exact for received)
//   reduce_scatter  (n-1) x shard both ways (the ring's, the least any algorithm moves)
//   all_reduce      2 (n-1)/n x tensor both ways (the ring's)
//   broadcast       the tensor: sent by the root, received by every other rank
//   barrier         nothing (calls only)
struct CollectiveBytes {
  int64_t calls = 0;
  int64_t bytes_sent = 0;
  int64_t bytes_received = 0;
};

// One collective as the host saw it: issued, then observed complete by wait()
// (on CPU, where Gloo runs on its threads, that brackets the transfer; on CUDA
// it brackets the host's view, not the stream's).
struct CommSpan {
  Collective kind;
  std::string group;  // "world", "sp0", "dp1"...
  int64_t bytes = 0;  // sent
  std::chrono::steady_clock::time_point issued, completed;
};

// Counters of one process, shared by its groups; reset once per step.
class CommStats {
 public:
  void record(Collective kind, int64_t sent, int64_t received);
  CollectiveBytes get(Collective kind) const;
  CollectiveBytes total() const;
  void reset();  // counters and spans

  void set_tracing(bool on);
  bool tracing() const;
  void add_span(CommSpan span);
  std::vector<CommSpan> take_spans();

 private:
  mutable std::mutex mutex_;
  std::array<CollectiveBytes, kCollectiveKinds> by_kind_{};
  bool tracing_ = false;
  std::vector<CommSpan> spans_;
};

struct GroupState;  // comm.cpp / context.cpp: the backend, the counters, the failure monitor

// A collective in flight. wait() returns when it is complete (CPU) or ordered
// before later work on the current stream (CUDA); it throws CommError on a
// failure or after the group's timeout. Waiting twice is harmless.
class Work {
 public:
  Work();
  ~Work();
  Work(Work&&) noexcept;
  Work& operator=(Work&&) noexcept;
  void wait();
  bool waited() const;

  struct State;
  explicit Work(std::shared_ptr<State> state);

 private:
  std::shared_ptr<State> state_;
};

// One communicator: a group of global ranks (the world, an sp group, a dp group).
class Group {
 public:
  explicit Group(std::shared_ptr<GroupState> state);
  ~Group();
  Group(Group&&) noexcept;
  Group& operator=(Group&&) noexcept;

  int rank() const;                      // this process's index in the group
  int size() const;
  const std::vector<int>& ranks() const;  // global ranks, ascending
  const std::string& name() const;

  // out[sum(out_splits), ...] <- pieces of in[sum(in_splits), ...] along dim 0:
  // rank j receives rows in_splits[j] of this rank's input and this rank
  // receives out_splits[i] rows from rank i. Empty splits: equal parts (dim 0
  // divisible by the group size). in and out contiguous, same dtype.
  Work all_to_all(at::Tensor& out, const at::Tensor& in, const std::vector<int64_t>& out_splits = {},
                  const std::vector<int64_t>& in_splits = {});
  // out[size * n] <- every rank's in[n], in rank order (flat, contiguous).
  Work all_gather(at::Tensor& out, const at::Tensor& in);
  // out[n] <- op over ranks of their in[size * n] slice [rank * n, (rank + 1) * n).
  Work reduce_scatter(at::Tensor& out, const at::Tensor& in, ReduceOp op = ReduceOp::Sum);
  // t <- op over ranks of t, in place.
  Work all_reduce(at::Tensor& t, ReduceOp op = ReduceOp::Sum);
  // t <- the root's t (root: an index in this group).
  Work broadcast(at::Tensor& t, int root);
  Work barrier();

  GroupState& state() const { return *state_; }

 private:
  std::shared_ptr<GroupState> state_;
};

}  // namespace memo::dist
