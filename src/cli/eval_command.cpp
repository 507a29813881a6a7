// `memo eval`: mean next-token loss and perplexity of a Hugging Face Llama
// checkpoint directory over a token file, in non-overlapping windows in file
// order. Hidden flags for the transformers parity test: --dump-logits FILE
// writes the first batch's logits, loss and tokens, --dump-grads FILE the
// gradients (Hugging Face names) of the first batch's mean loss.
#include <ATen/ATen.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <memory>
#include <string>

#include "cli/commands.h"
#include "core/checked.h"
#include "cli/io_checks.h"
#include "cli/strict_numbers.h"
#include "core/error.h"
#include "core/files.h"
#include "core/units.h"
#include "model/hf_checkpoint.h"
#include "model/llama.h"
#include "runtime/policy.h"
#include "train/data.h"
#include "train/fit_check.h"
#include "train/step.h"
#include "train/trainer.h"

namespace memo::cli {

namespace {

struct EvalOptions {
  std::string model, data, data_dtype = "auto", json, device = "auto", dtype = "auto";
  std::string dump_logits, dump_grads;
  int64_t seq_len = 1024, batch = 1, max_batches = 0;
  int64_t chunk_tokens = 0;  // tokens per layer chunk (docs/chunks.md); 0: whole layers
  bool skip_memory_check = false;
};

// The forward pass up to the logits [B, S, V] (float32), for the parity dump.
at::Tensor logits_of(model::LlamaModel& m, const at::Tensor& tokens) {
  return at::matmul(train::final_hidden(m, tokens), m.compute().head().t()).to(at::kFloat);
}

int run_eval(const EvalOptions& o) {
  require_input(o.seq_len > 0, "seq_len must be a positive integer, got ", o.seq_len);
  require_input(o.batch > 0, "batch must be a positive integer, got ", o.batch);
  require_input(o.max_batches >= 0, "max_batches must be >= 0, got ", o.max_batches);
  require_input(o.chunk_tokens >= 0, "--chunk-tokens must be >= 0 (0: whole layers), got ", o.chunk_tokens);
  (void)checked_mul(o.batch, checked_add(o.seq_len, 1, "seq_len + 1"), "tokens per batch (batch x (seq_len + 1))");
  {
    std::vector<NamedPath> inputs = {{"--model", o.model}};
    for (auto& d : data_inputs(o.data)) inputs.push_back(d);
    check_outputs({{"--json", o.json}, {"--dump-logits", o.dump_logits}, {"--dump-grads", o.dump_grads}}, inputs);
  }
  auto config = model::resolve_model(o.model);
  require_input(model::has_hf_weights(o.model), "--model ", o.model,
                ": eval needs a checkpoint directory with *.safetensors weights");
  train::TrainOptions to;
  to.device = o.device;
  to.dtype = o.dtype;
  to.validate();
  const auto ex = train::resolve_execution(to);
  if (!o.skip_memory_check) {  // before anything is allocated (train/fit_check.h)
    train::FitRequest fr;
    fr.config = config;
    fr.batch = o.batch;
    fr.seq_len = o.seq_len;
    fr.policy = "eval";
    fr.optimizer = false;
    fr.device = ex.device;
    fr.compute_dtype = ex.compute_dtype;
    fr.command = "eval";
    fr.chunk_tokens = o.chunk_tokens < o.seq_len ? o.chunk_tokens : 0;
    train::check_fit(fr);
  }
  auto corpus = train::open_token_corpus(o.data, o.data_dtype, config.vocab_size);
  const int64_t windows = (corpus->size() - 1) / o.seq_len;
  require_input(windows >= 1, corpus->describe(), ": fewer than seq_len + 1 = ", o.seq_len + 1, " tokens");

  model::ModelOptions mo;
  mo.device = ex.device;
  mo.compute_dtype = ex.compute_dtype;
  model::LlamaModel model(config, mo);
  model::load_hf_weights(o.model, config, model.master());
  for (auto& [name, t] : model.master().named())  // a NaN weight would give a NaN loss, not an evaluation
    require_input(at::isfinite(*t).all().item<bool>(), o.model, ": weight ", name, " holds NaN or infinite values");
  model.refresh_compute();

  std::printf("memo eval\n  model      %s: %lld layers, hidden %lld, vocab %lld\n  data       %s\n"
              "  windows    %lld of %lld tokens, batch %lld, %s %s%s\n",
              o.model.c_str(), (long long)config.layers, (long long)config.hidden, (long long)config.vocab_size,
              corpus->describe().c_str(), (long long)windows, (long long)o.seq_len, (long long)o.batch,
              ex.device.str().c_str(), train::dtype_name_of(ex.compute_dtype),
              o.chunk_tokens > 0 && o.chunk_tokens < o.seq_len
                  ? strf(", layers in chunks of %lld tokens", (long long)o.chunk_tokens).c_str()
                  : "");
  std::printf("  threads    %s\n", describe_cpu_threads().c_str());
  std::fflush(stdout);

  train::LossSum total;
  int64_t batches = 0;
  for (int64_t first = 0; first < windows; first += o.batch) {
    if (o.max_batches > 0 && batches >= o.max_batches) break;
    const int64_t B = std::min(o.batch, windows - first);
    auto window = at::empty({B, o.seq_len + 1}, at::kLong);
    for (int64_t b = 0; b < B; ++b)
      corpus->read((first + b) * o.seq_len, o.seq_len + 1, window.data_ptr<int64_t>() + b * (o.seq_len + 1));
    auto mb = train::to_device({window.narrow(1, 0, o.seq_len).contiguous(),
                                window.narrow(1, 1, o.seq_len).contiguous(), B * o.seq_len},
                               ex.device);
    auto l = train::forward_loss(model, mb, 0, o.chunk_tokens);
    if (batches == 0 && !o.dump_logits.empty())
      model::write_tensors(o.dump_logits,
                           {{"logits", logits_of(model, mb.tokens)},
                            {"loss", at::full({1}, l.mean(), at::kDouble)},
                            {"tokens", mb.tokens.cpu()}});
    if (batches == 0 && !o.dump_grads.empty()) {
      auto policy = runtime::make_policy("keep");
      policy->prepare(model, B, o.seq_len);
      model.zero_grads();
      train::forward_backward(model, *policy, mb, 1.0);
      model::write_tensors(o.dump_grads, model::to_hf_tensors(config, model.grads(), at::kFloat));
    }
    total.add(l);
    ++batches;
  }
  require_input(total.count > 0, corpus->describe(), ": no token had a target");
  const double loss = total.mean();
  if (!std::isfinite(loss))  // never a silent NaN with exit 0
    throw Error(cat("the mean loss over ", total.count, " tokens is ", loss, " (the forward pass overflowed in ",
                    train::dtype_name_of(ex.compute_dtype), "; try --dtype float32)"));
  std::printf("\n  loss        %.6f\n  perplexity  %.4f\n  tokens      %lld\n", loss, std::exp(loss),
              (long long)total.count);
  if (!o.json.empty())
    write_file_atomic(o.json, nlohmann::json{{"loss", loss}, {"perplexity", std::exp(loss)}, {"tokens", total.count}}
                                      .dump(2) + "\n");
  return 0;
}

}  // namespace

void add_eval_command(CLI::App& root, Action& action) {
  auto* app = root.add_subcommand(
      "eval",
      "Mean next-token loss and perplexity of a Hugging Face Llama checkpoint directory (config.json\n"
      "+ *.safetensors, e.g. a memo checkpoint) over a token file, in non-overlapping windows in order.");
  auto o = std::make_shared<EvalOptions>();
  app->add_option("--model", o->model, "Checkpoint directory (config.json and *.safetensors)")->required();
  app->add_option("--data", o->data, "Token file (or Megatron PREFIX)")->required();
  app->add_option("--data-dtype", o->data_dtype, "auto, text, uint16, uint32 or megatron")->capture_default_str();
  app->add_option("--seq-len", o->seq_len, "Tokens per window")->capture_default_str();
  app->add_option("--batch", o->batch, "Windows per forward pass")->capture_default_str();
  app->add_option("--chunk-tokens", o->chunk_tokens,
                  "Run each layer over chunks of this many tokens (forward only, as train's forward; "
                  "docs/chunks.md): a layer's transients span a chunk, not the window; 0: whole layers")
      ->capture_default_str();
  app->add_option("--max-batches", o->max_batches, "Stop after this many batches (0: the whole file)")
      ->capture_default_str();
  app->add_option("--device", o->device, "auto, cpu or cuda")->capture_default_str();
  app->add_option("--dtype", o->dtype, "Compute dtype: auto, float32 or bfloat16")->capture_default_str();
  app->add_option("--json", o->json, "Write {\"loss\", \"perplexity\", \"tokens\"} to this file");
  app->add_flag("--no-memory-check", o->skip_memory_check,
                "Skip the fit check (by default an evaluation whose estimated memory exceeds the device's, "
                "on CPU host RAM, stops before allocating)");
  app->add_option("--dump-logits", o->dump_logits)->group("");  // hidden: parity tests
  app->add_option("--dump-grads", o->dump_grads)->group("");
  strict_numbers(app);
  app->callback([&action, o] { action = [o] { return run_eval(*o); }; });
}

}  // namespace memo::cli
