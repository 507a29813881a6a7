// ZeRO's two collectives on a flat parameter or gradient buffer, sharded over
// a group: each rank owns one padded shard; all_gather rebuilds the whole
// buffer (stage 3: a layer's bf16 weights, one layer ahead, async), and
// reduce_scatter sums the whole gradients into each rank's shard (stage 2).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "dist/comm.h"

namespace memo::dist {

// Rank `rank`'s part of a flat buffer of `numel` elements over `world` ranks:
// the buffer is padded to world x shard elements, shard = ceil(numel / world);
// [begin, end) is the part of the unpadded buffer this rank owns (end <= numel,
// possibly empty for the last ranks of a tiny buffer).
struct FlatShard {
  int64_t numel = 0;
  int64_t padded = 0;
  int64_t shard = 0;
  int64_t begin = 0;
  int64_t end = 0;
};
FlatShard flat_shard(int64_t numel, int world, int rank);

// full [padded] <- every rank's shard [shard], in rank order.
Work gather_shards(Group& group, at::Tensor& full, const at::Tensor& shard);
// shard [shard] <- op over ranks of full[rank * shard, (rank + 1) * shard).
Work reduce_scatter_shards(Group& group, at::Tensor& shard, const at::Tensor& full, ReduceOp op = ReduceOp::Sum);

// Bytes one rank sends for each (the same both ways): (world - 1) x shard x element_size.
int64_t zero_collective_bytes(int64_t numel, int world, int64_t element_size);

}  // namespace memo::dist
