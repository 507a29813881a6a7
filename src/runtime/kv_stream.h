// K and V of a chunked layer on the host (`--kv-on-host`, docs/chunks.md "K
// and V on the host"): per chunk a dense host block [B, n, 2 nkv d] of the
// chunk's keys and values (in a memory::HostPool, outside the device's
// allocator), written after the chunk's QKV and copied back to the device one
// block at a time while a later chunk attends to it; in backward, host
// accumulators of dK, dV per chunk in the statistics dtype, each block's
// share added on the device and copied back. Nothing [S x kv] is on the
// device. The copies are synchronous here (no overlap yet); the link bytes
// each way are counted, for the plan's formula (plan/chunk_plan.h).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <vector>

#include "memory/host_pool.h"
#include "model/chunked_attention.h"
#include "model/config.h"

namespace memo::runtime {

class KvStream {
 public:
  // The layer's host blocks for B sequences of S tokens in chunks of C, K and
  // V in `kv_options`' dtype (the compute dtype; its device is where blocks
  // are fetched to). Replaces the layer's blocks if it had any.
  void begin_layer(const model::ModelConfig& c, int64_t layer, int64_t B, int64_t S, int64_t C,
                   const at::TensorOptions& kv_options);
  bool has_layer(int64_t layer) const { return layers_.count(layer) > 0; }
  // The chunk's k and v [B, n, 2 nkv d] (device) into its host block.
  void write(int64_t layer, int64_t chunk, const at::Tensor& kv_chunk);
  // Keys and values of the layer's chunks, as model::KeyBlocks: a range must
  // be one chunk (the chunk program asks with kv_block = C).
  model::KeyBlocks blocks(int64_t layer);
  // Backward: zeroed host accumulators of dK, dV per chunk of the layer, in
  // `stat_dtype`.
  void begin_grads(int64_t layer, at::ScalarType stat_dtype);
  // Adds dk, dv [B, nkv, n, d] of one chunk's keys into its host accumulator
  // (fetched to the device, added there, copied back).
  model::KeyGrads add_grads(int64_t layer);
  // The chunk's accumulated dK, dV [B, n, 2 nkv d] on the device (statistics
  // dtype), its host accumulator released.
  at::Tensor take_grads(int64_t layer, int64_t chunk);
  // Frees the layer's host blocks and accumulators.
  void release(int64_t layer) { layers_.erase(layer); }

  // Host bytes held now (K, V blocks and accumulators), the most held at once
  // since construction, and the bytes copied over the link each way.
  int64_t host_bytes() const;
  int64_t peak_host_bytes() const { return peak_host_; }
  int64_t to_host_bytes() const { return to_host_; }
  int64_t to_device_bytes() const { return to_device_; }
  void reset_counters() { to_host_ = to_device_ = 0; }

 private:
  struct Layer {
    int64_t B = 0, S = 0, C = 0, nkv = 0, d = 0;
    at::TensorOptions device;  // compute dtype on the device
    memory::HostPool kv_pool, grad_pool;
    at::Tensor kv_host;    // [B S 2 nkv d] flat: chunk blocks [B, n, 2 nkv d] one after another
    at::Tensor grad_host;  // the same layout, statistics dtype
  };
  Layer& layer_of(int64_t layer);
  // Block `chunk` [B, n, 2 nkv d] of a flat per-layer host tensor.
  static at::Tensor block(const Layer& l, const at::Tensor& flat, int64_t chunk);
  // A flat host tensor of `elements` of `dtype` in a new pool.
  static at::Tensor host_tensor(memory::HostPool& pool, int64_t elements, at::ScalarType dtype,
                                c10::Device device);
  void note_host();

  std::map<int64_t, Layer> layers_;
  int64_t peak_host_ = 0;
  int64_t to_host_ = 0, to_device_ = 0;
};

}  // namespace memo::runtime
