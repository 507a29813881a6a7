// check_mesh and the rank coordinates of the dp x sp mesh.
#include "dist/mesh.h"

#include "core/error.h"

namespace memo::dist {

std::string MeshShape::describe() const { return cat("world ", world, " = dp ", dp, " x sp ", sp); }

MeshShape check_mesh(int world, int64_t sp, const MeshNeeds& needs) {
  require_input(world >= 1, "the world size must be at least 1, got ", world);
  require_input(sp >= 1, "--sp must be a positive integer, got ", sp);
  require_input(world % sp == 0, "--sp ", sp, " does not divide the world of ", world,
                world == 1 ? " rank (one process: launch sp ranks with torchrun, srun or WORLD_SIZE/RANK)" : " ranks",
                ": world = dp x sp");
  MeshShape mesh{world, static_cast<int>(world / sp), static_cast<int>(sp)};
  if (needs.seq_len > 0)
    require_input(needs.seq_len % sp == 0, "--seq-len ", needs.seq_len, " is not divisible by --sp ", sp,
                  ": each of the sp ranks takes seq_len / sp tokens of every sequence");
  if (needs.batch > 0)
    require_input(needs.batch % mesh.dp == 0, "--batch ", needs.batch, " is not divisible by dp = ", mesh.dp, " (",
                  mesh.describe(), "): --batch is the global number of sequences per step, split over dp");
  if (needs.heads > 0)
    require_input(needs.heads % sp == 0, "the model's ", needs.heads, " attention heads cannot be split over --sp ",
                  sp, ": Ulysses gives each sp rank heads / sp whole heads");
  if (needs.kv_heads > 0)
    require_input(needs.kv_heads % sp == 0 || sp % needs.kv_heads == 0, "the model's ", needs.kv_heads,
                  " key/value heads can neither be split over --sp ", sp, " (", needs.kv_heads, " % ", sp,
                  " != 0) nor replicated (", sp, " % ", needs.kv_heads, " != 0)");
  return mesh;
}

MeshCoords coords_of(const MeshShape& mesh, int rank) { return {rank / mesh.sp, rank % mesh.sp}; }

int rank_at(const MeshShape& mesh, MeshCoords c) { return c.dp_index * mesh.sp + c.sp_index; }

std::vector<int> sp_group_ranks(const MeshShape& mesh, int rank) {
  const MeshCoords c = coords_of(mesh, rank);
  std::vector<int> ranks;
  for (int s = 0; s < mesh.sp; ++s) ranks.push_back(rank_at(mesh, {c.dp_index, s}));
  return ranks;
}

std::vector<int> dp_group_ranks(const MeshShape& mesh, int rank) {
  const MeshCoords c = coords_of(mesh, rank);
  std::vector<int> ranks;
  for (int d = 0; d < mesh.dp; ++d) ranks.push_back(rank_at(mesh, {d, c.sp_index}));
  return ranks;
}

KvSharding kv_sharding(int64_t kv_heads, int64_t sp) {
  return kv_heads % sp == 0 ? KvSharding::Split : KvSharding::Replicated;
}

int64_t local_heads(int64_t heads, int64_t sp) { return heads % sp == 0 ? heads / sp : 1; }

}  // namespace memo::dist
