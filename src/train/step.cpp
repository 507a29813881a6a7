// One micro-batch: embedding, the layer stack through the per-layer program
// (train/layer_program.*), final norm and chunked loss, and back down.
#include "train/step.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "core/error.h"
#include "memory/planned_allocator.h"
#include "runtime/stage_exchange.h"
#include "runtime/weight_source.h"
#include "train/layer_program.h"
#include "train/loss.h"

namespace memo::train {

namespace {

at::Tensor embed_tokens(const model::LlamaModel& model, const at::Tensor& tokens) {
  const auto& w = model.compute();
  return w.embed.index_select(0, tokens.reshape({-1}))
      .view({tokens.size(0), tokens.size(1), model.config().hidden});  // [B, S, h]
}

// The final norm's and the embedding gradient's token blocks: with chunked
// layers, chunk-sized (their few [block, h] temporaries are then within a
// chunk's working set, which the plan counts: docs/chunks.md); otherwise
// the ops' default. Without this a long sequence's final norm backward held
// several [S, h] statistics-dtype temporaries at the step's peak.
int64_t token_block_elements(int64_t batch, int64_t hidden, int64_t chunk_tokens) {
  return chunk_tokens > 0 ? std::min(model::kBlockElements, batch * chunk_tokens * hidden) : model::kBlockElements;
}

// grad [V, h] += the rows of dx [T, h] at their tokens [T], a block of rows
// at a time (the conversion to the gradient's dtype is block-sized).
void add_embedding_grad(at::Tensor& grad, const at::Tensor& tokens, const at::Tensor& dx, int64_t block_elements) {
  const int64_t T = dx.size(0), h = dx.size(1);
  const int64_t rows = std::max<int64_t>(1, block_elements / std::max<int64_t>(1, h));
  for (int64_t r0 = 0; r0 < T; r0 += rows) {
    const int64_t n = std::min(rows, T - r0);
    grad.index_add_(0, tokens.narrow(0, r0, n), dx.narrow(0, r0, n).to(grad.scalar_type()));  // [n, h]
  }
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

namespace {

// The executor of one micro-batch on this device: every layer's weights from
// the model (the replica), no exchange, the whole sequence from position 0.
// With a shard (many ranks): its exchange, its tokens' positions and the
// gradients hook.
struct SingleDeviceProgram {
  runtime::ReplicaWeights weights;
  runtime::NoExchange none;
  LayerProgram program;
  TokenPositions positions;

  SingleDeviceProgram(model::LlamaModel& model, int64_t seq_len, runtime::TraceRecorder* trace,
                      int64_t chunk_tokens = 0, const SequenceShard* shard = nullptr)
      : weights(model.compute()),
        program({model.layer(), model.config().layers,
                 shard && shard->weights ? *shard->weights : static_cast<runtime::WeightSource&>(weights),
                 shard && shard->exchange ? *shard->exchange : static_cast<runtime::StageExchange&>(none), trace,
                 shard ? shard->on_layer_gradients : LayerGradientsHook{}, chunk_tokens,
                 [&model](int64_t layer) { model.layer_grads(layer); }, shard ? shard->measured : nullptr}),
        positions{model.rope((shard ? shard->first : 0) + seq_len), shard ? shard->first : 0} {}
};

}  // namespace

LossSum forward_backward(model::LlamaModel& model, runtime::ActivationPolicy& policy,
                         const MicroBatch& batch, double grad_weight, int64_t loss_chunk,
                         runtime::TraceRecorder* trace, int64_t chunk_tokens, const SequenceShard* shard) {
  check_batch(model, batch);
  const auto& cfg = model.config();
  const auto& w = model.compute();
  model.ensure_rest_grads();  // released after the last step's reduce-scatter (ZeRO 2-3)
  auto& g = model.grads();
  const int64_t B = batch.tokens.size(0), S = batch.tokens.size(1);
  const int64_t block = token_block_elements(B, cfg.hidden, chunk_tokens);
  SingleDeviceProgram run(model, S, trace, chunk_tokens, shard);

  // Forward. Regions mark the profiler's level-1 units (memory/planned_allocator.h).
  at::Tensor x;
  {
    memory::RegionScope region("embed");
    x = embed_tokens(model, batch.tokens);  // [B, S, h]
  }
  policy.begin_step({cfg.layers, B, S});
  x = run.program.forward(std::move(x), run.positions, &policy);
  policy.forward_done();
  // Final norm, loss, and their backward. The gradient is of the mean over
  // this batch (on many ranks: of the whole micro-batch), with the count
  // taken on the host.
  const auto targets = batch.targets.reshape({-1});
  const int64_t count = supervised_of(batch);
  const int64_t mean_over = shard && shard->count >= 0 ? shard->count : count;
  CrossEntropyResult ce;
  at::Tensor dx;
  {
    memory::RegionScope region("loss");
    at::Tensor nf, rstdf;
    model::rmsnorm_forward(x, w.final_norm, cfg.rms_eps, nf, rstdf, block);
    const double scale = mean_over > 0 ? grad_weight / static_cast<double>(mean_over) : 0.0;
    ce = chunked_cross_entropy(nf.view({B * S, cfg.hidden}), w.head(), targets, loss_chunk, scale,
                               &g.head());
    nf.reset();
    dx = ce.dh.defined() ? model::rmsnorm_backward(ce.dh.view({B, S, cfg.hidden}), x, rstdf,
                                                   w.final_norm, g.final_norm, {}, block)
                         : at::zeros_like(x);
    ce.dh.reset();
  }
  x.reset();

  // Backward.
  dx = run.program.backward(std::move(dx), run.positions, policy, g);
  policy.end_step();
  add_embedding_grad(g.embed, batch.tokens.reshape({-1}), dx.reshape({B * S, cfg.hidden}), block);
  return {ce.loss_sum, count};
}

at::Tensor final_hidden(model::LlamaModel& model, const at::Tensor& tokens, int64_t chunk_tokens) {
  const auto& cfg = model.config();
  SingleDeviceProgram run(model, tokens.size(1), nullptr, chunk_tokens);
  auto x = run.program.forward(embed_tokens(model, tokens), run.positions);  // [B, S, h]
  at::Tensor nf, rstdf;
  model::rmsnorm_forward(x, model.compute().final_norm, cfg.rms_eps, nf, rstdf);
  return nf;
}

LossSum forward_loss(model::LlamaModel& model, const MicroBatch& batch, int64_t loss_chunk,
                     int64_t chunk_tokens) {
  check_batch(model, batch);
  const auto& cfg = model.config();
  const int64_t B = batch.tokens.size(0), S = batch.tokens.size(1);
  auto nf = final_hidden(model, batch.tokens, chunk_tokens);  // [B, S, h]
  auto ce = chunked_cross_entropy(nf.view({B * S, cfg.hidden}), model.compute().head(),
                                  batch.targets.reshape({-1}), loss_chunk, 0.0, nullptr);
  return {ce.loss_sum, supervised_of(batch)};
}

}  // namespace memo::train
