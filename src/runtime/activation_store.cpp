// ActivationStore: rounding buffers, host slots and copies, per unit.
#include "runtime/activation_store.h"

#include <ATen/ATen.h>

#include <array>
#include <deque>

#include "core/error.h"

namespace memo::runtime {

ActivationStore::ActivationStore(const model::ModelConfig& c, int64_t batch, int64_t tokens,
                                 at::ScalarType compute, at::Device device,
                                 std::map<Unit, UnitPlacement> placement, double host_budget_bytes,
                                 TraceRecorder* trace, int64_t chunks_per_layer, KvPlacement kv)
    : specs_(model::skeletal_specs(c, batch, tokens, compute)),
      device_(device),
      placement_(std::move(placement)),
      buffers_(c, batch, tokens, compute, device, chunks_per_layer),
      tokens_(tokens),
      chunks_per_layer_(chunks_per_layer),
      kv_(kv) {
  // Per swapped unit, per tensor: every token of x, o, lse (none on the
  // device tier; of a unit keeping only x, x's); the host share of the others.
  std::map<Unit, std::vector<int64_t>> host_tokens;
  for (const auto& [unit, p] : placement_) {
    if (!p.swapped) continue;
    if (p.fixed_on_device && p.attention_recomputed)
      throw Error(cat("activation store: unit ", to_string(unit), " is both on the device tier and keeping only x"));
    auto& counts = host_tokens[unit];
    for (const auto& s : specs_) {
      const bool to_host = !p.fixed_on_device && (s.layer_input || !p.attention_recomputed);
      counts.push_back(s.always_offloaded ? (to_host ? unit_tokens(unit) : 0) : p.host_tokens);
    }
  }
  host_ = HostSlots(specs_, host_tokens, device, host_budget_bytes);
  if (kv_.layers > 0) {
    // K and V as one more "skeletal" tensor of a whole layer, every token to the host.
    model::SkeletalSpec spec{"kv", {batch, kv_.tokens, 2 * c.kv_heads * c.head_dim}, compute, 1, true};
    kv_specs_ = {spec};
    std::map<Unit, std::vector<int64_t>> kv_tokens;
    for (int64_t l = 0; l < kv_.layers; ++l) kv_tokens[Unit{l}] = {kv_.tokens};
    kv_host_ = HostSlots(kv_specs_, kv_tokens, device, host_budget_bytes - static_cast<double>(host_.bytes()));
  }
  engine_ = std::make_unique<SwapEngine>(device, trace);
}

int64_t ActivationStore::unit_tokens(Unit u) const {
  auto it = placement_.find(u);
  return it != placement_.end() && it->second.tokens > 0 ? it->second.tokens : tokens_;
}

model::LayerActivations ActivationStore::unit_slots(Unit u) const {
  const auto& slots = buffers_.of(u).slots;
  const int64_t n = unit_tokens(u);
  return n == tokens_ ? slots : model::token_slice(slots, 0, n);
}

void ActivationStore::save_kv(int64_t layer, const at::Tensor& kv) {
  if (!kv_host_.has(Unit{layer})) throw Error(cat("activation store: no host slot for K and V of layer ", layer));
  engine_->copy_out(kv_unit(layer), {{kv_host_.views(Unit{layer}).front(), kv}});
}

void ActivationStore::prefetch_kv(int64_t layer) {
  if (!kv_host_.has(Unit{layer})) throw Error(cat("activation store: no host slot for K and V of layer ", layer));
  // The forward's K and V, held by the engine until their copy-out is waited
  // on (the last layer's still is), go first.
  engine_->wait_copy_out(kv_unit(layer));
  const auto& s = kv_specs_.front();
  auto kv = at::empty(s.shape, at::TensorOptions().dtype(s.dtype).device(device_));  // [B, S, 2 nkv d]
  kv_in_[layer] = kv;
  engine_->copy_in(kv_unit(layer), {{kv, kv_host_.views(Unit{layer}).front()}});
}

at::Tensor ActivationStore::take_kv(int64_t layer) {
  if (!kv_prefetched(layer)) prefetch_kv(layer);
  engine_->wait_copy_in(kv_unit(layer));
  auto kv = std::move(kv_in_[layer]);
  kv_in_.erase(layer);
  return kv;
}

void ActivationStore::for_each_input(int64_t layer,
                                     const std::function<void(int64_t chunk, const at::Tensor& x)>& fn) {
  const size_t x_spec = x_spec_index();
  // The chunks whose input is on the host only, in order; the first two are
  // copied in ahead, each later one into the staging tensor its
  // predecessor-but-one has finished with (the copy is queued after fn's
  // compute, so it cannot overwrite what fn still reads).
  std::deque<int64_t> from_host;
  for (int64_t c = 0; c < chunks_per_layer_; ++c) {
    const Unit u{layer, c};
    if (inputs_held_.count(u) || fixed_.count(u)) continue;
    if (!host_.has(u)) throw Error(cat("activation store: the input of unit ", to_string(u), " is neither held nor on the host"));
    from_host.push_back(c);
  }
  std::array<at::Tensor, 2> staging;  // [B, C, h] each, allocated on first use
  std::map<int64_t, int64_t> slot_of;  // chunk -> staging slot its copy went to
  int64_t next_slot = 0;
  auto issue = [&] {
    if (from_host.empty()) return;
    const int64_t c = from_host.front();
    from_host.pop_front();
    const int64_t slot = next_slot;
    next_slot = 1 - next_slot;
    const auto& host_x = host_.views(Unit{layer, c})[x_spec];  // [B, n, h]
    auto& buf = staging[static_cast<size_t>(slot)];
    if (!buf.defined()) {
      auto shape = specs_[x_spec].shape;  // a full unit's, [B, C, h]
      buf = at::empty(shape, at::TensorOptions().dtype(specs_[x_spec].dtype).device(device_));
    }
    auto dst = buf.narrow(specs_[x_spec].token_dim, 0, host_x.size(specs_[x_spec].token_dim));
    engine_->copy_in(staging_unit(layer, slot), {{dst, host_x}});
    rebuild_h2d_bytes_ += static_cast<int64_t>(host_x.nbytes());
    slot_of[c] = slot;
  };
  issue();
  issue();
  for (int64_t c = 0; c < chunks_per_layer_; ++c) {
    if (auto held = inputs_held_.find(Unit{layer, c}); held != inputs_held_.end()) {
      fn(c, held->second);
      continue;
    }
    if (auto kept = fixed_.find(Unit{layer, c}); kept != fixed_.end()) {  // the device tier's copy
      fn(c, kept->second[x_spec]);
      continue;
    }
    const int64_t slot = slot_of.at(c);
    engine_->wait_copy_in(staging_unit(layer, slot));
    const int64_t n = unit_tokens(Unit{layer, c});
    fn(c, staging[static_cast<size_t>(slot)].narrow(specs_[x_spec].token_dim, 0, n));
    issue();  // into the slot fn just used
  }
}

size_t ActivationStore::x_spec_index() const {
  for (size_t k = 0; k < specs_.size(); ++k)
    if (specs_[k].layer_input) return k;
  throw Error("activation store: the skeletal set has no layer input");
}

const UnitPlacement& ActivationStore::placement(Unit u) const {
  auto it = placement_.find(u);
  if (it == placement_.end()) throw Error(cat("activation store: no placement for unit ", to_string(u)));
  return it->second;
}

int64_t ActivationStore::kept_tokens(Unit u) const {
  const auto& p = placement(u);
  return p.host_tokens + p.resident_tokens;
}

void ActivationStore::begin_step() {
  buffers_.reset();
  inputs_held_.clear();
  inputs_in_.clear();
  resident_.clear();
  fixed_.clear();
  prefetched_.clear();
  kv_in_.clear();
}

const model::LayerActivations* ActivationStore::forward_storage(Unit u) {
  if (auto previous = buffers_.claim_for_forward(u)) {
    engine_->wait_copy_out(*previous);  // unit u-2's copy must be done
    inputs_held_.erase(*previous);
  }
  // The previous layer's K and V have had a chunk of compute to reach the host.
  if (kv_.layers > 0 && u.chunk == 1 && u.layer > 0) engine_->wait_copy_out(kv_unit(u.layer - 1));
  return &buffers_.of(u).slots;
}

void ActivationStore::forward_done() {
  // Whole layers: a unit's input is its layer's, nothing to gain.
  if (chunks_per_layer_ > 1)
    for (auto& [u, x] : inputs_held_) x = x.clone();  // [B, n, h], the view's storage let go
  if (kv_.layers > 0) engine_->wait_copy_out(kv_unit(kv_.layers - 1));
}

void ActivationStore::save(Unit u, const model::LayerActivations& acts) {
  const auto& p = placement(u);
  inputs_held_[u] = acts.x;
  if (!p.swapped) return;
  if (p.fixed_on_device) {
    // x, o, lse copied out of the buffer (x: out of the layer's input) on
    // the compute stream; nothing of them goes to the host.
    std::vector<at::Tensor> kept;
    for (const auto& s : specs_) kept.push_back(s.always_offloaded ? (acts.*s.member).clone() : at::Tensor());
    fixed_[u] = std::move(kept);
  }
  engine_->copy_out(u, host_pairs(u, acts, /*to_host=*/true));
  if (p.resident_tokens > 0) {
    // The resident tokens of every recomputable tensor, by spec.
    std::vector<at::Tensor> res;
    for (const auto& s : specs_)
      res.push_back(s.always_offloaded ? at::Tensor()
                                       : (acts.*s.member).narrow(s.token_dim, p.host_tokens, p.resident_tokens).clone());
    resident_[u] = std::move(res);
  }
}

std::vector<CopyPair> ActivationStore::host_pairs(Unit u, const model::LayerActivations& acts,
                                                  bool to_host) const {
  std::vector<CopyPair> pairs;
  const auto& views = host_.views(u);
  for (size_t k = 0; k < specs_.size(); ++k) {
    const auto& s = specs_[k];
    const auto& host = views[k];
    const int64_t n = host.size(s.token_dim);
    if (n == 0) continue;
    auto dev = (acts.*s.member).narrow(s.token_dim, 0, n);
    if (to_host)
      pairs.push_back({host, dev});
    else
      pairs.push_back({dev, host});
  }
  return pairs;
}

void ActivationStore::prefetch(Unit u) {
  const bool tier = fixed_.count(u) > 0;
  if (!host_.has(u) && !tier)
    throw Error(cat("activation store: unit ", to_string(u), " has nothing on the host to prefetch"));
  buffers_.claim_for_copy_in(u);
  prefetched_.insert(u);
  // The rounding buffers have no x slot (forward never writes one): the
  // input comes back into a tensor of its own, kept here until it is taken
  // (and by the engine until the copy is waited on).
  model::LayerActivations dst = unit_slots(u);
  for (const auto& s : specs_)
    if (s.layer_input) {
      auto shape = s.shape;
      shape[static_cast<size_t>(s.token_dim)] = unit_tokens(u);
      dst.*s.member = at::empty(shape, at::TensorOptions().dtype(s.dtype).device(device_));  // [B, n, h]
    }
  if (tier) dst.x = fixed_[u][x_spec_index()];  // no copy: the device tier kept it (the K, V rebuild may read it too)
  inputs_in_[u] = dst.x;
  engine_->copy_in(u, host_.has(u) ? host_pairs(u, dst, /*to_host=*/false) : std::vector<CopyPair>{});
}

model::LayerActivations ActivationStore::take_from_buffer(Unit u) {
  if (!in_buffer(u)) throw Error(cat("activation store: unit ", to_string(u), " is not in its rounding buffer"));
  auto it = inputs_held_.find(u);
  if (it == inputs_held_.end()) throw Error(cat("activation store: input of unit ", to_string(u), " was not kept"));
  model::LayerActivations acts = unit_slots(u);
  acts.x = std::move(it->second);
  inputs_held_.erase(it);
  return acts;
}

model::LayerActivations ActivationStore::take_copied_in(Unit u) {
  engine_->wait_copy_in(u);
  auto x = inputs_in_.find(u);
  if (x == inputs_in_.end()) throw Error(cat("activation store: input of unit ", to_string(u), " was not prefetched"));
  model::LayerActivations acts = unit_slots(u);
  acts.x = std::move(x->second);
  inputs_in_.erase(x);
  const auto& p = placement(u);
  if (auto res = resident_.find(u); res != resident_.end()) {
    for (size_t k = 0; k < specs_.size(); ++k) {
      const auto& s = specs_[k];
      const auto& r = res->second[k];
      if (r.defined()) (acts.*s.member).narrow(s.token_dim, p.host_tokens, p.resident_tokens).copy_(r);
    }
    resident_.erase(res);
  }
  if (auto kept = fixed_.find(u); kept != fixed_.end()) {  // o and lse back into the buffer
    for (size_t k = 0; k < specs_.size(); ++k) {
      const auto& s = specs_[k];
      if (kept->second[k].defined() && !s.layer_input) (acts.*s.member).copy_(kept->second[k]);
    }
    fixed_.erase(kept);
  }
  inputs_held_.erase(u);
  return acts;
}

void ActivationStore::end_step() {
  engine_->drain();
  inputs_held_.clear();
  inputs_in_.clear();
  resident_.clear();
  fixed_.clear();
  kv_in_.clear();
}

int64_t ActivationStore::device_bytes() const {
  int64_t bytes = 2 * buffers_.buffer_bytes();
  for (const auto& [u, x] : inputs_held_) bytes += static_cast<int64_t>(x.nbytes());
  for (const auto& [u, x] : inputs_in_) bytes += static_cast<int64_t>(x.nbytes());
  for (const auto& [l, kv] : kv_in_) bytes += static_cast<int64_t>(kv.nbytes());
  for (const auto* kept : {&resident_, &fixed_})
    for (const auto& [u, tensors] : *kept)
      for (const auto& t : tensors) {
        auto in = inputs_in_.find(u);  // a prefetched tier unit's x is counted there
        if (t.defined() && !(in != inputs_in_.end() && in->second.is_same(t))) bytes += static_cast<int64_t>(t.nbytes());
      }
  return bytes;
}

}  // namespace memo::runtime
