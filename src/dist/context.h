// The distributed context a process holds for its lifetime: the rendezvous
// store, the world/sp/dp groups of the mesh, the byte counters and the
// failure monitor. In a world of one there is no store and no process group
// at all: the three groups are local groups of one rank.
#pragma once

#include <c10/core/Device.h>

#include <chrono>
#include <memory>
#include <string>

#include "dist/comm.h"
#include "dist/launch.h"
#include "dist/mesh.h"

namespace memo::dist {

// Built with c10d and Gloo's headers (CMake found both); false: a world of
// more than one refuses with unavailable_reason().
bool available();
// Built with ProcessGroupNCCL (a CUDA libtorch and nccl.h).
bool nccl_available();
std::string unavailable_reason();

struct ContextOptions {
  // Every collective, the store and the join: a peer silent this long is an
  // error naming it (--dist-timeout).
  std::chrono::milliseconds timeout{std::chrono::seconds(300)};
  // CPU: Gloo. CUDA: NCCL on device LOCAL_RANK (the index given here is ignored).
  c10::Device device{c10::kCPU};
  // What every rank must agree on (e.g. the options that shape training):
  // compared with rank 0's at the join; a rank that differs is an InputError
  // on every rank. Empty: not checked.
  std::string agreement;
};

class Context {
 public:
  // Joins the job: the store (torchrun's agent's, else rank 0's), every rank's
  // arrival (a rank missing after the timeout is named), the agreement, then
  // the groups, closed by a barrier over the world. `mesh` must come from
  // check_mesh(launch.world_size, ...) (a mismatch is an Error).
  Context(const LaunchInfo& launch, const MeshShape& mesh, const ContextOptions& options = {});
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  const LaunchInfo& launch() const { return launch_; }
  const MeshShape& mesh() const { return mesh_; }
  MeshCoords coords() const { return coords_of(mesh_, launch_.rank); }
  int rank() const { return launch_.rank; }
  int world_size() const { return launch_.world_size; }
  bool distributed() const { return launch_.world_size > 1; }
  bool is_root() const { return launch_.rank == 0; }
  const std::string& backend_name() const { return backend_name_; }  // "gloo", "nccl", "local"
  c10::Device device() const { return device_; }

  Group& world() { return world_; }
  Group& sp() { return sp_; }
  Group& dp() { return dp_; }

  CommStats& stats() { return *stats_; }

 private:
  struct Store;
  LaunchInfo launch_;
  MeshShape mesh_;
  std::chrono::milliseconds timeout_;
  c10::Device device_{c10::kCPU};
  std::string backend_name_ = "local";
  std::shared_ptr<CommStats> stats_;
  std::shared_ptr<Store> store_;
  Group world_, sp_, dp_;
};

}  // namespace memo::dist
