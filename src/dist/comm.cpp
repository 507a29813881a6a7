// Group and Work: collectives issued on the c10d backend (or done locally for a
// group of one), counted by kind, failures turned into CommError with the
// failure monitor's diagnosis.
#include "dist/comm.h"

#include <numeric>
#include <utility>

#include "dist/group_state.h"
#include "dist/heartbeat.h"

#ifdef MEMO_WITH_DIST
#include <torch/csrc/distributed/c10d/Types.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>
#endif

namespace memo::dist {

const char* collective_name(Collective kind) {
  switch (kind) {
    case Collective::AllToAll: return "all_to_all";
    case Collective::AllGather: return "all_gather";
    case Collective::ReduceScatter: return "reduce_scatter";
    case Collective::AllReduce: return "all_reduce";
    case Collective::Broadcast: return "broadcast";
    case Collective::Barrier: return "barrier";
  }
  return "?";
}

// ---- CommStats ----

void CommStats::record(Collective kind, int64_t sent, int64_t received) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto& b = by_kind_[static_cast<size_t>(kind)];
  b.calls += 1;
  b.bytes_sent += sent;
  b.bytes_received += received;
}

CollectiveBytes CommStats::get(Collective kind) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return by_kind_[static_cast<size_t>(kind)];
}

CollectiveBytes CommStats::total() const {
  std::lock_guard<std::mutex> lock(mutex_);
  CollectiveBytes t;
  for (const auto& b : by_kind_) {
    t.calls += b.calls;
    t.bytes_sent += b.bytes_sent;
    t.bytes_received += b.bytes_received;
  }
  return t;
}

void CommStats::reset() {
  std::lock_guard<std::mutex> lock(mutex_);
  by_kind_ = {};
  spans_.clear();
}

void CommStats::set_tracing(bool on) {
  std::lock_guard<std::mutex> lock(mutex_);
  tracing_ = on;
}

bool CommStats::tracing() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return tracing_;
}

void CommStats::add_span(CommSpan span) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (tracing_) spans_.push_back(std::move(span));
}

std::vector<CommSpan> CommStats::take_spans() {
  std::lock_guard<std::mutex> lock(mutex_);
  return std::exchange(spans_, {});
}

// ---- GroupState ----

GroupState::~GroupState() {
#ifdef MEMO_WITH_DIST
  if (backend && monitor && monitor->failed()) (void)backend.release();  // deliberately leaked, see the header
#endif
}

// ---- Work ----

struct Work::State {
  std::shared_ptr<GroupState> group;
  Collective kind = Collective::Barrier;
  int64_t bytes_sent = 0;
  int64_t sequence = 0;  // this process's collective number (1-based), for messages
  std::chrono::steady_clock::time_point issued;
  std::vector<at::Tensor> tensors;  // kept alive until the collective is waited on
#ifdef MEMO_WITH_DIST
  c10::intrusive_ptr<c10d::Work> work;  // null: done locally
#endif
  bool waited = false;
};

Work::Work() = default;
Work::~Work() = default;
Work::Work(Work&&) noexcept = default;
Work& Work::operator=(Work&&) noexcept = default;
Work::Work(std::shared_ptr<State> state) : state_(std::move(state)) {}

bool Work::waited() const { return !state_ || state_->waited; }

namespace {

std::string ranks_text(const std::vector<int>& ranks) {
  std::string out;
  for (int r : ranks) {
    if (!out.empty()) out += ",";
    out += std::to_string(r);
  }
  return out;
}

[[noreturn]] void fail(const Work::State& s, const std::string& what) {
  const GroupState& g = *s.group;
  std::string diagnosis;
  if (g.monitor) {
    g.monitor->mark_failed();
    diagnosis = g.monitor->diagnose(g.ranks);
  }
  throw CommError(cat("rank ", g.ranks[static_cast<size_t>(g.rank)], ": ", collective_name(s.kind),
                      " (collective #", s.sequence, ") on group ", g.name, " (ranks ", ranks_text(g.ranks),
                      ") failed: ", what, diagnosis.empty() ? "" : "; ", diagnosis));
}

}  // namespace

