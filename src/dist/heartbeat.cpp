// FailureMonitor: the beating thread and the post-mortem read of the beats.
#include "dist/heartbeat.h"

#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <optional>

#include "core/error.h"

namespace memo::dist {

struct FailureMonitor::Beat {
  std::atomic<int64_t> issued{0};
  std::mutex mutex;
  std::condition_variable wake;
  bool stop = false;
#ifdef MEMO_WITH_DIST
  c10::intrusive_ptr<c10d::Store> store;
#endif
};

namespace {

std::string beat_key(int rank) { return cat("hb/", rank); }
std::string diagnosed_key(int rank) { return cat("diag/", rank); }

// "<beats> <issued>"
struct BeatValue {
  int64_t beats = -1;
  int64_t issued = -1;
};

std::string format_ms(std::chrono::milliseconds ms) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f s", static_cast<double>(ms.count()) / 1000.0);
  return buf;
}

}  // namespace

#ifdef MEMO_WITH_DIST
FailureMonitor::FailureMonitor(const c10::intrusive_ptr<c10d::Store>& store, int rank, int world,
                               std::chrono::milliseconds interval, std::string store_host)
    : rank_(rank), world_(world), interval_(interval), store_host_(std::move(store_host)),
      beat_(std::make_shared<Beat>()) {
  // Own connections, with a timeout of a few beats: a store that has gone
  // fails these quickly instead of after the collectives' timeout.
  const auto short_timeout = std::max(std::chrono::milliseconds(2000), 4 * interval);
  beat_->store = store->clone();
  beat_->store->setTimeout(short_timeout);
  read_store_ = store->clone();
  read_store_->setTimeout(short_timeout);
  thread_ = std::thread([beat = beat_, rank, interval] {
    int64_t beats = 0;
    std::unique_lock<std::mutex> lock(beat->mutex);
    while (!beat->stop) {
      const std::string value = cat(++beats, " ", beat->issued.load());
      lock.unlock();
      try {
        beat->store->set(beat_key(rank), std::vector<uint8_t>(value.begin(), value.end()));
      } catch (...) {
        return;  // the store has gone: the survivors' diagnosis says so
      }
      lock.lock();
      beat->wake.wait_for(lock, interval, [&] { return beat->stop; });
    }
  });
}
#endif

FailureMonitor::~FailureMonitor() {
  if (!beat_) return;
  {
    std::lock_guard<std::mutex> lock(beat_->mutex);
    beat_->stop = true;
  }
  beat_->wake.notify_all();
  if (thread_.joinable()) {
    // After a failure the thread may be stuck on a store that has gone; it
    // owns what it touches (Beat), and the process is about to exit.
    if (failed())
      thread_.detach();
    else
      thread_.join();
  }
}

int64_t FailureMonitor::on_issue() { return beat_ ? beat_->issued.fetch_add(1) + 1 : 0; }
int64_t FailureMonitor::issued() const { return beat_ ? beat_->issued.load() : 0; }

std::string FailureMonitor::diagnose(const std::vector<int>& ranks) {
#ifdef MEMO_WITH_DIST
  // Reads every other rank's beat; false when the store cannot be reached.
  auto read = [&](std::vector<BeatValue>& out) {
    out.assign(ranks.size(), {});
    try {
      for (size_t i = 0; i < ranks.size(); ++i) {
        if (ranks[i] == rank_) continue;
        const std::string key = beat_key(ranks[i]);
        if (!read_store_->check({key})) continue;
        const auto bytes = read_store_->get(key);
        long long beats = -1, issued = -1;
        if (std::sscanf(std::string(bytes.begin(), bytes.end()).c_str(), "%lld %lld", &beats, &issued) == 2)
          out[i] = {beats, issued};
      }
      return true;
    } catch (...) {
      return false;
    }
  };
  std::vector<BeatValue> before, after;
  const auto window = 3 * interval_;
  if (!read(before) || (std::this_thread::sleep_for(window), !read(after)))
    return cat("the rendezvous store (", store_host_, ") cannot be reached: its host has most likely died");
  const int64_t mine = issued();
  std::string dead, behind;
  for (size_t i = 0; i < ranks.size(); ++i) {
    if (ranks[i] == rank_) continue;
    const auto& a = before[i];
    const auto& b = after[i];
    if (b.beats < 0) {
      dead += cat(dead.empty() ? "" : ", ", ranks[i], " (never beat)");
    } else if (b.beats == a.beats) {
      dead += cat(dead.empty() ? "" : ", ", ranks[i]);
    } else if (b.issued < mine) {
      behind += cat(behind.empty() ? "" : "; ", "rank ", ranks[i], " is alive but has issued ", b.issued, " of the ",
                    mine, " collectives this rank has (stuck or slow outside communication)");
    }
  }
  std::string out;
  if (!dead.empty())
    out = cat("no heartbeat for ", format_ms(window), " from rank", dead.find(',') == std::string::npos ? " " : "s ",
              dead, " (died or frozen)");
  if (!behind.empty()) out += (out.empty() ? "" : "; ") + behind;
  if (out.empty()) out = "every rank of the group still beats and has reached this collective";
  try {
    read_store_->set(diagnosed_key(rank_), std::vector<uint8_t>{'1'});
  } catch (...) {
  }
  return out;
#else
  (void)ranks;
  return {};
#endif
}

void FailureMonitor::wait_for_survivors(std::chrono::steady_clock::time_point deadline) {
#ifdef MEMO_WITH_DIST
  using Clock = std::chrono::steady_clock;
  struct Seen {
    std::string beat;
    Clock::time_point changed;
    bool settled = false;  // diagnosed, behind in collectives, or its beat stood still for three intervals
  };
  const auto start = Clock::now();
  std::vector<Seen> seen(static_cast<size_t>(world_), Seen{"", start, false});
  seen[static_cast<size_t>(rank_)].settled = true;
  while (Clock::now() < deadline) {
    bool all = true;
    for (int r = 0; r < world_; ++r) {
      auto& s = seen[static_cast<size_t>(r)];
      if (s.settled) continue;
      try {
        if (read_store_->check({diagnosed_key(r)})) {
          s.settled = true;
          continue;
        }
        std::string beat;
        if (read_store_->check({beat_key(r)})) {
          const auto bytes = read_store_->get(beat_key(r));
          beat.assign(bytes.begin(), bytes.end());
        }
        long long beats = -1, issued = -1;
        if (std::sscanf(beat.c_str(), "%lld %lld", &beats, &issued) == 2 && issued < this->issued()) {
          s.settled = true;  // stuck outside communication: it may never reach a collective to time out in
          continue;
        }
        const auto now = Clock::now();
        if (beat != s.beat) {
          s.beat = beat;
          s.changed = now;
        } else if (now - s.changed > 3 * interval_) {
          s.settled = true;  // dead or frozen: it will never diagnose
          continue;
        }
      } catch (...) {
        return;  // this process hosts the store; failing to read it means it is going anyway
      }
      all = false;
    }
    if (all) return;
    std::this_thread::sleep_for(interval_ / 2);
  }
#else
  (void)deadline;
#endif
}

}  // namespace memo::dist
