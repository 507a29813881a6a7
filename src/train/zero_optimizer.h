// ZeRO stages 1-3 for the optimizer (docs/dist.md, "ZeRO"): every rank of a
// group (the world: dp replicas and sp ranks all hold partial gradients of
// the same weights) keeps the fp32 master weights and AdamW moments of its
// flat shard of each unit only (one unit per layer, then the embedding, final
// norm and head: dist/flat_layout.h). Gradients are reduce-scattered into the
// shards (stage 2: one layer at a time as its gradients complete; stage 1:
// every unit after the last micro-batch), the clipping norm is an all-reduce
// of the shards' squared norms, AdamW runs on the shard pieces with the very
// kernel of the unsharded optimizer (train/optimizer.h), and the updated
// shards are all-gathered into the compute-dtype weights (stages 1-2; stage
// 3 writes the layers' shards into a runtime::ShardedLayerWeights and gathers
// only the non-layer weights, which stay whole).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <vector>

#include "dist/comm.h"
#include "dist/flat_layout.h"
#include "model/llama.h"
#include "runtime/sharded_weights.h"
#include "train/optimizer.h"

namespace memo::train {

// The units of a model's weights, as indices into weights.named(): one per
// layer (its tensors in LayerWeights::named() order, the order
// runtime::ShardedLayerWeights uses), then the rest (embed, final_norm,
// lm_head when untied).
std::vector<std::vector<size_t>> zero_units(model::ModelWeights& weights);

class ZeroOptimizer {
 public:
  // Takes this rank's shard of `master` (whole and the same on every rank:
  // the seeded initialisation or loaded weights); moments start at zero.
  // stage: 1, 2 or 3 (what it changes here is only when reduce is called and
  // where publish() puts the layers).
  ZeroOptimizer(dist::Group& group, model::ModelWeights& master, int stage, AdamWOptions options);
  ~ZeroOptimizer();

  int stage() const { return stage_; }
  int64_t units() const { return static_cast<int64_t>(layouts_.size()); }
  int64_t layers() const { return units() - 1; }
  const dist::FlatLayout& layout(int64_t unit) const { return layouts_.at(static_cast<size_t>(unit)); }

  // Gradients. Each call flattens the unit's gradients (summed over this
  // rank's micro-batches so far, or one micro-batch's: the shards add up
  // whatever they are given) and starts their reduce-scatter, summed over
  // the group, into the unit's shard (asynchronously; at most two in
  // flight, so a staging copy of at most two units' gradients lives at once).
  // The caller may zero or free the gradients it passed once this returns.
  void reduce_layer(int64_t layer, const model::LayerWeights& grads);  // stage 2: at on_layer_gradients
  void reduce_rest(model::ModelWeights& grads);                         // embed, final norm, head
  void reduce_all(model::ModelWeights& grads);                          // every unit (stage 1)
  // Waits for every reduce-scatter in flight: the shards' gradients complete.
  void finish_gradients();

  // The global L2 norm of the gradients, [] float64 on their device (an
  // all_reduce of the shards' squared norms; reading it waits).
  at::Tensor grad_norm();
  void scale_grads(double factor);
  // AdamW on this rank's shard pieces (the unsharded kernel), then the
  // shards' gradients are zeroed for the next step.
  void step(double lr);
  int64_t steps_taken() const { return adamw_->steps_taken(); }

  // The updated weights where forward and backward read them. Stages 1-2:
  // every unit gathered into `compute` (cast to its dtype). Stage 3: the
  // layers' shards into `layers` (no gather) and the rest gathered into
  // `compute`.
  // The compute tensors are written in place (LlamaModel::compute() hands
  // them out const: their handles do not change, their contents do).
  void publish(const model::ModelWeights& compute, runtime::ShardedLayerWeights* layers = nullptr);

  // Checkpoints (train/zero_checkpoint.h). Whole tensors of the unit's
  // master weights / first moments / second moments gathered into `out`
  // (in the unit's order; every rank takes part, every rank receives).
  enum class State { Master, FirstMoment, SecondMoment };
  void gather_unit(int64_t unit, State which, const std::vector<at::Tensor*>& out);
  // Whole tensors in the units' shapes, uninitialised, in the master dtype
  // on `device` (what a checkpoint is gathered into or read from: the
  // model's own whole master weights need not exist under ZeRO).
  model::ModelWeights empty_whole(const at::Device& device) const;
  // This rank's shards from whole tensors (in weights.named() order for
  // `master`; m and v in the same order), and the step count.
  void load_whole(model::ModelWeights& master, const std::vector<at::Tensor>& m, const std::vector<at::Tensor>& v,
                  int64_t steps);
  // True on every rank when any rank's shard of the master weights or
  // moments holds a NaN or an infinity (an all_reduce).
  bool any_non_finite();

  // Bytes of the shards this rank holds (every unit's; the moments: both).
  int64_t master_bytes() const { return bytes_of(master_); }
  int64_t grad_bytes() const { return bytes_of(grads_); }
  int64_t moment_bytes() const { return bytes_of(m_) + bytes_of(v_); }

  // Exposed for tests: this rank's shard buffers of a unit, [shard].
  const at::Tensor& master_shard(int64_t unit) const { return master_.at(static_cast<size_t>(unit)); }
  const at::Tensor& grad_shard(int64_t unit) const { return grads_.at(static_cast<size_t>(unit)); }

 private:
  struct InFlight;
  void start_reduce(int64_t unit, const std::vector<const at::Tensor*>& grads);
  void retire_oldest();
  at::Tensor& state_shard(int64_t unit, State which);
  static int64_t bytes_of(const std::vector<at::Tensor>& shards);

  dist::Group& group_;
  int stage_;
  std::vector<dist::FlatLayout> layouts_;
  std::vector<at::Tensor> master_, grads_, m_, v_;  // per unit, [shard]
  // Per piece (every unit's, in order): views of the shard buffers AdamW steps.
  std::vector<at::Tensor> master_pieces_, grad_pieces_;
  std::unique_ptr<AdamW> adamw_;
  std::deque<std::unique_ptr<InFlight>> in_flight_;
};

}  // namespace memo::train
