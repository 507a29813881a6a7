// Entry point of the `memo` executable: parses the subcommand and maps every
// error to an exit code (0 ok, 1 runtime failure, 2 bad input or usage).
#include <CLI/CLI.hpp>
#include <c10/util/Exception.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <iostream>

#include "cli/commands.h"
#include "core/error.h"

namespace {

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

int main(int argc, char** argv) {
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
