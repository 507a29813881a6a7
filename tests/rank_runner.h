// Starts the processes of a multi-rank test (fork/exec, each with its own
// environment, stdout and stderr to a file) and collects their exit codes and
// output, killing what is left at a deadline.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace memo::testing {

struct Process {
  std::vector<std::string> argv;             // argv[0] is the program's path
  std::map<std::string, std::string> env;    // set on top of this process's environment
};

struct ProcessResult {
  int code = -1;        // exit status, 128 + signal, or -1 when killed at the deadline
  bool killed = false;  // still running at the deadline (or expendable and killed)
  double seconds = 0;   // from the start to its exit
  std::string output;   // stdout and stderr
};

// A TCP port nobody listens on now (the kernel's pick for port 0).
inline int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  int port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0)
    port = ntohs(addr.sin_port);
  ::close(fd);
  return port;
}

// The variables a launcher would set for rank r of `world` on this host.
inline std::vector<Process> env_ranks(int world, const std::vector<std::string>& argv, int port) {
  std::vector<Process> ranks;
  for (int r = 0; r < world; ++r)
    ranks.push_back({argv,
                     {{"RANK", std::to_string(r)},
                      {"WORLD_SIZE", std::to_string(world)},
                      {"LOCAL_RANK", std::to_string(r)},
                      {"LOCAL_WORLD_SIZE", std::to_string(world)},
                      {"MASTER_ADDR", "127.0.0.1"},
                      {"MASTER_PORT", std::to_string(port)},
                      {"OMP_NUM_THREADS", "1"}}});
  return ranks;
}

// A process to kill with SIGKILL mid-run: `rank` (an index of the processes)
// once `when()` first returns true (polled every 20 ms while it runs).
struct KillWhen {
  int rank = -1;
  std::function<bool()> when;
  double killed_at = -1;  // seconds from the start, set when it was killed
};

// Runs every process to its end, or to `deadline_s` (then SIGKILL). Once all
// processes not in `expendable` have exited, the expendable ones (a hung or
// frozen rank) are killed. With `kill`, that process is killed once its
// condition holds (its code is then 128 + 9).
inline std::vector<ProcessResult> run_processes(const std::vector<Process>& procs, double deadline_s,
                                                const std::set<int>& expendable = {}, KillWhen* kill = nullptr) {
  namespace fs = std::filesystem;
  const auto dir = fs::temp_directory_path() /
                   ("memo_ranks_" + std::to_string(::getpid()) + "_" + std::to_string(free_port()));
  fs::create_directories(dir);
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<pid_t> pids;
  std::vector<ProcessResult> results(procs.size());
  for (size_t i = 0; i < procs.size(); ++i) {
    const std::string log = (dir / ("rank" + std::to_string(i) + ".log")).string();
    const pid_t pid = ::fork();
    if (pid == 0) {
      // The test's own launcher variables must not leak into the ranks.
      for (const char* v : {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                            "SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS", "TORCHELASTIC_USE_AGENT_STORE",
                            "TORCHELASTIC_RUN_ID"})
        ::unsetenv(v);
      for (const auto& [k, v] : procs[i].env) ::setenv(k.c_str(), v.c_str(), 1);
      const int out = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      ::dup2(out, 1);
      ::dup2(out, 2);
      std::vector<char*> args;
      for (const auto& a : procs[i].argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      ::execv(args[0], args.data());
      ::_exit(127);
    }
    pids.push_back(pid);
  }
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  std::set<size_t> running;
  for (size_t i = 0; i < pids.size(); ++i) running.insert(i);
  while (!running.empty()) {
    if (kill && kill->killed_at < 0 && running.count(static_cast<size_t>(kill->rank)) && kill->when()) {
      ::kill(pids[static_cast<size_t>(kill->rank)], SIGKILL);
      kill->killed_at = elapsed();
    }
    for (auto it = running.begin(); it != running.end();) {
      int status = 0;
      if (::waitpid(pids[*it], &status, WNOHANG) == pids[*it]) {
        auto& r = results[*it];
        r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        r.seconds = elapsed();
        it = running.erase(it);
      } else {
        ++it;
      }
    }
    bool only_expendable = !running.empty();
    for (size_t i : running) only_expendable = only_expendable && expendable.count(static_cast<int>(i));
    if (elapsed() > deadline_s || only_expendable) {
      for (size_t i : running) {
        ::kill(pids[i], SIGKILL);
        ::waitpid(pids[i], nullptr, 0);
        results[i].killed = true;
        results[i].seconds = elapsed();
      }
      running.clear();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  for (size_t i = 0; i < procs.size(); ++i) {
    std::ifstream in(dir / ("rank" + std::to_string(i) + ".log"));
    std::stringstream ss;
    ss << in.rdbuf();
    results[i].output = ss.str();
  }
  fs::remove_all(dir);
  return results;
}

// Every process's exit code, time and output, for a failed expectation's
// message.
inline std::string describe(const std::vector<ProcessResult>& rs) {
  std::string out;
  for (size_t i = 0; i < rs.size(); ++i)
    out += "--- rank " + std::to_string(i) + ": code " + std::to_string(rs[i].code) +
           (rs[i].killed ? " (killed)" : "") + " after " + std::to_string(rs[i].seconds) + " s\n" + rs[i].output;
  return out;
}

inline bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace memo::testing
