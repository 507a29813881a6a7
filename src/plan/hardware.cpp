// Hardware presets. Device memory is the total nvidia-smi reports for the
// card; host memory (2 TB per host) and 8 GPUs per host are assumptions about
// a typical 8-GPU server, not measurements. Link figures: PCIe 4 x16 (A100,
// A800) is taken as 25 GB/s each way; H100/H200 use the 55 GB/s each way
// measured on the H200 host (ANCHORS.md).
#include "plan/hardware.h"

#include <cmath>

#include "core/error.h"
#include "core/units.h"

namespace memo::plan {

namespace {

constexpr double kMiB = 1024.0 * 1024.0;
constexpr double kHostPerServer = 2e12;  // assumption: 2 TB of host memory per 8-GPU host

Hardware card(const char* name, double peak, double device, double link) {
  Hardware h;
  h.name = name;
  h.peak_flops = peak;
  h.device_bytes = device;
  h.h2d_bytes_per_s = link;
  h.d2h_bytes_per_s = link;
  h.host_bytes = kHostPerServer;
  h.gpus_per_host = 8;
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
  require_input(reserve_bytes >= 0 && std::isfinite(reserve_bytes), "hardware ", name, ": reserve must be >= 0");
}

std::vector<std::string> hardware_names() { return {"a100-80gb", "a800-80gb", "h100-80gb", "h200-141gb"}; }

Hardware hardware_preset(const std::string& name) {
  if (name == "a100-80gb") return card("a100-80gb", 312e12, 81920 * kMiB, 25e9);
  if (name == "a800-80gb") return card("a800-80gb", 312e12, 81920 * kMiB, 25e9);
  if (name == "h100-80gb") return card("h100-80gb", 989e12, 81559 * kMiB, 55e9);
  if (name == "h200-141gb") return card("h200-141gb", 989e12, 143771 * kMiB, 55e9);
  throw InputError(cat("unknown hardware \"", name, "\" (--hardware): known are ", joined(hardware_names())));
}

}  // namespace memo::plan
