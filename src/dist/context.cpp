// Context: the store, the join (arrivals named, agreement checked), the
// heartbeat, the mesh's groups, and an orderly or a fast way out.
#include "dist/context.h"

#include <algorithm>
#include <csignal>
#include <exception>
#include <thread>

#include "core/error.h"
#include "dist/group_state.h"
#include "dist/heartbeat.h"

#ifdef MEMO_WITH_DIST
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif

namespace memo::dist {

struct Context::Store {
#ifdef MEMO_WITH_DIST
  c10::intrusive_ptr<c10d::Store> store;  // the TCPStore under the job's prefix
#endif
  std::shared_ptr<FailureMonitor> monitor;
};

namespace {

Group local_group(const std::string& name, int global_rank, const std::shared_ptr<CommStats>& stats) {
  auto s = std::make_shared<GroupState>();
  s->name = name;
  s->ranks = {global_rank};
  s->rank = 0;
  s->stats = stats;
  return Group(std::move(s));
}

std::string seconds_text(std::chrono::milliseconds t) {
  return cat(static_cast<double>(t.count()) / 1000.0, " s");
}

std::string list_ranks(const std::vector<int>& ranks) {
  std::string out;
  for (int r : ranks) {
    if (!out.empty()) out += ", ";
    out += std::to_string(r);
  }
  return out;
}

#ifdef MEMO_WITH_DIST

std::vector<uint8_t> bytes_of(const std::string& s) { return {s.begin(), s.end()}; }
std::string text_of(const std::vector<uint8_t>& b) { return {b.begin(), b.end()}; }

// Ranks in [0, world) whose key `prefix<rank>` is not in the store.
std::vector<int> missing_ranks(c10d::Store& store, const std::string& prefix, int world) {
  std::vector<int> missing;
  for (int r = 0; r < world; ++r)
    if (!store.check({cat(prefix, r)})) missing.push_back(r);
  return missing;
}

// Polls until every rank's key `prefix<rank>` exists, `stop_key` appears
// (true), or the deadline passes (false).
bool wait_for_keys(c10d::Store& store, const std::string& prefix, int world, const std::string& stop_key,
                   std::chrono::steady_clock::time_point deadline, bool* stopped) {
  std::vector<std::string> keys;
  for (int r = 0; r < world; ++r) keys.push_back(cat(prefix, r));
  auto pause = std::chrono::milliseconds(5);
  *stopped = false;
  while (!store.check(keys)) {
    if (!stop_key.empty() && store.check({stop_key})) {
      *stopped = true;
      return false;
    }
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::milliseconds(100));
  }
  return true;
}

#endif

}  // namespace

