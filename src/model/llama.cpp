// Parameter initialisation and bookkeeping for LlamaModel.
#include "model/llama.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace memo::model {

std::vector<std::pair<std::string, at::Tensor*>> ModelWeights::named() {
  std::vector<std::pair<std::string, at::Tensor*>> out;
  out.emplace_back("embed", &embed);
  for (size_t i = 0; i < layers.size(); ++i)
    for (auto& [name, t] : layers[i].named())
      out.emplace_back("layers." + std::to_string(i) + "." + name, t);
  out.emplace_back("final_norm", &final_norm);
  if (lm_head.defined()) out.emplace_back("lm_head", &lm_head);
  return out;
}

namespace {

// Weights drawn on the CPU from one seeded generator, so the same seed gives
// the same model on every device.
ModelWeights init_weights(const ModelConfig& c, uint64_t seed, at::ScalarType dtype) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto opts = at::TensorOptions().dtype(at::kDouble);
  const double std = 0.02;
  const double out_std = std / std::sqrt(2.0 * static_cast<double>(c.layers));
  auto normal = [&](std::vector<int64_t> shape, double s) {
    return at::normal(0.0, s, shape, gen, opts).to(dtype);
  };
  ModelWeights w;
  w.embed = normal({c.vocab_size, c.hidden}, std);
  for (int64_t i = 0; i < c.layers; ++i) {
    LayerWeights l;
    l.norm1 = at::ones({c.hidden}, opts.dtype(dtype));
    l.wqkv = normal({c.qkv_dim(), c.hidden}, std);
    l.wo = normal({c.hidden, c.attn_dim()}, out_std);
    l.norm2 = at::ones({c.hidden}, opts.dtype(dtype));
    l.wgu = normal({2 * c.ffn, c.hidden}, std);
    l.wdown = normal({c.hidden, c.ffn}, out_std);
    w.layers.push_back(std::move(l));
  }
  w.final_norm = at::ones({c.hidden}, opts.dtype(dtype));
  if (!c.tie_embeddings) w.lm_head = normal({c.vocab_size, c.hidden}, std);
  return w;
}

}  // namespace

LlamaModel::LlamaModel(const ModelConfig& config, const ModelOptions& options)
    : config_(config),
      options_(options),
      layer_(config, pick_attention_kernel(options.device, options.compute_dtype, options.attention)) {
  config_.validate(config.name);
  require_input(config_.arch == Arch::Llama, "model ", config_.name,
                " is a GPT shape: it is available for planning, not for training");
  master_ = init_weights(config_, options_.seed, options_.master_dtype);
  for (auto& [name, t] : master_.named()) *t = t->to(options_.device);
  grads_ = master_;  // same structure; replaced by zeros below
  for (auto& [name, t] : grads_.named()) *t = at::zeros_like(*t);
  compute_ = master_;
  refresh_compute();
}

void LlamaModel::refresh_compute() {
  if (master_released_) throw Error("LlamaModel::refresh_compute: the master weights were released (ZeRO)");
  if (options_.compute_dtype == options_.master_dtype) {
    compute_ = master_;  // shares storage
    return;
  }
  auto src = master_.named();
  auto dst = compute_.named();
  for (size_t i = 0; i < src.size(); ++i) {
    if (dst[i].second->scalar_type() == options_.compute_dtype)
      dst[i].second->copy_(*src[i].second);
    else
      *dst[i].second = src[i].second->to(options_.compute_dtype);
  }
}

void LlamaModel::zero_grads() {
  for (auto& [name, t] : grads_.named())
    if (t->defined()) t->zero_();
}

namespace {

// Every tensor of a layer released (undefined).
void release(LayerWeights& w) {
  for (auto& [name, t] : w.named()) t->reset();
}

}  // namespace

void LlamaModel::release_master() {
  for (auto& [name, t] : master_.named()) t->reset();
  master_released_ = true;
}

void LlamaModel::release_compute_layers(int64_t first) {
  for (size_t i = static_cast<size_t>(std::max<int64_t>(first, 0)); i < compute_.layers.size(); ++i) {
    release(compute_.layers[i]);
    release(master_.layers[i]);  // the same tensors when the dtypes agree (else already released or stale)
  }
}

// A layer's gradient tensors as zeros in the master dtype, shaped like its weights.
LayerWeights& LlamaModel::layer_grads(int64_t layer) {
  auto& g = grads_.layers.at(static_cast<size_t>(layer));
  if (!g.wqkv.defined()) {
    const auto opts = at::TensorOptions().dtype(options_.master_dtype).device(options_.device);
    const auto& c = config_;
    g.norm1 = at::zeros({c.hidden}, opts);                // [h]
    g.wqkv = at::zeros({c.qkv_dim(), c.hidden}, opts);    // [qkv, h]
    g.wo = at::zeros({c.hidden, c.attn_dim()}, opts);     // [h, nh d]
    g.norm2 = at::zeros({c.hidden}, opts);                // [h]
    g.wgu = at::zeros({2 * c.ffn, c.hidden}, opts);       // [2f, h]
    g.wdown = at::zeros({c.hidden, c.ffn}, opts);         // [h, f]
  }
  return g;
}

void LlamaModel::release_layer_grads(int64_t layer) { release(grads_.layers.at(static_cast<size_t>(layer))); }

void LlamaModel::ensure_rest_grads() {
  if (grads_.embed.defined()) return;
  const auto opts = at::TensorOptions().dtype(options_.master_dtype).device(options_.device);
  grads_.embed = at::zeros({config_.vocab_size, config_.hidden}, opts);                       // [V, h]
  grads_.final_norm = at::zeros({config_.hidden}, opts);                                      // [h]
  if (!config_.tie_embeddings) grads_.lm_head = at::zeros({config_.vocab_size, config_.hidden}, opts);  // [V, h]
}

void LlamaModel::release_rest_grads() {
  grads_.embed.reset();
  grads_.final_norm.reset();
  grads_.lm_head.reset();
}

void LlamaModel::release_grads() {
  for (size_t i = 0; i < grads_.layers.size(); ++i) release_layer_grads(static_cast<int64_t>(i));
  release_rest_grads();
}

RopeTable LlamaModel::rope(int64_t end) {
  if (end > rope_len_) {
    rope_ = RopeTable::build(config_, end, options_.compute_dtype, options_.device);
    rope_len_ = end;
  }
  return rope_.slice(0, end);
}

}  // namespace memo::model
