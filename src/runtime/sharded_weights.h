// ZeRO-3's weight source (docs/dist.md, "ZeRO"): each rank keeps only its
// flat shard of every layer's compute-dtype weights; prefetch(i) starts the
// all-gather of layer i (asynchronous: Gloo's threads on CPU, NCCL's own
// stream on CUDA) while the executor computes the layer before it, acquire
// waits for it and hands out whole LayerWeights (views of the gathered
// buffer), release frees the gathered copy; backward gathers again. At most
// two layers are gathered at once (the one in use and the next): a third is
// an Error. The embedding, final norm and head are not layers: they stay
// whole on every rank (the trainer's compute weights).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <vector>

#include "dist/comm.h"
#include "dist/flat_layout.h"
#include "model/layer.h"
#include "runtime/weight_source.h"

namespace memo::runtime {

class ShardedLayerWeights final : public WeightSource {
 public:
  // Keeps this rank's shard of each of `layers` (whole, the same on every
  // rank; the caller may free them afterwards), in their dtype and device.
  ShardedLayerWeights(dist::Group& group, const std::vector<model::LayerWeights>& layers);

  void prefetch(int64_t layer) override;
  const model::LayerWeights& acquire(int64_t layer) override;
  void release(int64_t layer) override;

  int64_t layers() const { return static_cast<int64_t>(shards_.size()); }
  const dist::FlatLayout& layout() const { return layout_; }  // every layer's (they have one shape)
  // This rank's shard of a layer, [shard]: the optimizer writes the updated
  // weights here (copy_ casts), between steps, with no layer gathered.
  at::Tensor& shard(int64_t layer);

  // Bytes of gathered layers alive now, their peak since reset_peak, and the
  // all-gathers issued (each moves dist::zero_collective_bytes of one layer).
  int64_t gathered_bytes() const { return gathered_bytes_; }
  int64_t peak_gathered_bytes() const { return peak_gathered_bytes_; }
  int64_t gathers() const { return gathers_; }
  void reset_peak() { peak_gathered_bytes_ = gathered_bytes_; }
  // Bytes of one gathered layer: its padded flat buffer.
  int64_t layer_bytes() const;
  // Bytes of the shards this rank keeps (every layer's).
  int64_t shard_bytes() const;

 private:
  struct Gathered {
    at::Tensor full;  // [padded]
    dist::Work work;
    model::LayerWeights weights;  // views of full, once waited
    bool ready = false;
  };
  Gathered& start(int64_t layer);

  dist::Group& group_;
  dist::FlatLayout layout_;
  std::vector<at::Tensor> shards_;  // per layer, [shard]
  std::map<int64_t, Gathered> live_;
  int64_t gathered_bytes_ = 0, peak_gathered_bytes_ = 0, gathers_ = 0;
};

}  // namespace memo::runtime
