// Hardware presets. Device memory is the total nvidia-smi reports for the
// card; host memory (2 TB per host) and 8 GPUs per host are assumptions about
// a typical 8-GPU server, not measurements. Link figures: PCIe 4 x16 (A100,
// A800) is taken as 25 GB/s each way; H100/H200 use the 55 GB/s each way
// measured on the H200 host (ANCHORS.md). Collective links, public spec
// figures per GPU per direction: NVLink 3 on A100 SXM 600 GB/s total = 300
// GB/s each way; A800 SXM's reduced NVLink 400 GB/s total = 200 GB/s each
// way; NVLink 4 on H100/H200 SXM 900 GB/s total = 450 GB/s each way.
// Across hosts one NIC per GPU: HDR InfiniBand 200 Gb/s = 25 GB/s (A100,
// A800 servers), NDR 400 Gb/s = 50 GB/s (H100, H200 servers). Real
// collectives reach less (NCCL bus bandwidth ~ 70-85% of these).
#include "plan/hardware.h"

#include <cmath>

#include "core/error.h"
#include "core/units.h"

namespace memo::plan {

namespace {

constexpr double kMiB = 1024.0 * 1024.0;
constexpr double kHostPerServer = 2e12;  // assumption: 2 TB of host memory per 8-GPU host

Hardware card(const char* name, double peak, double device, double link, double nvlink, double ib) {
  Hardware h;
  h.name = name;
  h.peak_flops = peak;
  h.device_bytes = device;
  h.h2d_bytes_per_s = link;
  h.d2h_bytes_per_s = link;
  h.host_bytes = kHostPerServer;
  h.gpus_per_host = 8;
  h.intra_host_bytes_per_s = nvlink;
  h.inter_host_bytes_per_s = ib;
  return h;
}

}  // namespace

void Hardware::validate() const {
  auto positive = [&](double v, const char* field) {
    require_input(v > 0 && std::isfinite(v), "hardware ", name, ": ", field, " must be a finite positive number, got ", v);
  };
  positive(peak_flops, "peak flops (--peak-tflops)");
  positive(device_bytes, "device memory (--device-gib)");
  positive(h2d_bytes_per_s, "host-to-device bandwidth (--h2d-gbps)");
  positive(d2h_bytes_per_s, "device-to-host bandwidth (--d2h-gbps)");
  positive(host_bytes, "host memory (--host-gib)");
  require_input(gpus_per_host > 0, "hardware ", name, ": gpus per host (--gpus-per-host) must be positive, got ",
                gpus_per_host);
  require_input(matmul_efficiency > 0 && matmul_efficiency <= 1, "hardware ", name,
                ": matmul efficiency must be in (0, 1], got ", matmul_efficiency);
  require_input(attention_efficiency > 0 && attention_efficiency <= 1, "hardware ", name,
                ": attention efficiency must be in (0, 1], got ", attention_efficiency);
  positive(intra_host_bytes_per_s, "intra-host link bandwidth (--nvlink-gbps)");
  positive(inter_host_bytes_per_s, "inter-host link bandwidth (--ib-gbps)");
  require_input(collective_latency_s >= 0 && std::isfinite(collective_latency_s), "hardware ", name,
                ": collective latency (--comm-latency-us) must be a finite number >= 0, got ", collective_latency_s);
  require_input(reserve_bytes >= 0 && std::isfinite(reserve_bytes), "hardware ", name, ": reserve must be >= 0");
}

std::vector<std::string> hardware_names() { return {"a100-80gb", "a800-80gb", "h100-80gb", "h200-141gb"}; }

Hardware hardware_preset(const std::string& name) {
  if (name == "a100-80gb") return card("a100-80gb", 312e12, 81920 * kMiB, 25e9, 300e9, 25e9);
  if (name == "a800-80gb") return card("a800-80gb", 312e12, 81920 * kMiB, 25e9, 200e9, 25e9);
  if (name == "h100-80gb") return card("h100-80gb", 989e12, 81559 * kMiB, 55e9, 450e9, 50e9);
  if (name == "h200-141gb") return card("h200-141gb", 989e12, 143771 * kMiB, 55e9, 450e9, 50e9);
  throw InputError(cat("unknown hardware \"", name, "\" (--hardware): known are ", joined(hardware_names())));
}

}  // namespace memo::plan