Context::Context(const LaunchInfo& launch, const MeshShape& mesh, const ContextOptions& options)
    : launch_(launch),
      mesh_(mesh),
      timeout_(options.timeout),
      stats_(std::make_shared<CommStats>()),
      store_(std::make_shared<Store>()),
      world_(local_group("world", launch.rank, stats_)),
      sp_(local_group("sp0", launch.rank, stats_)),
      dp_(local_group("dp0", launch.rank, stats_)) {
  if (mesh.world != launch.world_size || mesh.dp * mesh.sp != mesh.world)
    throw Error(cat("dist::Context: mesh ", mesh.describe(), " for a launch of ", launch.world_size, " ranks"));
  if (!distributed()) return;  // a world of one: no store, no process group
  if (!available()) throw InputError(cat("WORLD_SIZE=", launch.world_size, ": ", unavailable_reason()));
  require_input(options.timeout.count() > 0, "--dist-timeout must be positive");
#ifdef MEMO_WITH_DIST
  // A peer that dies leaves its sockets closed: a write to one must fail
  // with EPIPE (so this rank names the dead peer and exits 1), not kill this
  // process with SIGPIPE (exit 141, nothing said). Python ignores SIGPIPE at
  // start-up, which is why torch's own launchers never see it.
  std::signal(SIGPIPE, SIG_IGN);
  const bool cuda = options.device.is_cuda();
  if (cuda && !nccl_available())
    (void)make_nccl_backend({}, 0, 0, timeout_, 0);  // throws: built without NCCL
  device_ = cuda ? c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(launch.local_rank)) : c10::Device(c10::kCPU);
  backend_name_ = cuda ? "nccl" : "gloo";
  const int rank = launch.rank, world = launch.world_size;
  const std::string where = cat(launch.master_addr, ":", launch.master_port);
  const std::string host = launch.agent_store ? cat("torchrun's agent at ", where) : cat("rank 0 at ", where);

  // The store: torchrun's agent hosts it (every rank a client), else rank 0.
  c10::intrusive_ptr<c10d::Store> tcp;
  try {
    c10d::TCPStoreOptions o;
    o.port = static_cast<uint16_t>(launch.master_port);
    o.isServer = !launch.agent_store && rank == 0;
    o.numWorkers = world;
    o.waitWorkers = false;  // the join below waits, and names who is missing
    o.timeout = timeout_;
    tcp = c10::make_intrusive<c10d::TCPStore>(launch.master_addr, o);
  } catch (const std::exception& e) {
    const bool server = !launch.agent_store && rank == 0;
    throw CommError(cat("rank ", rank, ": cannot ", server ? "host" : "reach", " the rendezvous store (", host,
                        ") within ", seconds_text(timeout_), ": ", error_text(e)));
  }
  // Keys of a restarted torchrun attempt never meet the last attempt's.
  auto& store = store_->store;
  store = c10::make_intrusive<c10d::PrefixStore>(cat("memo/", launch.restart_count), tcp);

  // The join: every rank announces itself with what it must agree on. Rank 0
  // hosts the store (unless torchrun's agent does), so it decides a failed
  // join and leaves last: at its deadline it publishes the missing ranks and
  // waits for the others to read them; they wait for that (or, with the
  // agent's store, for their own deadline) and never read a store that has
  // gone. A store that goes anyway means its host died.
  const bool hosts_store = !launch.agent_store && rank == 0;
  const auto deadline = std::chrono::steady_clock::now() + timeout_;
  // A client gives the host a little longer than its own timeout to speak.
  const auto grace = std::clamp(timeout_ / 10, std::chrono::milliseconds(500), std::chrono::milliseconds(5000));
  auto joined_by = [&](const std::vector<int>& missing) {
    return CommError(cat("rank ", rank, ": rank", missing.size() > 1 ? "s " : " ", list_ranks(missing), " of ",
                         world, " did not join within ", seconds_text(timeout_),
                         " (not started, failed before joining, or given another MASTER_ADDR:MASTER_PORT than ",
                         where, ")"));
  };
  std::vector<int> differ;
  std::vector<uint8_t> root_value, differ_value;
  try {
    store->set(cat("join/", rank), bytes_of(options.agreement));
    bool stopped = false;
    if (!wait_for_keys(*store, "join/", world, hosts_store ? "" : "join-failed",
                       hosts_store ? deadline : deadline + grace, &stopped)) {
      std::vector<int> missing;
      if (stopped) {  // the host's verdict
        const auto text = text_of(store->get("join-failed"));
        for (size_t at = 0; at < text.size();) {
          const size_t comma = std::min(text.find(',', at), text.size());
          missing.push_back(std::stoi(text.substr(at, comma - at)));
          at = comma + 1;
        }
        store->set(cat("join-read/", rank), bytes_of("1"));
      } else {
        missing = missing_ranks(*store, "join/", world);
      }
      if (hosts_store && !missing.empty()) {
        std::string text;
        for (int r : missing) {
          if (!text.empty()) text += ',';
          text += std::to_string(r);
        }
        store->set("join-failed", bytes_of(text));
        // The ranks present read the verdict before the store goes (bounded: a
        // rank that left on its own deadline never will).
        std::vector<std::string> present;
        for (int r = 1; r < world; ++r)
          if (std::find(missing.begin(), missing.end(), r) == missing.end()) present.push_back(cat("join-read/", r));
        const auto until = std::chrono::steady_clock::now() + 2 * grace;
        while (!present.empty() && !store->check(present) && std::chrono::steady_clock::now() < until)
          std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      if (!missing.empty()) throw joined_by(missing);
    }
    root_value = store->get("join/0");
    for (int r = 1; r < world; ++r)
      if (store->get(cat("join/", r)) != root_value) differ.push_back(r);
    if (!differ.empty()) differ_value = store->get(cat("join/", differ.front()));
    // The host waits until everyone has read before it may leave (with the
    // error below); the others go on at once.
    store->set(cat("read/", rank), bytes_of("1"));
    if (hosts_store)
      (void)wait_for_keys(*store, "read/", world, "", std::chrono::steady_clock::now() + timeout_, &stopped);
  } catch (const CommError&) {
    throw;
  } catch (const std::exception& e) {
    throw CommError(cat("rank ", rank, ": the rendezvous store (", host, ") went away during the join: ",
                        error_text(e), " (its host has most likely died)"));
  }
  if (!differ.empty()) {
    throw InputError(cat("rank ", rank, ": rank", differ.size() > 1 ? "s " : " ", list_ranks(differ),
                         " started with other options than rank 0 (every rank must be given the same): rank ",
                         differ.front(), " has \"", text_of(differ_value), "\", rank 0 \"", text_of(root_value), "\""));
  }

  // A fifth of the timeout (at most 1 s): the survivors judge a beat stale after three intervals,
  // which on a starved machine must outlast a live rank's scheduling delays.
  const auto interval = std::clamp(timeout_ / 5, std::chrono::milliseconds(50), std::chrono::milliseconds(1000));
  store_->monitor = std::make_shared<FailureMonitor>(store, rank, world, interval, host);

  // The groups, in the same order on every rank: world, sp, dp. A group that
  // is the whole world shares the world's backend.
  auto make_group = [&](const std::string& name, std::vector<int> ranks) {
    auto s = std::make_shared<GroupState>();
    s->name = name;
    s->rank = static_cast<int>(std::find(ranks.begin(), ranks.end(), rank) - ranks.begin());
    s->ranks = std::move(ranks);
    s->timeout = timeout_;
    s->stats = stats_;
    s->monitor = store_->monitor;
    const int size = static_cast<int>(s->ranks.size());
    if (size == 1) return Group(std::move(s));
    if (size == world && world_.state().backend) {
      s->backend = world_.state().backend;
      return Group(std::move(s));
    }
    auto group_store = c10::make_intrusive<c10d::PrefixStore>(name, store);
    try {
      s->backend = cuda ? make_nccl_backend(group_store, s->rank, size, timeout_, launch.local_rank)
                        : make_gloo_backend(group_store, s->rank, size, timeout_, launch.master_addr);
    } catch (const InputError&) {
      throw;
    } catch (const std::exception& e) {
      store_->monitor->mark_failed();
      throw CommError(cat("rank ", rank, ": creating the ", backend_name_, " group ", name, " (ranks ",
                          list_ranks(s->ranks), ") failed: ", error_text(e),
                          "; ", store_->monitor->diagnose(s->ranks)));
    }
    return Group(std::move(s));
  };
  std::vector<int> everyone(static_cast<size_t>(world));
  for (int r = 0; r < world; ++r) everyone[static_cast<size_t>(r)] = r;
  const MeshCoords c = coords();
  world_ = make_group("world", everyone);
  sp_ = make_group(cat("sp", c.dp_index), sp_group_ranks(mesh_, rank));
  dp_ = make_group(cat("dp", c.sp_index), dp_group_ranks(mesh_, rank));
  // Up on every rank before anyone goes on (or leaves: rank 0 may host the store).
  world_.barrier().wait();
  stats_->reset();
#endif
}

Context::~Context() {
  // An orderly way out waits for every rank (rank 0 may host the store the
  // others still read); after a failure, or while an exception unwinds, leave
  // at once: the backends of a failed job are leaked (GroupState).
  if (!distributed() || !store_->monitor) return;
  if (store_->monitor->failed() || std::uncaught_exceptions() > 0) {
    // Rank 0 hosting the store stays after a failure until every survivor has
    // read the heartbeats from it to name the dead rank (FailureMonitor::
    // diagnose); leaving earlier would turn their diagnosis into "the store
    // is gone". A survivor still inside a collective diagnoses only when that
    // collective times out, so the wait is capped at the timeout plus the
    // diagnosis' own three intervals and a margin.
    if (launch_.rank == 0 && !launch_.agent_store)
      store_->monitor->wait_for_survivors(std::chrono::steady_clock::now() + timeout_ +
                                          5 * store_->monitor->interval());
    return;
  }
  try {
    world_.barrier().wait();
  } catch (...) {
  }
}

}  // namespace memo::dist
