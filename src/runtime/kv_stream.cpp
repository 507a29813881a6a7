// K and V of a chunked layer in host blocks, fetched block by block; dK, dV
// host accumulators (runtime/kv_stream.h).
#include "runtime/kv_stream.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "core/error.h"

namespace memo::runtime {

namespace {

// A real copy onto the device even on a CPU run (where .to() would return
// the host tensor itself): the staging buffer the device holds.
at::Tensor staged(const at::Tensor& host, const at::TensorOptions& options) {
  return at::empty(host.sizes(), options).copy_(host);
}

}  // namespace

at::Tensor KvStream::host_tensor(memory::HostPool& pool, int64_t elements, at::ScalarType dtype,
                                 c10::Device device) {
  const int64_t bytes = elements * static_cast<int64_t>(c10::elementSize(dtype));
  pool = memory::HostPool(std::max<int64_t>(bytes, 1), device);
  return pool.tensor().narrow(0, 0, bytes).view(dtype);  // [elements]
}

void KvStream::begin_layer(const model::ModelConfig& c, int64_t layer, int64_t B, int64_t S, int64_t C,
                           const at::TensorOptions& kv_options) {
  if (B < 1 || S < 1 || C < 1) throw Error(cat("kv stream: B ", B, ", S ", S, ", C ", C, " must be >= 1"));
  layers_.erase(layer);
  Layer& l = layers_[layer];
  l.B = B, l.S = S, l.C = C, l.nkv = c.kv_heads, l.d = c.head_dim;
  l.device = kv_options;
  l.kv_host = host_tensor(l.kv_pool, B * S * 2 * l.nkv * l.d, kv_options.dtype().toScalarType(),
                          kv_options.device());
  note_host();
}

KvStream::Layer& KvStream::layer_of(int64_t layer) {
  auto it = layers_.find(layer);
  if (it == layers_.end()) throw Error(cat("kv stream: layer ", layer, " has no host blocks"));
  return it->second;
}

at::Tensor KvStream::block(const Layer& l, const at::Tensor& flat, int64_t chunk) {
  const int64_t t0 = chunk * l.C, n = std::min(l.C, l.S - t0), w = 2 * l.nkv * l.d;
  if (chunk < 0 || t0 >= l.S) throw Error(cat("kv stream: no chunk ", chunk, " of ", l.S, " tokens"));
  return flat.narrow(0, l.B * t0 * w, l.B * n * w).view({l.B, n, w});  // [B, n, 2 nkv d]
}

void KvStream::write(int64_t layer, int64_t chunk, const at::Tensor& kv_chunk) {
  Layer& l = layer_of(layer);
  auto dst = block(l, l.kv_host, chunk);
  dst.copy_(kv_chunk);
  to_host_ += static_cast<int64_t>(dst.nbytes());
}

model::KeyBlocks KvStream::blocks(int64_t layer) {
  Layer& l = layer_of(layer);
  return [this, &l](int64_t s0, int64_t len) {
    if (s0 % l.C != 0 || len != std::min(l.C, l.S - s0))
      throw Error(cat("kv stream: key range [", s0, ", ", s0 + len, ") is not one chunk of ", l.C));
    auto kv = staged(block(l, l.kv_host, s0 / l.C), l.device);  // [B, len, 2 nkv d] on the device
    to_device_ += static_cast<int64_t>(kv.nbytes());
    auto heads = kv.view({l.B, len, 2 * l.nkv, l.d});
    return std::make_pair(heads.narrow(2, 0, l.nkv).transpose(1, 2),       // k [B, nkv, len, d]
                          heads.narrow(2, l.nkv, l.nkv).transpose(1, 2));  // v [B, nkv, len, d]
  };
}

void KvStream::begin_grads(int64_t layer, at::ScalarType stat_dtype) {
  Layer& l = layer_of(layer);
  l.grad_host = host_tensor(l.grad_pool, l.B * l.S * 2 * l.nkv * l.d, stat_dtype, l.device.device());
  l.grad_host.zero_();
  note_host();
}

model::KeyGrads KvStream::add_grads(int64_t layer) {
  Layer& l = layer_of(layer);
  return [this, &l](int64_t s0, int64_t len, const at::Tensor& dk, const at::Tensor& dv) {
    if (s0 % l.C != 0 || len != std::min(l.C, l.S - s0))
      throw Error(cat("kv stream: gradient range [", s0, ", ", s0 + len, ") is not one chunk of ", l.C));
    auto host = block(l, l.grad_host, s0 / l.C);                  // [B, len, 2 nkv d]
    auto acc = staged(host, l.device.dtype(host.scalar_type()));  // staged on the device
    auto heads = acc.view({l.B, len, 2 * l.nkv, l.d});
    heads.narrow(2, 0, l.nkv).transpose(1, 2).add_(dk);           // [B, nkv, len, d]
    heads.narrow(2, l.nkv, l.nkv).transpose(1, 2).add_(dv);
    host.copy_(acc);
    to_device_ += static_cast<int64_t>(acc.nbytes());
    to_host_ += static_cast<int64_t>(acc.nbytes());
  };
}

at::Tensor KvStream::take_grads(int64_t layer, int64_t chunk) {
  Layer& l = layer_of(layer);
  auto acc = staged(block(l, l.grad_host, chunk), l.device.dtype(l.grad_host.scalar_type()));  // [B, n, 2 nkv d]
  to_device_ += static_cast<int64_t>(acc.nbytes());
  return acc;
}

int64_t KvStream::host_bytes() const {
  int64_t bytes = 0;
  for (const auto& [i, l] : layers_)
    bytes += (l.kv_host.defined() ? static_cast<int64_t>(l.kv_host.nbytes()) : 0) +
             (l.grad_host.defined() ? static_cast<int64_t>(l.grad_host.nbytes()) : 0);
  return bytes;
}

void KvStream::note_host() { peak_host_ = std::max(peak_host_, host_bytes()); }

}  // namespace memo::runtime
