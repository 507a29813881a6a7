// flat_shard and the two ZeRO collectives, with their shapes checked.
#include "dist/zero.h"

#include <algorithm>

#include "core/error.h"

namespace memo::dist {

FlatShard flat_shard(int64_t numel, int world, int rank) {
  if (numel < 0 || world < 1 || rank < 0 || rank >= world)
    throw Error(cat("flat_shard: numel ", numel, ", world ", world, ", rank ", rank));
  FlatShard s;
  s.numel = numel;
  s.shard = (numel + world - 1) / world;
  s.padded = s.shard * world;
  s.begin = std::min(numel, s.shard * rank);
  s.end = std::min(numel, s.begin + s.shard);
  return s;
}

Work gather_shards(Group& group, at::Tensor& full, const at::Tensor& shard) {
  if (full.numel() != shard.numel() * group.size())
    throw Error(cat("gather_shards: a buffer of ", full.numel(), " for ", group.size(), " shards of ", shard.numel()));
  return group.all_gather(full, shard);
}

Work reduce_scatter_shards(Group& group, at::Tensor& shard, const at::Tensor& full, ReduceOp op) {
  if (full.numel() != shard.numel() * group.size())
    throw Error(cat("reduce_scatter_shards: a buffer of ", full.numel(), " for ", group.size(), " shards of ",
                    shard.numel()));
  return group.reduce_scatter(shard, full, op);
}

int64_t zero_collective_bytes(int64_t numel, int world, int64_t element_size) {
  return (world - 1) * flat_shard(numel, world, 0).shard * element_size;
}

}  // namespace memo::dist
