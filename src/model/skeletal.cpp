// The table of skeletal tensors and what is derived from it.
#include "model/skeletal.h"

#include <ATen/ATen.h>

#include <array>

#include "core/error.h"
#include "model/ops.h"

namespace memo::model {

namespace {

using LA = LayerActivations;
using Shape = std::vector<int64_t>;

// [B, S, h]
Shape hidden_shape(const ModelConfig& c, int64_t B, int64_t S) { return {B, S, c.hidden}; }
// [B, S]
Shape token_shape(const ModelConfig&, int64_t B, int64_t S) { return {B, S}; }
// [B, S, (nh + 2 nkv) d]
Shape qkv_shape(const ModelConfig& c, int64_t B, int64_t S) { return {B, S, c.qkv_dim()}; }
// [B, S, nh d]
Shape attn_shape(const ModelConfig& c, int64_t B, int64_t S) { return {B, S, c.attn_dim()}; }
// [B, nh, S]
Shape lse_shape(const ModelConfig& c, int64_t B, int64_t S) { return {B, c.heads, S}; }
// [B, S, 2f]
Shape gate_up_shape(const ModelConfig& c, int64_t B, int64_t S) { return {B, S, 2 * c.ffn}; }
// [B, S, f]
Shape ffn_shape(const ModelConfig& c, int64_t B, int64_t S) { return {B, S, c.ffn}; }

constexpr auto C = SkeletalDtype::Compute;
constexpr auto St = SkeletalDtype::Statistics;

// name, member, shape, dtype, token dim, heads dim, always offloaded, layer input
const std::array<SkeletalRow, 11> kTable = {{
    {"x", &LA::x, hidden_shape, C, 1, -1, true, true},
    {"n1", &LA::n1, hidden_shape, C, 1, -1, false, false},
    {"rstd1", &LA::rstd1, token_shape, St, 1, -1, false, false},
    {"qkv", &LA::qkv, qkv_shape, C, 1, 2, false, false},
    {"o", &LA::o, attn_shape, C, 1, 2, true, false},
    {"lse", &LA::lse, lse_shape, St, 2, 1, true, false},
    {"x2", &LA::x2, hidden_shape, C, 1, -1, false, false},
    {"n2", &LA::n2, hidden_shape, C, 1, -1, false, false},
    {"rstd2", &LA::rstd2, token_shape, St, 1, -1, false, false},
    {"gu", &LA::gu, gate_up_shape, C, 1, -1, false, false},
    {"a", &LA::a, ffn_shape, C, 1, -1, false, false},
}};

}  // namespace

at::ScalarType resolve(SkeletalDtype kind, at::ScalarType compute) {
  return kind == SkeletalDtype::Statistics ? stat_dtype(compute) : compute;
}

std::span<const SkeletalRow> skeletal_table() { return kTable; }

const SkeletalRow& skeletal_row(at::Tensor LayerActivations::*member) {
  for (const auto& r : kTable)
    if (r.member == member) return r;
  throw Error("skeletal_row: not a member of the skeletal table");
}

void LayerActivations::for_each(const std::function<void(const char*, at::Tensor&)>& fn) {
  for (const auto& r : kTable) fn(r.name, this->*r.member);
}

void LayerActivations::for_each(
    const std::function<void(const char*, const at::Tensor&)>& fn) const {
  for (const auto& r : kTable) fn(r.name, this->*r.member);
}

int64_t LayerActivations::bytes() const {
  int64_t total = 0;
  for (const auto& r : kTable) {
    const auto& t = this->*r.member;
    if (t.defined()) total += static_cast<int64_t>(t.nbytes());
  }
  return total;
}

int64_t SkeletalSpec::bytes() const {
  int64_t n = static_cast<int64_t>(c10::elementSize(dtype));
  for (auto s : shape) n *= s;
  return n;
}

std::vector<SkeletalSpec> skeletal_specs(const ModelConfig& c, int64_t B, int64_t S,
                                         at::ScalarType compute) {
  std::vector<SkeletalSpec> specs;
  specs.reserve(kTable.size());
  for (const auto& r : kTable)
    specs.push_back({r.name, r.shape(c, B, S), resolve(r.dtype, compute), r.token_dim,
                     r.always_offloaded, r.member, r.heads_dim, r.layer_input});
  return specs;
}

LayerActivations allocate_skeletal(const ModelConfig& c, int64_t B, int64_t S,
                                   at::ScalarType compute, at::Device device) {
  LayerActivations acts;
  for (const auto& r : kTable) {
    if (r.layer_input) continue;  // forward never writes it: acts.x is the input
    acts.*r.member = at::empty(r.shape(c, B, S),
                               at::TensorOptions().dtype(resolve(r.dtype, compute)).device(device));
  }
  return acts;
}

LayerActivations token_slice(const LayerActivations& acts, int64_t t0, int64_t n) {
  LayerActivations out;
  for (const auto& r : kTable) {
    const auto& t = acts.*r.member;
    if (!t.defined()) continue;
    if (t0 < 0 || n < 0 || t0 + n > t.size(r.token_dim))
      throw Error(cat("token_slice: tokens [", t0, ", ", t0 + n, ") outside ", r.name, "'s ",
                      t.size(r.token_dim), " tokens"));
    out.*r.member = t.narrow(r.token_dim, t0, n);
  }
  return out;
}

}  // namespace memo::model
