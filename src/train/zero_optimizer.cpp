// ZeRO's sharded optimizer: shards of the master weights, gradients and AdamW
// moments; reduce-scatter, the global norm, the update and the gather.
#include "train/zero_optimizer.h"

#include <ATen/ATen.h>

#include <string>

#include "core/error.h"

namespace memo::train {

std::vector<std::vector<size_t>> zero_units(model::ModelWeights& weights) {
  const auto named = weights.named();
  const size_t layers = weights.layers.size();
  std::vector<std::vector<size_t>> units(layers + 1);
  for (size_t i = 0; i < named.size(); ++i) {
    const auto& name = named[i].first;
    if (name.starts_with("layers.")) {
      const size_t layer = std::stoul(name.substr(7));
      units.at(layer).push_back(i);
    } else {
      units[layers].push_back(i);
    }
  }
  return units;
}

// A reduce-scatter in flight: the staging copy of the unit's gradients it
// reads, and the shard it writes, added into the unit's gradient shard once waited.
struct ZeroOptimizer::InFlight {
  int64_t unit = 0;
  at::Tensor full;      // [padded]
  at::Tensor incoming;  // [shard]
  dist::Work work;
};

ZeroOptimizer::ZeroOptimizer(dist::Group& group, model::ModelWeights& master, int stage, AdamWOptions options)
    : group_(group), stage_(stage) {
  if (stage < 1 || stage > 3) throw Error(cat("ZeroOptimizer: stage ", stage, " (1, 2 or 3)"));
  const auto named = master.named();
  std::vector<at::Tensor*> params, grads;
  std::vector<bool> decayed;
  for (const auto& unit : zero_units(master)) {
    std::vector<std::vector<int64_t>> shapes;
    std::vector<const at::Tensor*> tensors;
    for (size_t i : unit) {
      shapes.push_back(named[i].second->sizes().vec());
      tensors.push_back(named[i].second);
    }
    layouts_.push_back(dist::flat_layout(shapes, group.size(), group.rank()));
    const auto& layout = layouts_.back();
    const auto opts = tensors.front()->options();
    auto shard = at::empty({layout.shard.shard}, opts);  // [shard]
    dist::shard_from_tensors(shard, tensors, layout);
    master_.push_back(shard);
    grads_.push_back(at::zeros({layout.shard.shard}, opts));
    m_.push_back(at::zeros({layout.shard.shard}, opts));
    v_.push_back(at::zeros({layout.shard.shard}, opts));
  }
  // AdamW over the pieces: views of the shard buffers, each in its whole
  // parameter's group (matrices decay, norm weights do not). Its moments are
  // replaced by views of the flat moment shards, so they gather like the weights.
  std::vector<at::Tensor> m_pieces, v_pieces;
  for (size_t u = 0; u < layouts_.size(); ++u) {
    const auto& layout = layouts_[u];
    for (auto& t : dist::piece_views(master_[u], layout)) master_pieces_.push_back(t);
    for (auto& t : dist::piece_views(grads_[u], layout)) grad_pieces_.push_back(t);
    for (auto& t : dist::piece_views(m_[u], layout)) m_pieces.push_back(t);
    for (auto& t : dist::piece_views(v_[u], layout)) v_pieces.push_back(t);
    for (const auto& p : layout.pieces) decayed.push_back(layout.shapes[p.tensor].size() >= 2);
  }
  for (size_t i = 0; i < master_pieces_.size(); ++i) {
    params.push_back(&master_pieces_[i]);
    grads.push_back(&grad_pieces_[i]);
  }
  adamw_ = std::make_unique<AdamW>(params, grads, options, decayed);
  adamw_->first_moments() = m_pieces;
  adamw_->second_moments() = v_pieces;
}

ZeroOptimizer::~ZeroOptimizer() {
  // A reduce-scatter still in flight reads its staging buffer: let it end
  // (a failed one has already made the process's error; ignore it here).
  for (auto& f : in_flight_) {
    try {
      f->work.wait();
    } catch (...) {
    }
  }
}

void ZeroOptimizer::retire_oldest() {
  auto f = std::move(in_flight_.front());
  in_flight_.pop_front();
  f->work.wait();
  grads_[static_cast<size_t>(f->unit)].add_(f->incoming);
}

void ZeroOptimizer::start_reduce(int64_t unit, const std::vector<const at::Tensor*>& grads) {
  // One unit's staging buffer is reused only after its previous reduce-scatter ended.
  for (const auto& f : in_flight_)
    if (f->unit == unit) {
      while (!in_flight_.empty()) {
        const bool last = in_flight_.front()->unit == unit;
        retire_oldest();
        if (last) break;
      }
      break;
    }
  while (in_flight_.size() >= 2) retire_oldest();
  const auto& layout = layouts_.at(static_cast<size_t>(unit));
  auto f = std::make_unique<InFlight>();
  f->unit = unit;
  f->full = at::empty({layout.shard.padded}, grads_[static_cast<size_t>(unit)].options());  // [padded]
  dist::flatten_into(f->full, grads, layout);
  f->incoming = at::empty({layout.shard.shard}, f->full.options());  // [shard]
  f->work = dist::reduce_scatter_shards(group_, f->incoming, f->full);
  in_flight_.push_back(std::move(f));
}

void ZeroOptimizer::reduce_layer(int64_t layer, const model::LayerWeights& grads) {
  if (layer < 0 || layer >= layers()) throw Error(cat("ZeroOptimizer: no layer ", layer));
  std::vector<const at::Tensor*> tensors;
  for (const auto& [name, t] : grads.named()) tensors.push_back(t);
  start_reduce(layer, tensors);
}

void ZeroOptimizer::reduce_rest(model::ModelWeights& grads) {
  const auto named = grads.named();
  const auto units = zero_units(grads);
  std::vector<const at::Tensor*> tensors;
  for (size_t i : units.back()) tensors.push_back(named[i].second);
  start_reduce(layers(), tensors);
}

void ZeroOptimizer::reduce_all(model::ModelWeights& grads) {
  for (int64_t l = 0; l < layers(); ++l) reduce_layer(l, grads.layers.at(static_cast<size_t>(l)));
  reduce_rest(grads);
}

void ZeroOptimizer::finish_gradients() {
  while (!in_flight_.empty()) retire_oldest();
}

at::Tensor ZeroOptimizer::grad_norm() {
  finish_gradients();
  // Padding is zero in every shard: the squared norms of the shards, summed
  // in float64 and over the ranks, are the whole gradients' squared norm.
  // Per-shard norms in one multi-tensor kernel, as grad_norm (optimizer.h).
  auto squares = at::stack(at::_foreach_norm(grads_, 2)).to(at::kDouble).square().sum().reshape({1});  // [1]
  group_.all_reduce(squares).wait();
  return squares.sqrt().squeeze(0);  // []
}

void ZeroOptimizer::scale_grads(double factor) {
  finish_gradients();
  if (!grads_.empty()) at::_foreach_mul_(grads_, factor);
}

void ZeroOptimizer::step(double lr) {
  finish_gradients();
  adamw_->step(lr);
  for (auto& g : grads_) g.zero_();
}

void ZeroOptimizer::publish(const model::ModelWeights& compute, runtime::ShardedLayerWeights* layers) {
  if (stage_ == 3 && !layers) throw Error("ZeroOptimizer::publish: stage 3 needs the sharded layer weights");
  // named() lists the handles; only the tensors' contents change below.
  auto& handles = const_cast<model::ModelWeights&>(compute);
  const auto named = handles.named();
  const auto units = zero_units(handles);
  for (int64_t u = 0; u < this->units(); ++u) {
    const auto& master = master_[static_cast<size_t>(u)];
    if (stage_ == 3 && u < this->layers()) {
      layers->shard(u).copy_(master);  // cast to the compute dtype
      continue;
    }
    const auto& idx = units[static_cast<size_t>(u)];
    const auto dtype = named[idx.front()].second->scalar_type();
    const auto& layout = layouts_[static_cast<size_t>(u)];
    auto full = at::empty({layout.shard.padded}, master.options().dtype(dtype));  // [padded]
    dist::gather_shards(group_, full, master.to(dtype)).wait();
    const auto views = dist::unflatten_views(full, layout);
    for (size_t i = 0; i < idx.size(); ++i) named[idx[i]].second->copy_(views[i]);
  }
}

int64_t ZeroOptimizer::bytes_of(const std::vector<at::Tensor>& shards) {
  int64_t bytes = 0;
  for (const auto& t : shards) bytes += static_cast<int64_t>(t.nbytes());
  return bytes;
}

at::Tensor& ZeroOptimizer::state_shard(int64_t unit, State which) {
  auto& list = which == State::Master ? master_ : which == State::FirstMoment ? m_ : v_;
  return list.at(static_cast<size_t>(unit));
}

void ZeroOptimizer::gather_unit(int64_t unit, State which, const std::vector<at::Tensor*>& out) {
  const auto& layout = layouts_.at(static_cast<size_t>(unit));
  if (out.size() != layout.shapes.size())
    throw Error(cat("ZeroOptimizer::gather_unit: ", out.size(), " tensors for a unit of ", layout.shapes.size()));
  const auto& shard = state_shard(unit, which);
  auto full = at::empty({layout.shard.padded}, shard.options());  // [padded]
  dist::gather_shards(group_, full, shard).wait();
  const auto views = dist::unflatten_views(full, layout);
  for (size_t i = 0; i < out.size(); ++i) out[i]->copy_(views[i]);
}

void ZeroOptimizer::load_whole(model::ModelWeights& master, const std::vector<at::Tensor>& m,
                               const std::vector<at::Tensor>& v, int64_t steps) {
  const auto named = master.named();
  if (m.size() != named.size() || v.size() != named.size())
    throw Error("ZeroOptimizer::load_whole: moments do not match the parameters");
  const auto units = zero_units(master);
  for (size_t u = 0; u < units.size(); ++u) {
    std::vector<const at::Tensor*> w, first, second;
    for (size_t i : units[u]) {
      w.push_back(named[i].second);
      first.push_back(&m[i]);
      second.push_back(&v[i]);
    }
    dist::shard_from_tensors(master_[u], w, layouts_[u]);
    dist::shard_from_tensors(m_[u], first, layouts_[u]);
    dist::shard_from_tensors(v_[u], second, layouts_[u]);
    grads_[u].zero_();
  }
  adamw_->set_steps_taken(steps);
}

model::ModelWeights ZeroOptimizer::empty_whole(const at::Device& device) const {
  const auto opts = master_.front().options().device(device);
  model::ModelWeights w;
  w.layers.resize(static_cast<size_t>(layers()));
  for (int64_t l = 0; l < layers(); ++l) {
    size_t k = 0;
    for (auto& [name, t] : w.layers[static_cast<size_t>(l)].named()) *t = at::empty(layout(l).shapes.at(k++), opts);
  }
  // The rest: embed, final_norm, then lm_head when the model has one (named() lists it only when defined).
  const auto& rest = layout(layers()).shapes;
  w.embed = at::empty(rest.at(0), opts);
  w.final_norm = at::empty(rest.at(1), opts);
  if (rest.size() == 3) w.lm_head = at::empty(rest[2], opts);
  return w;
}

bool ZeroOptimizer::any_non_finite() {
  auto bad = at::zeros({1}, at::kFloat);  // [1] on the host; moved to the group's device below
  bool local = false;
  for (const auto* list : {&master_, &m_, &v_})
    for (const auto& t : *list) local = local || !at::isfinite(t).all().item<bool>();
  bad.fill_(local ? 1.0 : 0.0);
  bad = bad.to(master_.front().device());
  group_.all_reduce(bad, dist::ReduceOp::Max).wait();
  return bad.item<float>() > 0;
}

}  // namespace memo::train