void Work::wait() {
  if (!state_ || state_->waited) return;
  State& s = *state_;
#ifdef MEMO_WITH_DIST
  if (s.work) {
    try {
      s.work->wait(s.group->timeout);
    } catch (const std::exception& e) {
      fail(s, error_text(e));
    }
  }
#endif
  s.waited = true;
  s.tensors.clear();
  if (s.group->stats && s.group->stats->tracing())
    s.group->stats->add_span({s.kind, s.group->name, s.bytes_sent, s.issued, std::chrono::steady_clock::now()});
}

// ---- Group ----

Group::Group(std::shared_ptr<GroupState> state) : state_(std::move(state)) {}
Group::~Group() = default;
Group::Group(Group&&) noexcept = default;
Group& Group::operator=(Group&&) noexcept = default;

int Group::rank() const { return state_->rank; }
int Group::size() const { return static_cast<int>(state_->ranks.size()); }
const std::vector<int>& Group::ranks() const { return state_->ranks; }
const std::string& Group::name() const { return state_->name; }

namespace {

// Issues one collective: counts it, then starts it on the backend (`start`)
// or, in a group of one, runs `local` at once.
template <typename Start, typename Local>
Work issue(const std::shared_ptr<GroupState>& g, Collective kind, int64_t sent, int64_t received,
           std::vector<at::Tensor> tensors, Start&& start, Local&& local) {
  auto s = std::make_shared<Work::State>();
  s->group = g;
  s->kind = kind;
  s->bytes_sent = sent;
  s->sequence = g->monitor ? g->monitor->on_issue() : 0;
  s->issued = std::chrono::steady_clock::now();
  s->tensors = std::move(tensors);
  if (g->stats) g->stats->record(kind, sent, received);
#ifdef MEMO_WITH_DIST
  if (g->backend) {
    try {
      s->work = start(*g->backend);
    } catch (const std::exception& e) {
      fail(*s, error_text(e));
    }
    return Work(std::move(s));
  }
#else
  (void)start;
#endif
  local();
  return Work(std::move(s));
}

void require_contiguous(const at::Tensor& t, const char* what, const char* op) {
  if (!t.defined() || !t.is_contiguous()) throw Error(cat(op, ": ", what, " must be a defined contiguous tensor"));
}

#ifdef MEMO_WITH_DIST
c10d::ReduceOp to_c10d(ReduceOp op) {
  return op == ReduceOp::Max ? c10d::ReduceOp(c10d::ReduceOp::MAX) : c10d::ReduceOp(c10d::ReduceOp::SUM);
}
#endif

}  // namespace

Work Group::all_to_all(at::Tensor& out, const at::Tensor& in, const std::vector<int64_t>& out_splits,
                       const std::vector<int64_t>& in_splits) {
  const char* op = "all_to_all";
  require_contiguous(in, "input", op);
  require_contiguous(out, "output", op);
  const int64_t n = size(), me = rank();
  if (in.scalar_type() != out.scalar_type() || in.dim() == 0 || out.dim() == 0)
    throw Error(cat(op, ": input and output need one dtype and a first dimension"));
  const int64_t row = in.size(0) ? in.numel() / in.size(0) : 0;  // elements per row of dim 0
  if (out.size(0) && out.numel() / out.size(0) != row && in.size(0))
    throw Error(cat(op, ": input rows of ", row, " elements, output rows of ", out.numel() / out.size(0)));
  const int64_t row_bytes = row * static_cast<int64_t>(in.element_size());
  int64_t sent = 0, received = 0;
  if (in_splits.empty() && out_splits.empty()) {
    if (in.size(0) % n != 0 || out.numel() != in.numel())
      throw Error(cat(op, ": equal parts need dim 0 (", in.size(0), ") divisible by ", n, " and out the size of in"));
    sent = received = (in.size(0) - in.size(0) / n) * row_bytes;
  } else {
    if (static_cast<int64_t>(in_splits.size()) != n || static_cast<int64_t>(out_splits.size()) != n)
      throw Error(cat(op, ": ", n, " ranks need ", n, " input and output splits"));
    const int64_t in_rows = std::accumulate(in_splits.begin(), in_splits.end(), int64_t{0});
    const int64_t out_rows = std::accumulate(out_splits.begin(), out_splits.end(), int64_t{0});
    if (in_rows != in.size(0) || out_rows != out.size(0))
      throw Error(cat(op, ": splits sum to ", in_rows, " in / ", out_rows, " out rows, tensors have ", in.size(0),
                      " / ", out.size(0)));
    sent = (in_rows - in_splits[static_cast<size_t>(me)]) * row_bytes;
    received = (out_rows - out_splits[static_cast<size_t>(me)]) * row_bytes;
  }
  at::Tensor o = out, i = in;
  return issue(
      state_, Collective::AllToAll, sent, received, {out, in},
      [&](auto& backend) {
#ifdef MEMO_WITH_DIST
        std::vector<int64_t> os = out_splits, is = in_splits;
        return backend.alltoall_base(o, i, os, is);
#endif
      },
      [&] { o.copy_(i); });
}

