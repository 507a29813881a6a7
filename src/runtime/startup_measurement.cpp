// The start-up measurement that feeds the alpha LP.
#include "runtime/startup_measurement.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>

#include "memory/device_memory.h"
#include "memory/host_pool.h"
#include "model/llama.h"

namespace memo::runtime {

StartupTimes measure_startup_times(model::LlamaModel& model, int64_t batch, int64_t seq_len,
                                   double skeletal_set_bytes) {
  using Clock = std::chrono::steady_clock;
  const auto device = model.options().device;
  auto seconds = [&](auto&& fn) {
    fn();  // warm-up
    memory::synchronize(device);
    auto t0 = Clock::now();
    fn();
    memory::synchronize(device);
    return std::chrono::duration<double>(Clock::now() - t0).count();
  };
  StartupTimes out;
  const int64_t probe = std::min<int64_t>(256ll << 20, static_cast<int64_t>(skeletal_set_bytes));
  auto dev = at::empty({probe}, at::TensorOptions().dtype(at::kByte).device(device));  // [probe]
  // Host memory like the pool's: pinned on CUDA, and given back after (PyTorch's
  // pinned cache would keep it for the whole process); outside the CPU meter.
  auto host = memory::HostPool(probe, device).tensor().narrow(0, 0, probe);  // [probe]
  out.d2h_bytes_per_s = static_cast<double>(probe) / seconds([&] { host.copy_(dev); });
  out.h2d_bytes_per_s = static_cast<double>(probe) / seconds([&] { dev.copy_(host); });
  dev.reset();
  host.reset();

  const auto& cfg = model.config();
  const auto& w = model.compute().layers.front();
  auto rope = model.rope(seq_len);
  auto x = at::randn({batch, seq_len, cfg.hidden},
                     at::TensorOptions().dtype(model.options().compute_dtype).device(device));  // [B, S, h]
  model::LayerWeights scratch = w;
  for (auto& [n, t] : scratch.named()) *t = at::zeros_like(*t);
  model::LayerActivations acts;
  at::Tensor y;  // [B, S, h]
  out.forward_s = seconds([&] { acts = {}; y = model.layer().forward(w, rope, x, acts); });
  out.backward_s = seconds([&] { model.layer().backward(w, scratch, rope, acts, y); });
  out.recompute_s = seconds([&] { model.layer().recompute_tokens(w, rope, acts, 0); });
  out.pre_attention_s = seconds([&] {
    model::LayerActivations pre;
    model.layer().forward_pre_attention(w, rope, x, pre);
  });
  return out;
}

double measure_spare_device(const model::LlamaModel& model, int64_t batch, int64_t seq_len,
                            double skeletal_set_bytes, double whole_sequence_bytes) {
  const auto device = model.options().device;
  if (device.is_cpu()) return 0.0;  // the device is the host: nothing to keep resident apart
  memory::release_cached_memory(device);
  const auto info = memory::device_memory_info(device);
  const auto stats = memory::memory_stats(device);
  const double set = skeletal_set_bytes;
  const double x_bytes = static_cast<double>(batch * seq_len * model.config().hidden *  // [B, S, h]
                                             static_cast<int64_t>(c10::elementSize(model.options().compute_dtype)));
  double layer_weights = 0;
  for (const auto& [n, t] : model.compute().layers.front().named()) layer_weights += static_cast<double>(t->nbytes());
  // What prepare and the steps allocate beyond this point: two rounding
  // buffers; one layer's backward working set (the gradients of its
  // skeletal set and a half more for matmul outputs, dy, dx and the x held
  // for the copies, its weight gradients in the compute dtype); the loss
  // chunk's logits and their gradient (about 2 x 256 MiB).
  const double planned =
      2.0 * set + 1.5 * set + 4.0 * x_bytes + layer_weights + 512.0 * (1ll << 20) + whole_sequence_bytes;
  return memory::spare_device_bytes({static_cast<double>(info.free), static_cast<double>(info.total),
                                     static_cast<double>(stats.allocated), static_cast<double>(stats.reserved)},
                                    planned, 2.0 * (1ll << 30));
}

}  // namespace memo::runtime
