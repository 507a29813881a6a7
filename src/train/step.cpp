// The step executor: runs the layer stack, asking the policy what to keep.
#include "train/step.h"

#include <ATen/ATen.h>

#include "core/error.h"
#include "memory/planned_allocator.h"
#include "train/loss.h"

namespace memo::train {

namespace {

at::Tensor embed_tokens(const model::LlamaModel& model, const at::Tensor& tokens) {
  const auto& w = model.compute();
  return w.embed.index_select(0, tokens.reshape({-1}))
      .view({tokens.size(0), tokens.size(1), model.config().hidden});  // [B, S, h]
}

void check_batch(const model::LlamaModel& model, const MicroBatch& b) {
  require_input(b.tokens.dim() == 2 && b.tokens.sizes() == b.targets.sizes(),
                "batch: tokens and targets must both be [batch, seq_len]");
  require_input(b.tokens.device() == model.options().device,
                "batch: tokens are on ", b.tokens.device(), " but the model is on ",
                model.options().device);
}

}  // namespace

void LossSum::add(const LossSum& other) {
  if (other.sum.defined()) sum = sum.defined() ? sum + other.sum : other.sum;
  count += other.count;
}

double LossSum::total() const { return sum.defined() ? sum.item<double>() : 0.0; }

LossSum forward_backward(model::LlamaModel& model, runtime::ActivationPolicy& policy,
                         const MicroBatch& batch, double grad_weight, int64_t loss_chunk,
                         runtime::TraceRecorder* trace) {
  check_batch(model, batch);
  const auto& cfg = model.config();
  const auto& w = model.compute();
  auto& g = model.grads();
  const int64_t B = batch.tokens.size(0), S = batch.tokens.size(1);
  const auto rope = model.rope(S);

  // Forward. Regions mark the profiler's level-1 units (memory/planned_allocator.h).
  at::Tensor x;
  {
    memory::RegionScope region("embed");
    x = embed_tokens(model, batch.tokens);  // [B, S, h]
  }
  policy.begin_step({cfg.layers, B, S});
  for (int64_t i = 0; i < cfg.layers; ++i) {
    model::LayerActivations acts;
    if (const auto* storage = policy.forward_storage(i)) acts = *storage;  // a rounding buffer
    at::Tensor y;
    {
      runtime::TraceSpan span(trace, runtime::Lane::Compute, "fwd ", i);
      memory::RegionScope region("layer_fwd");
      y = model.layer().forward(w.layers[static_cast<size_t>(i)], rope, x, acts);
    }
    policy.save(i, std::move(acts));
    x = std::move(y);
  }
  // Final norm, loss, and their backward. The gradient is of the mean over
  // this batch, with the count taken on the host.
  const auto targets = batch.targets.reshape({-1});
  const int64_t count = supervised_of(batch);
  CrossEntropyResult ce;
  at::Tensor dx;
  {
    memory::RegionScope region("loss");
    at::Tensor nf, rstdf;
    model::rmsnorm_forward(x, w.final_norm, cfg.rms_eps, nf, rstdf);
    const double scale = count > 0 ? grad_weight / static_cast<double>(count) : 0.0;
    ce = chunked_cross_entropy(nf.view({B * S, cfg.hidden}), w.head(), targets, loss_chunk, scale,
                               &g.head());
    nf.reset();
    dx = ce.dh.defined() ? model::rmsnorm_backward(ce.dh.view({B, S, cfg.hidden}), x, rstdf,
                                                   w.final_norm, g.final_norm)
                         : at::zeros_like(x);
    ce.dh.reset();
  }
  x.reset();

  // Backward.
  for (int64_t i = cfg.layers - 1; i >= 0; --i) {
    const auto& lw = w.layers[static_cast<size_t>(i)];
    runtime::LayerContext ctx{model.layer(), lw, rope};
    auto acts = policy.restore(i, ctx);
    {
      runtime::TraceSpan span(trace, runtime::Lane::Compute, "bwd ", i);
      memory::RegionScope region("layer_bwd");
      dx = model.layer().backward(lw, g.layers[static_cast<size_t>(i)], rope, acts, dx);
    }
  }
  policy.end_step();
  g.embed.index_add_(0, batch.tokens.reshape({-1}),
                     dx.reshape({B * S, cfg.hidden}).to(g.embed.scalar_type()));
  return {ce.loss_sum, count};
}

LossSum forward_loss(model::LlamaModel& model, const MicroBatch& batch, int64_t loss_chunk) {
  check_batch(model, batch);
  const auto& cfg = model.config();
  const auto& w = model.compute();
  const int64_t B = batch.tokens.size(0), S = batch.tokens.size(1);
  const auto rope = model.rope(S);
  auto x = embed_tokens(model, batch.tokens);
  for (int64_t i = 0; i < cfg.layers; ++i) {
    model::LayerActivations acts;
    x = model.layer().forward(w.layers[static_cast<size_t>(i)], rope, x, acts);
  }
  at::Tensor nf, rstdf;
  model::rmsnorm_forward(x, w.final_norm, cfg.rms_eps, nf, rstdf);
  auto ce = chunked_cross_entropy(nf.view({B * S, cfg.hidden}), w.head(),
                                  batch.targets.reshape({-1}), loss_chunk, 0.0, nullptr);
  return {ce.loss_sum, supervised_of(batch)};
}

}  // namespace memo::train