Work Group::all_gather(at::Tensor& out, const at::Tensor& in) {
  require_contiguous(in, "input", "all_gather");
  require_contiguous(out, "output", "all_gather");
  const int64_t n = size();
  if (out.numel() != n * in.numel() || in.scalar_type() != out.scalar_type())
    throw Error(cat("all_gather: output of ", out.numel(), " elements for ", n, " ranks of ", in.numel()));
  const int64_t bytes = (n - 1) * static_cast<int64_t>(in.nbytes());
  at::Tensor o = out.view({-1}), i = in.view({-1});
  return issue(
      state_, Collective::AllGather, bytes, bytes, {out, in},
      [&](auto& backend) {
#ifdef MEMO_WITH_DIST
        return backend._allgather_base(o, i);
#endif
      },
      [&] { o.copy_(i); });
}

Work Group::reduce_scatter(at::Tensor& out, const at::Tensor& in, ReduceOp op) {
  require_contiguous(in, "input", "reduce_scatter");
  require_contiguous(out, "output", "reduce_scatter");
  const int64_t n = size();
  if (in.numel() != n * out.numel() || in.scalar_type() != out.scalar_type())
    throw Error(cat("reduce_scatter: input of ", in.numel(), " elements for ", n, " ranks of ", out.numel()));
  const int64_t bytes = (n - 1) * static_cast<int64_t>(out.nbytes());
  at::Tensor o = out.view({-1}), i = in.view({-1});
  return issue(
      state_, Collective::ReduceScatter, bytes, bytes, {out, in},
      [&](auto& backend) {
#ifdef MEMO_WITH_DIST
        c10d::ReduceScatterOptions opts;
        opts.reduceOp = to_c10d(op);
        return backend._reduce_scatter_base(o, i, opts);
#endif
      },
      [&] { o.copy_(i); });
}

Work Group::all_reduce(at::Tensor& t, ReduceOp op) {
  require_contiguous(t, "tensor", "all_reduce");
  const int64_t n = size();
  const int64_t bytes = 2 * (n - 1) * static_cast<int64_t>(t.nbytes()) / n;
  return issue(
      state_, Collective::AllReduce, bytes, bytes, {t},
      [&](auto& backend) {
#ifdef MEMO_WITH_DIST
        std::vector<at::Tensor> ts = {t};
        c10d::AllreduceOptions opts;
        opts.reduceOp = to_c10d(op);
        return backend.allreduce(ts, opts);
#endif
      },
      [] {});
}

Work Group::broadcast(at::Tensor& t, int root) {
  require_contiguous(t, "tensor", "broadcast");
  if (root < 0 || root >= size()) throw Error(cat("broadcast: root ", root, " is not in a group of ", size()));
  const int64_t bytes = size() > 1 ? static_cast<int64_t>(t.nbytes()) : 0;
  const bool is_root = root == rank();
  return issue(
      state_, Collective::Broadcast, is_root ? bytes : 0, is_root ? 0 : bytes, {t},
      [&](auto& backend) {
#ifdef MEMO_WITH_DIST
        std::vector<at::Tensor> ts = {t};
        c10d::BroadcastOptions opts;
        opts.rootRank = root;
        return backend.broadcast(ts, opts);
#endif
      },
      [] {});
}

Work Group::barrier() {
  return issue(
      state_, Collective::Barrier, 0, 0, {},
      [&](auto& backend) {
#ifdef MEMO_WITH_DIST
        return backend.barrier();
#endif
      },
      [] {});
}

}  // namespace memo::dist
