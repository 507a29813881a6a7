// parse_launch: the launcher's variables -> LaunchInfo, strictly checked.
#include "dist/launch.h"

#include <cerrno>
#include <cstdlib>
#include <optional>

#include "core/error.h"

namespace memo::dist {

namespace {

constexpr int kDefaultPort = 29500;  // torch's own default (TCPStoreOptions::kDefaultPort)

std::optional<std::string> get(const Environment& env, const std::string& key) {
  auto it = env.find(key);
  if (it == env.end() || it->second.empty()) return std::nullopt;
  return it->second;
}

// A whole decimal integer in [lo, hi], or InputError naming the variable.
int parse_int(const std::string& key, const std::string& text, long lo, long hi, const std::string& expected) {
  errno = 0;
  char* end = nullptr;
  const long v = std::strtol(text.c_str(), &end, 10);
  require_input(errno == 0 && end != text.c_str() && *end == '\0' && v >= lo && v <= hi, "environment variable ",
                key, "=\"", text, "\" is not ", expected);
  return static_cast<int>(v);
}

// A SLURM node list naming exactly one host ("node17"), else nothing
// ("node[1-4]" and "a,b" need scontrol to expand).
std::optional<std::string> single_host(const std::optional<std::string>& nodelist) {
  if (!nodelist || nodelist->find_first_of("[],") != std::string::npos) return std::nullopt;
  return nodelist;
}

}  // namespace

LaunchInfo parse_launch(const Environment& env) {
  LaunchInfo info;
  const auto world = get(env, "WORLD_SIZE");
  const auto slurm_rank = get(env, "SLURM_PROCID");
  // srun sets SLURM_STEP_NUM_TASKS for the step it launched; SLURM_NTASKS is the allocation's.
  const auto slurm_world = get(env, "SLURM_STEP_NUM_TASKS") ? get(env, "SLURM_STEP_NUM_TASKS") : get(env, "SLURM_NTASKS");
  constexpr long kMaxRanks = 1 << 20;

  std::string world_key, rank_key, local_key;
  if (world) {
    world_key = "WORLD_SIZE", rank_key = "RANK", local_key = "LOCAL_RANK";
    info.launcher = get(env, "TORCHELASTIC_RUN_ID") || get(env, "TORCHELASTIC_USE_AGENT_STORE") ? "torchrun" : "env";
  } else if (slurm_rank && slurm_world) {
    world_key = get(env, "SLURM_STEP_NUM_TASKS") ? "SLURM_STEP_NUM_TASKS" : "SLURM_NTASKS";
    rank_key = "SLURM_PROCID", local_key = "SLURM_LOCALID";
    info.launcher = "srun";
  } else {
    return info;  // one process
  }
  info.world_size = parse_int(world_key, *get(env, world_key), 1, kMaxRanks, "a number of ranks (1 or more)");
  info.source = cat(world_key, "=", info.world_size);
  const auto rank = get(env, rank_key);
  if (info.world_size == 1) {
    if (rank) (void)parse_int(rank_key, *rank, 0, 0, cat("0 (the only rank of ", world_key, "=1)"));
    info.launcher = "single";
    return info;
  }
  require_input(rank.has_value(), "environment variable ", world_key, "=", info.world_size, " says ",
                info.world_size, " ranks but ", rank_key, " (this process's rank) is not set");
  info.rank = parse_int(rank_key, *rank, 0, info.world_size - 1,
                        cat("a rank in [0, ", info.world_size - 1, "] (", world_key, "=", info.world_size, ")"));
  info.source += cat(", ", rank_key, "=", info.rank);

  const auto local_world = get(env, "LOCAL_WORLD_SIZE");
  info.local_world_size = local_world ? parse_int("LOCAL_WORLD_SIZE", *local_world, 1, info.world_size,
                                                  cat("a number of ranks in [1, ", info.world_size, "]"))
                                      : info.world_size;
  // Without LOCAL_RANK (variables set by hand on one node): the rank on the node.
  const auto local = get(env, local_key);
  info.local_rank = local ? parse_int(local_key, *local, 0, kMaxRanks - 1, "a rank (0 or more)")
                          : info.rank % info.local_world_size;

  if (const auto addr = get(env, "MASTER_ADDR")) {
    info.master_addr = *addr;
  } else if (info.launcher == "srun") {
    const auto host = get(env, "SLURM_STEP_NODELIST") ? single_host(get(env, "SLURM_STEP_NODELIST"))
                                                     : single_host(get(env, "SLURM_JOB_NODELIST"));
    require_input(host.has_value(), "MASTER_ADDR is not set and the SLURM node list names more than one host: "
                  "export MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1) before srun");
    info.master_addr = *host;
  } else {
    throw InputError(cat("environment variable MASTER_ADDR (the host of rank 0 or of torchrun's store) is not set; ",
                         info.source, " asks for ", info.world_size, " ranks"));
  }
  if (const auto port = get(env, "MASTER_PORT"))
    info.master_port = parse_int("MASTER_PORT", *port, 1, 65535, "a TCP port in [1, 65535]");
  else if (info.launcher == "srun")
    info.master_port = kDefaultPort;
  else
    throw InputError(cat("environment variable MASTER_PORT (the rendezvous store's TCP port) is not set; ",
                         info.source, " asks for ", info.world_size, " ranks"));

  // torchrun: "True" when its agent hosts the store (the only value Python's c10d accepts too).
  info.agent_store = get(env, "TORCHELASTIC_USE_AGENT_STORE").value_or("") == "True";
  if (const auto restarts = get(env, "TORCHELASTIC_RESTART_COUNT"))
    info.restart_count = parse_int("TORCHELASTIC_RESTART_COUNT", *restarts, 0, kMaxRanks, "a count (0 or more)");
  return info;
}

Environment launch_environment() {
  static const char* const kKeys[] = {
      "WORLD_SIZE",   "RANK",         "LOCAL_RANK",          "LOCAL_WORLD_SIZE",     "MASTER_ADDR",
      "MASTER_PORT",  "SLURM_PROCID", "SLURM_NTASKS",        "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID",
      "SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_RUN_ID",
      "TORCHELASTIC_RESTART_COUNT"};
  Environment env;
  for (const char* key : kKeys)
    if (const char* v = std::getenv(key)) env[key] = v;
  return env;
}

LaunchInfo launch_from_environment() { return parse_launch(launch_environment()); }

}  // namespace memo::dist
