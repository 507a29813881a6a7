// Where a layer's weights come from when the executor runs it
// (docs/design.md, "The step as a per-layer program"). Today the whole model
// sits on the device (ReplicaWeights); a ZeRO-3 source gathers a layer's
// shards on a communication stream one layer ahead (prefetch), waits for them
// (acquire) and frees the gathered copy after use (release).
#pragma once

#include <cstdint>

#include "model/llama.h"

namespace memo::runtime {

class WeightSource {
 public:
  virtual ~WeightSource() = default;
  // Start bringing `layer`'s weights (asynchronously); the executor calls it
  // one layer ahead, in forward and in backward.
  virtual void prefetch(int64_t layer) {}
  // `layer`'s compute-dtype weights, ready for the compute stream; valid
  // until release(layer).
  virtual const model::LayerWeights& acquire(int64_t layer) = 0;
  // The executor is done with `layer`'s weights until its next acquire.
  virtual void release(int64_t layer) {}
};

// Every layer's weights on this device: acquire hands out the model's compute
// copies; nothing moves.
class ReplicaWeights final : public WeightSource {
 public:
  explicit ReplicaWeights(const model::ModelWeights& compute) : compute_(compute) {}
  const model::LayerWeights& acquire(int64_t layer) override {
    return compute_.layers.at(static_cast<size_t>(layer));
  }

 private:
  const model::ModelWeights& compute_;
};

}  // namespace memo::runtime
