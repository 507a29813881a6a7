// Hardware figures the cost model plans against (docs/design.md section 6): one
// accelerator's peak, memory and host link, and the host it sits in. Presets
// for the cards the paper and ANCHORS.md use; every field can be overridden.
// Pure C++ (no torch).
#pragma once

#include <string>
#include <vector>

namespace memo::plan {

struct Hardware {
  std::string name = "custom";
  double peak_flops = 0;            // dense bf16 FLOP/s of one GPU
  double device_bytes = 0;          // device memory of one GPU
  double h2d_bytes_per_s = 0;       // host link, pinned, per GPU
  double d2h_bytes_per_s = 0;
  double host_bytes = 0;            // host memory of one host (shared by its GPUs)
  int gpus_per_host = 8;
  double matmul_efficiency = 0.7;     // fraction of peak bf16 matmuls reach
  double attention_efficiency = 0.55;  // causal fused attention, fwd + bwd (ANCHORS: cuDNN 551/989)
  double reserve_bytes = 2.0 * (1ull << 30);  // CUDA context, library workspaces, allocator slack
  // Collective links (cost_model: a group of <= gpus_per_host ranks uses the
  // intra-host link, a larger one the inter-host link), bytes per second one
  // GPU sends in one direction, and the fixed cost of one collective call.
  double intra_host_bytes_per_s = 0;  // NVLink
  double inter_host_bytes_per_s = 0;  // InfiniBand, per GPU (one NIC each)
  double collective_latency_s = 20e-6;  // assumption: launch + ring start of one NCCL call

  // Host memory one GPU may use: host_bytes / gpus_per_host.
  double host_share() const { return gpus_per_host > 0 ? host_bytes / gpus_per_host : 0.0; }

  // Throws InputError naming the first field that is not positive.
  void validate() const;
};

// Names of the presets, in display order.
std::vector<std::string> hardware_names();

// A preset by name; throws InputError naming the known ones.
Hardware hardware_preset(const std::string& name);

}  // namespace memo::plan
