// Who this process is among the ranks of a job, read from the launcher's
// environment: torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
// MASTER_PORT, TORCHELASTIC_USE_AGENT_STORE), SLURM's srun (SLURM_PROCID,
// SLURM_NTASKS, SLURM_LOCALID) or the same variables set by hand. No variable
// (or WORLD_SIZE 1): one process, exactly as without this file.
#pragma once

#include <map>
#include <string>

namespace memo::dist {

struct LaunchInfo {
  int rank = 0;               // global rank, 0 .. world_size - 1
  int world_size = 1;
  int local_rank = 0;         // rank on this node: picks the CUDA device
  int local_world_size = 1;   // ranks on this node (informational)
  std::string master_addr;    // host of the rendezvous store
  int master_port = 0;
  // Under torchrun the elastic agent hosts the TCPStore at MASTER_ADDR:MASTER_PORT
  // and every rank connects as a client; otherwise rank 0 hosts it.
  bool agent_store = false;
  int restart_count = 0;      // TORCHELASTIC_RESTART_COUNT: keys of a restarted attempt are fresh
  std::string launcher = "single";  // single, torchrun, srun or env
  std::string source;         // which variables said so, for messages ("WORLD_SIZE=4, RANK=1")

  bool distributed() const { return world_size > 1; }
  bool is_root() const { return rank == 0; }
};

using Environment = std::map<std::string, std::string>;

// The launch the variables in `env` describe. Pure (tests give a map); throws
// InputError naming the variable for a malformed or inconsistent value
// (RANK=4 with WORLD_SIZE=4, MASTER_PORT=0, WORLD_SIZE=2 without MASTER_ADDR).
LaunchInfo parse_launch(const Environment& env);

// The variables parse_launch reads, taken from this process's environment.
Environment launch_environment();

// parse_launch(launch_environment()).
LaunchInfo launch_from_environment();

}  // namespace memo::dist
