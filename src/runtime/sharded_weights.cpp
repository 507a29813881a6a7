// ZeRO-3's weight source: layer shards, gathered one layer ahead, freed after use.
#include "runtime/sharded_weights.h"

#include <ATen/ATen.h>

#include "core/error.h"

namespace memo::runtime {

namespace {

std::vector<std::vector<int64_t>> layer_shapes(const model::LayerWeights& w) {
  std::vector<std::vector<int64_t>> shapes;
  for (const auto& [name, t] : w.named()) shapes.push_back(t->sizes().vec());
  return shapes;
}

std::vector<const at::Tensor*> tensors_of(const model::LayerWeights& w) {
  std::vector<const at::Tensor*> out;
  for (const auto& [name, t] : w.named()) out.push_back(t);
  return out;
}

}  // namespace

ShardedLayerWeights::ShardedLayerWeights(dist::Group& group, const std::vector<model::LayerWeights>& layers)
    : group_(group) {
  if (layers.empty()) throw Error("ShardedLayerWeights: no layers");
  layout_ = dist::flat_layout(layer_shapes(layers.front()), group.size(), group.rank());
  for (const auto& w : layers) {
    if (layer_shapes(w) != layout_.shapes) throw Error("ShardedLayerWeights: layers of different shapes");
    auto shard = at::empty({layout_.shard.shard}, w.wqkv.options());  // [shard]
    dist::shard_from_tensors(shard, tensors_of(w), layout_);
    shards_.push_back(std::move(shard));
  }
}

at::Tensor& ShardedLayerWeights::shard(int64_t layer) {
  if (layer < 0 || layer >= layers()) throw Error(cat("ShardedLayerWeights: no layer ", layer));
  if (!live_.empty()) throw Error("ShardedLayerWeights: a shard changed while a layer is gathered");
  return shards_[static_cast<size_t>(layer)];
}

int64_t ShardedLayerWeights::layer_bytes() const {
  return layout_.shard.padded * static_cast<int64_t>(shards_.front().element_size());
}

int64_t ShardedLayerWeights::shard_bytes() const {
  int64_t bytes = 0;
  for (const auto& s : shards_) bytes += static_cast<int64_t>(s.nbytes());
  return bytes;
}

ShardedLayerWeights::Gathered& ShardedLayerWeights::start(int64_t layer) {
  if (layer < 0 || layer >= layers()) throw Error(cat("ShardedLayerWeights: no layer ", layer));
  if (auto it = live_.find(layer); it != live_.end()) return it->second;
  // The executor uses a layer and prefetches the next: a third would mean
  // a release was missed, and memory would grow by a layer each time.
  if (live_.size() >= 2)
    throw Error(cat("ShardedLayerWeights: layer ", layer, " asked for while layers ", live_.begin()->first, " and ",
                    live_.rbegin()->first, " are gathered (at most two at once; a release is missing)"));
  const auto& shard = shards_[static_cast<size_t>(layer)];
  Gathered& g = live_[layer];
  // Allocated on the current (compute) stream; on CUDA NCCL writes it on its
  // own stream (ProcessGroupNCCL records the buffer there) and Work::wait
  // makes the compute stream wait, so freeing it at release is ordered.
  g.full = at::empty({layout_.shard.padded}, shard.options());  // [padded]
  g.work = dist::gather_shards(group_, g.full, shard);
  ++gathers_;
  gathered_bytes_ += layer_bytes();
  peak_gathered_bytes_ = std::max(peak_gathered_bytes_, gathered_bytes_);
  return g;
}

void ShardedLayerWeights::prefetch(int64_t layer) { start(layer); }

const model::LayerWeights& ShardedLayerWeights::acquire(int64_t layer) {
  Gathered& g = start(layer);
  if (!g.ready) {
    g.work.wait();
    auto views = dist::unflatten_views(g.full, layout_);
    size_t i = 0;
    for (auto& [name, t] : g.weights.named()) *t = views[i++];
    g.ready = true;
  }
  return g.weights;
}

void ShardedLayerWeights::release(int64_t layer) {
  auto it = live_.find(layer);
  if (it == live_.end()) return;
  it->second.work.wait();  // a prefetched layer released unused: its gather must end before its buffer goes
  live_.erase(it);
  gathered_bytes_ -= layer_bytes();
}

}  // namespace memo::runtime
