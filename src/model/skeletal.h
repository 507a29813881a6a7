// The skeletal set of one decoder layer (the tensors made in forward and
// needed in backward) and the one table that describes it: each tensor one
// row (name, member, shape as a function of the config and the token count,
// dtype, token dimension, head dimension, always offloaded or not), like
// llm.c's TENSOR_SPEC. LayerActivations::for_each, skeletal_specs,
// allocate_skeletal and token_slice are all derived from the table, so
// nothing else depends on the order of hand-kept lists.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "model/config.h"

namespace memo::model {

// The skeletal set of one layer: made in forward, needed in backward.
// B batch, S tokens, h hidden, f ffn; st = statistics dtype (ops.h).
struct LayerActivations {
  at::Tensor x;      // [B, S, h]             layer input (the recompute source)
  at::Tensor n1;     // [B, S, h]             rmsnorm(x) * norm1
  at::Tensor rstd1;  // [B, S]       st
  at::Tensor qkv;    // [B, S, (nh+2nkv) d]   q, k after RoPE; v
  at::Tensor o;      // [B, S, nh d]          attention output
  at::Tensor lse;    // [B, nh, S]   st       attention log-sum-exp
  at::Tensor x2;     // [B, S, h]             x + o Wo^T
  at::Tensor n2;     // [B, S, h]             rmsnorm(x2) * norm2
  at::Tensor rstd2;  // [B, S]       st
  at::Tensor gu;     // [B, S, 2f]            [gate | up] = n2 Wgu^T
  at::Tensor a;      // [B, S, f]             silu(gate) * up

  // Visits every tensor with its name, in the table's order (skeletal_table).
  void for_each(const std::function<void(const char*, at::Tensor&)>& fn);
  void for_each(const std::function<void(const char*, const at::Tensor&)>& fn) const;
  // Bytes of the defined tensors (storage of each, counted once per tensor).
  int64_t bytes() const;
};

// Which dtype a skeletal tensor has: the compute dtype, or the statistics
// dtype of the norms and the attention (stat_dtype(compute), ops.h).
enum class SkeletalDtype { Compute, Statistics };
at::ScalarType resolve(SkeletalDtype kind, at::ScalarType compute);

// One row of the table.
struct SkeletalRow {
  const char* name;
  at::Tensor LayerActivations::*member;
  // The full shape for `batch` sequences of `tokens` tokens each.
  std::vector<int64_t> (*shape)(const ModelConfig& c, int64_t batch, int64_t tokens);
  SkeletalDtype dtype;
  int64_t token_dim;      // the dimension that indexes tokens (2 for lse, else 1)
  int64_t heads_dim;      // the dimension that holds the attention heads, -1 if none:
                          // what sequence parallelism shards by head (qkv, o: the
                          // flattened heads x head_dim; lse: the heads)
  bool always_offloaded;  // x, o, lse: never recomputed token-wise
  bool layer_input;       // x: given to forward, not written by it (no rounding-buffer slot)
};

// The whole table, in LayerActivations' member order.
std::span<const SkeletalRow> skeletal_table();
// The row of `member` (throws Error for a pointer that is not in the table).
const SkeletalRow& skeletal_row(at::Tensor LayerActivations::*member);

// Shape and dtype of one skeletal tensor for a given batch and sequence.
struct SkeletalSpec {
  const char* name;
  std::vector<int64_t> shape;
  at::ScalarType dtype;
  int64_t token_dim;  // the dimension that indexes tokens (2 for lse, else 1)
  bool always_offloaded;  // x, o, lse: never recomputed token-wise
  at::Tensor LayerActivations::*member = nullptr;
  int64_t heads_dim = -1;    // see SkeletalRow
  bool layer_input = false;  // see SkeletalRow
  int64_t bytes() const;
};
// The skeletal set in LayerActivations::for_each order, from the table.
std::vector<SkeletalSpec> skeletal_specs(const ModelConfig& c, int64_t batch, int64_t seq_len,
                                         at::ScalarType compute);
// Preallocated tensors for one skeletal set (a rounding buffer): every tensor
// but x, which forward never writes (acts.x is the layer's input itself) and
// backward takes from wherever the policy kept the input.
LayerActivations allocate_skeletal(const ModelConfig& c, int64_t batch, int64_t seq_len,
                                   at::ScalarType compute, at::Device device);
// Views of the tokens [t0, t0 + n) of every sequence of every defined tensor
// of `acts` (each narrowed along its token dimension; undefined stay
// undefined). What a chunk of a layer reads and writes (issue 14's chunks).
LayerActivations token_slice(const LayerActivations& acts, int64_t t0, int64_t n);

}  // namespace memo::model
