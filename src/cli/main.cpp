// Entry point of the `memo` executable: parses the subcommand and maps every
// error to an exit code (0 ok, 1 runtime failure, 2 bad input or usage).
#include <ATen/Parallel.h>
#include <CLI/CLI.hpp>
#include <c10/util/Exception.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <iostream>

#include "cli/commands.h"
#include "core/error.h"

namespace {

memo::CpuThreads g_cpu_threads;

bool runs_compute(int argc, char** argv) {
  if (argc < 2) return false;
  for (const char* cmd : {"train", "bench", "eval"})
    if (std::strcmp(argv[1], cmd) == 0) return true;
  return false;
}

// Intra-op threads and their wait policy, before any torch work. libgomp reads
// OMP_WAIT_POLICY once, when libtorch loads it (before main), so making idle
// threads sleep on a busy machine means setting it and starting again.
void apply_cpu_threads(char** argv) {
  g_cpu_threads = memo::current_cpu_threads();
  if (g_cpu_threads.passive_wait && !std::getenv("OMP_WAIT_POLICY")) {
    setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    setenv("MEMO_SET_OMP_WAIT_POLICY", "1", 1);
    execv("/proc/self/exe", argv);
    // Only on failure: go on with libgomp's default.
    unsetenv("OMP_WAIT_POLICY");
    unsetenv("MEMO_SET_OMP_WAIT_POLICY");
    g_cpu_threads.passive_wait = false;
    g_cpu_threads.wait_from = "libgomp default (restart with OMP_WAIT_POLICY failed)";
  }
  at::set_num_threads(g_cpu_threads.threads);
}

int run_guarded(const memo::cli::Action& action) {
  try {
    return action();
  } catch (const memo::InputError& e) {
    std::fflush(stdout);
    std::cerr << "memo: error: " << e.what() << "\n";
    return 2;
  } catch (const memo::Error& e) {
    std::fflush(stdout);
    std::cerr << "memo: error: " << e.what() << "\n";
    return 1;
  } catch (const std::filesystem::filesystem_error& e) {
    // A safety net: the library turns these into InputError where the path
    // comes from the user. Here too the message is memo's (path and reason),
    // and a path the system refuses is bad input.
    std::fflush(stdout);
    const int err = e.code().value();
    std::cerr << "memo: error: " << (e.path1().empty() ? std::string("a file") : e.path1().string()) << ": "
              << std::strerror(err) << "\n";
    const bool input = err == EACCES || err == EPERM || err == ENAMETOOLONG || err == ENOENT || err == ENOTDIR ||
                       err == EISDIR || err == EROFS || err == ELOOP || err == EEXIST;
    return input ? 2 : 1;
  } catch (const c10::Error& e) {
    std::fflush(stdout);
    std::cerr << "memo: error (torch): " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::cerr << "memo: error: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace

const memo::CpuThreads& memo::cli::cpu_threads() { return g_cpu_threads; }

std::string memo::cli::describe_cpu_threads() {
  const auto& c = g_cpu_threads;
  const std::string wait = c.threads == 1 ? std::string("one thread: no OpenMP team waits")
                                           : memo::cat("OpenMP wait ", c.passive_wait ? "passive" : "active",
                                                       " (", c.wait_from, ")");
  return memo::cat(c.threads, " of ", c.cores, " cores (", c.threads_from, "; other load ",
                   static_cast<int>(std::lround(c.other_load * 10)) / 10.0, "), ", wait);
}

int main(int argc, char** argv) {
  if (runs_compute(argc, argv)) apply_cpu_threads(argv);
  CLI::App app{
      "memo: long-context Llama training with token-wise activation memory management.\n"
      "Run `memo <command> --help` for the options of one command."};
  app.require_subcommand(1);
  app.fallthrough(false);

  memo::cli::Action action;
  memo::cli::add_train_command(app, action);
  memo::cli::add_bench_command(app, action);
  memo::cli::add_dsa_command(app, action);
  memo::cli::add_plan_command(app, action);
  memo::cli::add_eval_command(app, action);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  if (!action) return 2;
  return run_guarded(action);
}
