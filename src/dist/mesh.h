// The mesh of ranks: world = dp x sp. Rank r sits at dp index r / sp and sp
// index r % sp, so an sp group is sp consecutive ranks (on one node under
// torchrun, where the Ulysses all-to-alls want the fastest links) and a dp
// group takes one rank of each sp group. Checked from the options alone,
// before any process group or collective, so a bad mesh exits 2 on every rank.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace memo::dist {

struct MeshShape {
  int world = 1;
  int dp = 1;  // data-parallel replicas: each takes batch / dp sequences
  int sp = 1;  // sequence-parallel ranks: each takes seq_len / sp tokens of a sequence
  std::string describe() const;  // "world 4 = dp 2 x sp 2"
};

// What the mesh must divide; 0 leaves a quantity unchecked.
struct MeshNeeds {
  int64_t seq_len = 0;   // tokens per sequence (--seq-len)
  int64_t batch = 0;     // global sequences per step (--batch)
  int64_t heads = 0;     // query heads
  int64_t kv_heads = 0;  // key/value heads
};

// The mesh for `world` ranks and --sp `sp`, or InputError naming the quantity
// that does not divide: the world by sp, seq_len by sp, batch by dp, the
// query heads by sp, the kv heads neither split (sp divides them) nor
// replicated (they divide sp).
MeshShape check_mesh(int world, int64_t sp, const MeshNeeds& needs);

struct MeshCoords {
  int dp_index = 0;
  int sp_index = 0;
};
MeshCoords coords_of(const MeshShape& mesh, int rank);
int rank_at(const MeshShape& mesh, MeshCoords coords);

// Global ranks of the sp group / dp group that `rank` belongs to, ascending.
std::vector<int> sp_group_ranks(const MeshShape& mesh, int rank);
std::vector<int> dp_group_ranks(const MeshShape& mesh, int rank);

// How kv heads meet sp under Ulysses: split (each rank takes kv_heads / sp of
// them) or replicated (each rank takes one, kv head r * kv_heads / sp, shared
// by sp / kv_heads ranks).
enum class KvSharding { Split, Replicated };
KvSharding kv_sharding(int64_t kv_heads, int64_t sp);
// Heads a rank holds in head layout: heads / sp, or 1 when replicated.
int64_t local_heads(int64_t heads, int64_t sp);

}  // namespace memo::dist
