// Registration of the `memo` subcommands. Each add_*_command creates its
// subcommand on the root app and, when that subcommand is parsed, sets
// `action` to the work to run; main() runs it under the error-to-exit-code map.
#pragma once

#include <functional>
#include <string>

#include "core/cpu_threads.h"

namespace CLI {
class App;
}

namespace memo::cli {

using Action = std::function<int()>;

void add_train_command(CLI::App& root, Action& action);
void add_dsa_command(CLI::App& root, Action& action);
void add_bench_command(CLI::App& root, Action& action);
void add_plan_command(CLI::App& root, Action& action);
void add_eval_command(CLI::App& root, Action& action);

// The CPU thread choice main() applied for this process (core/cpu_threads.h),
// and the header line that shows it.
const CpuThreads& cpu_threads();
std::string describe_cpu_threads();

}  // namespace memo::cli
