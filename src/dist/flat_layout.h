// ZeRO's unit of sharding: a list of tensors (one layer's weights, or the
// embedding, final norm and head) laid end to end in one flat buffer, padded
// and cut into equal shards over a group (flat_shard in dist/zero.h). Says
// which part of which tensor each rank's shard holds, and copies between the
// tensors and the flat buffer; the collectives are zero.h's.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "dist/zero.h"

namespace memo::dist {

// The part of one tensor that lies in this rank's shard.
struct ShardPiece {
  size_t tensor = 0;          // index in the unit
  int64_t tensor_begin = 0;   // first element, in the tensor's flat (row-major) order
  int64_t shard_begin = 0;    // where it sits in the shard
  int64_t length = 0;         // > 0
};

struct FlatLayout {
  std::vector<std::vector<int64_t>> shapes;  // of each tensor
  std::vector<int64_t> offsets;              // of each tensor in the flat buffer
  FlatShard shard;                           // over the whole unit: numel, padded, shard, [begin, end)
  std::vector<ShardPiece> pieces;            // this rank's shard, tensor by tensor, in order

  int64_t numel() const { return shard.numel; }
  int64_t tensor_numel(size_t i) const;
};

// The layout of tensors of these shapes over `world` ranks, seen from `rank`.
FlatLayout flat_layout(const std::vector<std::vector<int64_t>>& shapes, int world, int rank);

// [padded] <- the tensors end to end, zeros after (dtype and device of `flat`).
void flatten_into(at::Tensor& flat, const std::vector<const at::Tensor*>& tensors, const FlatLayout& layout);
// Views of a [padded] (or at least [numel]) flat buffer in the tensors' shapes.
std::vector<at::Tensor> unflatten_views(const at::Tensor& flat, const FlatLayout& layout);
// [shard] <- this rank's part of the tensors (zeros in the padding).
void shard_from_tensors(at::Tensor& shard, const std::vector<const at::Tensor*>& tensors,
                        const FlatLayout& layout);
// Views of this rank's [shard] buffer, one per piece (1-D, in piece order).
std::vector<at::Tensor> piece_views(const at::Tensor& shard, const FlatLayout& layout);

}  // namespace memo::dist
