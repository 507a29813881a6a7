// Runs the built `memo` binary in a subprocess and captures its output and
// exit code, for tests of the command line as a user meets it.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

namespace memo::testing {

struct CliResult {
  int code = -1;
  std::string output;  // stdout and stderr together
};

// `shell_prefix` runs first in the same shell, e.g. "ulimit -v 4000000; "
// (an address-space limit the test sets up itself).
// The command-line tests state CPU expectations (exact peaks, malloc counts,
// float32 by default): on a machine with a GPU they still run on the CPU
// (no CUDA device visible to the child); tests/gpu holds the CUDA checks.
inline CliResult run_memo(const std::string& args, const std::string& shell_prefix = "") {
  std::string cmd = shell_prefix + "CUDA_VISIBLE_DEVICES= exec " + std::string(MEMO_BINARY) + " " + args + " 2>&1";
  CliResult r;
  FILE* pipe = ::popen(cmd.c_str(), "r");
  if (!pipe) return r;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), pipe)) > 0) r.output.append(buf.data(), n);
  int status = ::pclose(pipe);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

// A scratch directory unique to this test process.
inline std::filesystem::path scratch_dir(const std::string& name) {
  auto d = std::filesystem::temp_directory_path() /
           ("memo_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::create_directories(d);
  return d;
}

inline std::string write_text(const std::filesystem::path& p, const std::string& text) {
  std::ofstream(p) << text;
  return p.string();
}

}  // namespace memo::testing
