// The option table (one row per option of `memo train` / `memo bench`) and
// what is generated from it here: the resolved configuration JSON, the
// memory-plan cache key, the header lines and the resume contract.
#include "train/option_table.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/json.h"
#include "core/units.h"
#include "runtime/policy.h"
#include "train/chunking.h"

namespace memo::train {

namespace {

// A check of one option's value; `key` names it in the message.
template <typename T>
using ValueCheck = std::function<void(const T& value, const std::string& key)>;

ValueCheck<int64_t> positive_integer() {
  return [](int64_t v, const std::string& key) { require_input(v > 0, key, " must be a positive integer, got ", v); };
}

// "KEY must be >= 0[ note], got V".
ValueCheck<int64_t> at_least_zero(std::string note = "") {
  return [note](int64_t v, const std::string& key) { require_input(v >= 0, key, " must be >= 0", note, ", got ", v); };
}

// "KEY must be EXPECTED, got V" unless ok(v); `finite`: first "KEY must be a
// finite number" (TOML allows inf and nan; the command line refuses them
// before this). Without it, a range check still refuses nan and inf.
ValueCheck<double> number(std::function<bool(double)> ok, std::string expected, bool finite = true) {
  return [ok, expected, finite](double v, const std::string& key) {
    if (finite) require_input(std::isfinite(v), key, " must be a finite number, got ", v);
    require_input(ok(v), key, " must be ", expected, ", got ", v);
  };
}

// KEY "V" is unknown (expected a, b or c).
ValueCheck<std::string> one_of(std::vector<std::string> names) {
  return [names](const std::string& v, const std::string& key) {
    for (const auto& n : names)
      if (v == n) return;
    std::string expected;
    for (size_t i = 0; i < names.size(); ++i)
      expected += (i == 0 ? "" : i + 1 == names.size() ? " or " : ", ") + names[i];
    throw InputError(cat(key, " \"", v, "\" is unknown (expected ", expected, ")"));
  };
}

ValueCheck<std::string> not_empty() {
  return [](const std::string& v, const std::string& key) { require_input(!v.empty(), key, " must not be empty"); };
}

nlohmann::json value_json(const OptionField& field, const TrainOptions& o) {
  return std::visit([&](auto member) { return nlohmann::json(o.*member); }, field);
}

// One row, built step by step: option(...).bench(...).check(...).json()...
struct Row {
  OptionSpec spec;

  // On `memo bench` too; `help` there when given.
  Row& bench(std::string help = "") {
    spec.commands |= kBench;
    spec.bench_help = std::move(help);
    return *this;
  }
  template <typename T>
  Row& check(ValueCheck<T> f) {
    const auto member = std::get<T TrainOptions::*>(spec.field);
    spec.check = [member, f, key = spec.key](const TrainOptions& o) { f(o.*member, key); };
    return *this;
  }
  Row& example(std::string text) {
    spec.example = std::move(text);
    return *this;
  }
  // In the resolved configuration as given, under its key; or as `form` writes it.
  Row& json(JsonForm form = {}) {
    spec.json = form ? std::move(form) : as_is();
    return *this;
  }
  Row& cache_key(JsonForm form = {}) {
    spec.cache_key = form ? std::move(form) : as_is();
    return *this;
  }
  Row& header(std::string label) {
    spec.header = std::move(label);
    return *this;
  }
  // A resumed run must keep it: compared at `pointer` (default: /KEY), named as `flag` (default: the flag).
  Row& resume(std::string pointer = "", std::string flag = "") {
    spec.resume_must_match.emplace_back(pointer.empty() ? "/" + spec.key : pointer, flag.empty() ? spec.flag : flag);
    return *this;
  }
  JsonForm as_is() const {
    return [field = spec.field, key = spec.key](nlohmann::json& out, const TrainOptions& o, const ResolvedRun&) {
      out[key] = value_json(field, o);
    };
  }
  operator OptionSpec() const { return spec; }
};

// A value option: --flag VALUE, TOML `key = value` (the flag without its
// dashes, underscores for the inner ones).
template <typename T>
Row option(std::string flag, T TrainOptions::*member, std::string help) {
  std::string key = flag.substr(2);
  for (char& c : key)
    if (c == '-') c = '_';
  Row r;
  r.spec.flag = std::move(flag);
  r.spec.key = std::move(key);
  r.spec.field = member;
  r.spec.help = std::move(help);
  return r;
}

// A switch: `flag` (no value) sets the bool member to `sets`; TOML `key = true/false`.
Row switch_option(std::string flag, std::string key, bool TrainOptions::*member, bool sets, std::string help) {
  Row r;
  r.spec.flag = std::move(flag);
  r.spec.key = std::move(key);
  r.spec.field = member;
  r.spec.switch_sets = sets;
  r.spec.example = sets ? "true" : "false";
  r.spec.help = std::move(help);
  return r;
}

// Forms shared by several rows: the model (--model and --layers) and the data (--data and --data-dtype).
void model_json(nlohmann::json& out, const TrainOptions&, const ResolvedRun& r) {
  const auto& c = r.model;
  out["model"] = {{"name", c.name},
                  {"vocab_size", c.vocab_size},
                  {"hidden_size", c.hidden},
                  {"layers", c.layers},
                  {"heads", c.heads},
                  {"kv_heads", c.kv_heads},
                  {"head_dim", c.head_dim},
                  {"ffn", c.ffn},
                  {"rope_theta", c.rope_theta},
                  {"rope_scaling_factor", c.rope_scaling.factor},
                  {"tie_embeddings", c.tie_embeddings},
                  {"parameters", c.total_params()}};
}
void model_key(nlohmann::json& out, const TrainOptions&, const ResolvedRun& r) {
  const auto& c = r.model;
  out["model"] = c.name;
  out["shape"] = {c.vocab_size, c.hidden, c.layers, c.heads, c.kv_heads, c.head_dim, c.ffn, c.tie_embeddings};
}
void data_key(nlohmann::json& out, const TrainOptions& o, const ResolvedRun&) {
  out["data"] = o.data.empty() ? "synthetic" : o.data_dtype;
}
void betas_json(nlohmann::json& out, const TrainOptions& o, const ResolvedRun&) { out["betas"] = {o.beta1, o.beta2}; }

std::vector<OptionSpec> build_table() {
  using O = TrainOptions;
  const std::string host_memory_help =
      " may use, in GiB (0: MemTotal x 0.75 minus what processes hold, at least half of MemAvailable, within "
      "the cgroup's memory.max; the header says which)";
  // clang-format off
  return {
    option("--model", &O::model,
           "Model: a preset (" + joined(model::preset_names()) + "), a Hugging Face config.json, or a Hugging Face "
           "checkpoint directory (config.json + *.safetensors: training starts from its weights)")
        .bench("Preset or Hugging Face config.json").check(not_empty()).example("llama3.2-1b")
        .json(model_json).cache_key(model_key).header("model"),
    option("--layers", &O::layers, "Override the model's layer count (0 keeps it)")
        .bench("Layers (0 keeps the model's)").check(at_least_zero(" (0 keeps the model's)")).example("3")
        .json(model_json).cache_key(model_key).header("model"),
    option("--seq-len", &O::seq_len, "Tokens per sequence")
        .bench().check(positive_integer()).example("64").json().cache_key().header("shape").resume(),
    option("--batch", &O::batch, "Sequences per micro-batch")
        .bench("Sequences per step").check(positive_integer()).example("3").json().cache_key().header("shape").resume(),
    option("--grad-accum", &O::grad_accum, "Micro-batches per optimizer step")
        .check(positive_integer()).example("2").json().cache_key().header("shape").resume(),
    option("--steps", &O::steps, "Optimizer steps")
        .check(positive_integer()).example("7").json().header("steps"),
    option("--policy", &O::policy,
           "Activation policy: " + joined(runtime::policy_names()) +
           " (keep: all skeletal tensors stay on the device; recompute: only layer inputs, "
           "each layer re-run in backward; offload: every tensor to pinned host memory on a side "
           "stream, prefetched a layer ahead; memo: x, o, lse to host, a fraction alpha of the "
           "other tokens to host, the rest recomputed token-wise without attention)")
        .example("memo").header("policy")
        .json([](nlohmann::json& out, const O&, const ResolvedRun& r) { out["policy"] = r.policy; })
        .cache_key(),
    option("--alpha", &O::alpha,
           "memo: fraction of the non-x/o/lse tokens offloaded to host (negative: chosen at start-up "
           "from the measured host link and layer times)")
        .bench("memo's offloaded fraction (negative: chosen by the LP)")
        .check(number([](double v) { return v < 0 || v <= 1; }, "in [0, 1] (or negative for automatic)"))
        .example("0.25").header("policy")
        .json([](nlohmann::json& out, const O&, const ResolvedRun& r) {
          out["alpha"] = json_or_null(r.alpha);
          out["policy_split"] = r.split ? to_json(*r.split) : nlohmann::json(nullptr);
        })
        .cache_key(),
    option("--host-memory-gib", &O::host_memory_gib, "Host memory offload's and memo's pool" + host_memory_help)
        .bench("Host memory offload's and memo's pools" + host_memory_help)
        .check(number([](double v) { return v >= 0; }, ">= 0")).example("1.5").header("host mem")
        .json([](nlohmann::json& out, const O&, const ResolvedRun& r) {
          out["host_memory_budget_bytes"] = r.host_budget_bytes;
          out["host_memory_budget_source"] = r.host_budget_source;
        })
        .cache_key(),
    option("--chunk-tokens", &O::chunk_tokens,
           "Run each layer over token chunks of C tokens (docs/chunks.md): 0 whole layers; C >= seq_len one chunk; "
           "auto the largest chunk the memory model fits on the device. Exact (the same gradients up to rounding); "
           "keep and recompute run chunked")
        .bench("Chunk sizes to compare, comma-separated (0: whole layers, C, auto): one row per policy and chunk")
        .check(ValueCheck<std::string>([](const std::string& v, const std::string&) { (void)parse_chunk_tokens(v); }))
        .example("64").header("chunks")
        .json([](nlohmann::json& out, const O&, const ResolvedRun& r) { out["chunk_tokens"] = r.chunk_tokens; })
        // Only when chunked, so that the keys of the plans cached before the option stay as they were.
        .cache_key([](nlohmann::json& out, const O& o, const ResolvedRun&) {
          if (o.chunk_tokens != "0") out["chunk_tokens"] = o.chunk_tokens;
        }),
    switch_option("--kv-on-host", "kv_on_host", &O::kv_on_host, true,
                  "Chunked layers: K and V (and their gradients) in host blocks, streamed to the device one chunk "
                  "at a time (docs/chunks.md, \"K and V on the host\"); needs --chunk-tokens, and --sp 1")
        .bench("Chunked layers: K and V (and their gradients) in host blocks, streamed one chunk at a time")
        .header("chunks")
        .json([](nlohmann::json& out, const O& o, const ResolvedRun&) { out["kv_on_host"] = o.kv_on_host; })
        // Only when on, so that the keys of the plans cached before the option stay as they were.
        .cache_key([](nlohmann::json& out, const O& o, const ResolvedRun&) {
          if (o.kv_on_host) out["kv_on_host"] = true;
        }),
    option("--lr", &O::lr, "Peak learning rate")
        .check(number([](double v) { return v > 0; }, "> 0")).example("0.001").json().header("optimizer").resume(),
    option("--min-lr-ratio", &O::min_lr_ratio, "Final learning rate as a fraction of --lr")
        .check(number([](double v) { return v >= 0 && v <= 1; }, "in [0, 1]", false)).example("0.5")
        .json().header("optimizer").resume(),
    option("--warmup", &O::warmup, "Linear warmup steps before the cosine decay")
        .check(at_least_zero()).example("5").json().header("optimizer").resume(),
    option("--weight-decay", &O::weight_decay, "AdamW decoupled weight decay (matrices only)")
        .check(number([](double v) { return v >= 0; }, ">= 0")).example("0.01").json().header("optimizer").resume(),
    option("--beta1", &O::beta1, "AdamW beta1")
        .check(number([](double v) { return v >= 0 && v < 1; }, "in [0, 1)", false)).example("0.8")
        .json(betas_json).header("optimizer").resume("/betas", "--beta1 and --beta2"),
    option("--beta2", &O::beta2, "AdamW beta2")
        .check(number([](double v) { return v >= 0 && v < 1; }, "in [0, 1)", false)).example("0.99")
        .json(betas_json).header("optimizer"),
    option("--clip", &O::clip, "Clip the global gradient norm to this (0: off)")
        .check(number([](double v) { return v >= 0; }, ">= 0 (0 disables clipping)")).example("0.5")
        .json().cache_key().header("optimizer").resume(),
    option("--data", &O::data, "Token file to train on; empty: the built-in synthetic in-context alphabet task")
        .example("tokens.bin").header("data").cache_key(data_key)
        .json([](nlohmann::json& out, const O&, const ResolvedRun& r) { out["data"] = r.data; }),
    option("--data-dtype", &O::data_dtype,
           "How --data is read: text (bytes, vocabulary 256), uint16 or uint32 (flat little-endian "
           "token ids, nanoGPT/llm.c format), megatron (PREFIX.bin + PREFIX.idx, documents packed "
           "in a shuffled resumable order), or auto (megatron when PREFIX.idx exists, .bin -> uint16, else text)")
        .check(one_of({"auto", "text", "uint16", "uint32", "megatron"})).example("uint32").header("data")
        .cache_key(data_key),
    option("--resume", &O::resume,
           "Continue from a checkpoint: its directory, or an --out directory (its newest); give the "
           "same options as the interrupted run")
        .example("runs/a").header("resume"),
    option("--checkpoint-every", &O::checkpoint_every,
           "Save OUT/checkpoints/step-N every N steps and after the last (Hugging Face weights + "
           "optimizer state + data position; 0: never)")
        .check(at_least_zero()).example("10").header("checkpoint"),
    option("--keep-checkpoints", &O::keep_checkpoints, "Newest checkpoints kept (0: all)")
        .check(at_least_zero()).example("5").header("checkpoint"),
    option("--device", &O::device, "auto (CUDA when present), cpu or cuda")
        .bench("auto, cpu or cuda").check(one_of({"auto", "cpu", "cuda"})).example("cpu").header("device")
        .json([](nlohmann::json& out, const O&, const ResolvedRun& r) { out["device"] = r.device; })
        .cache_key([](nlohmann::json& out, const O&, const ResolvedRun& r) { out["device"] = r.device; }),
    option("--dtype", &O::dtype,
           "Compute dtype: auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16 or float64 (CPU only: "
           "master weights and optimizer state in float64 too, for exact comparisons); otherwise master "
           "weights and optimizer state are float32")
        .bench("Compute dtype: auto, float32, bfloat16 or float64 (CPU)")
        .check(one_of({"auto", "float32", "bfloat16", "float64"}))
        .example("bfloat16").header("device")
        .json([](nlohmann::json& out, const O&, const ResolvedRun& r) {
          out["compute_dtype"] = r.compute_dtype;
          out["master_dtype"] = r.compute_dtype == "float64" ? "float64" : "float32";
        })
        .cache_key([](nlohmann::json& out, const O&, const ResolvedRun& r) { out["dtype"] = r.compute_dtype; })
        .resume("/compute_dtype", "--dtype (compute dtype)").resume("/master_dtype", "the master dtype"),
    option("--attention", &O::attention,
           "CUDA fused attention kernel: auto (cudnn for bfloat16, efficient for float32), cudnn, flash or efficient")
        .bench("CUDA attention kernel: auto (cudnn for bfloat16, efficient for float32), cudnn, flash or efficient")
        .check(one_of({"auto", "cudnn", "flash", "efficient"})).example("efficient").header("device")
        .json([](nlohmann::json& out, const O&, const ResolvedRun& r) { out["attention_kernel"] = r.attention_kernel; })
        // The kernel's workspace is part of the step's requests, so a plan made
        // under one kernel is stale under another. "auto" resolves from the
        // device and dtype (already in the key) and stays out of it, so the
        // keys of plans cached before this entry stay as they were.
        .cache_key([](nlohmann::json& out, const O& o, const ResolvedRun&) {
          if (o.attention != "auto") out["attention"] = o.attention;
        }),
    option("--loss-chunk", &O::loss_chunk,
           "Tokens per cross-entropy chunk (0: from a memory budget, 4 GiB on CUDA, 256 MiB on CPU)")
        .check(at_least_zero()).example("128").header("loss").cache_key()
        .json([](nlohmann::json& out, const O&, const ResolvedRun& r) { out["loss_chunk"] = r.loss_chunk; }),
    option("--seed", &O::seed, "Seed for weights and data")
        .bench("Seed for weights and the batch").example("42").json().header("steps").resume(),
    option("--peak-tflops", &O::peak_tflops, "Device peak for MFU in TFLOP/s (0: 989, H100/H200 SXM bf16 dense)")
        .bench("Peak for MFU (0: 989 on CUDA)").check(number([](double v) { return v >= 0; }, ">= 0")).example("100")
        .json([](nlohmann::json& out, const O&, const ResolvedRun& r) { out["peak_flops"] = r.peak_flops; }),
    option("--out", &O::out, "Directory for config.json, metrics.jsonl (one line per step) and summary.json")
        .example("runs/b"),
    option("--json", &O::json, "Write {\"config\", \"steps\": [...], \"summary\"} to this file")
        .example("report.json"),
    option("--trace", &O::trace,
           "Write the last step's compute and copy streams as a Chrome trace (Perfetto, chrome://tracing)")
        .example("trace.json"),
    switch_option("--planned-memory", "planned_memory", &O::planned_memory, true,
                  "Serve each step from one arena laid out by the bi-level memory plan "
                  "(profiled at step 2, cached on disk). CUDA: PyTorch's pluggable allocator, needs a "
                  "MEMO_CUDA build"),
    option("--plan-cache", &O::plan_cache, "Directory of cached memory plans (default: OUT/plans, else ~/.cache/memo/plans)")
        .example("plans"),
    option("--memory-timeline", &O::memory_timeline,
           "Write an HTML plot of allocated and reserved bytes over one profiled step, regions marked")
        .example("timeline.html"),
    option("--export-dsa", &O::export_dsa,
           "Write the profiled step's regions (level 1) and the step (level 2) as DSA CSVs into this directory")
        .example("dsa"),
    option("--log-every", &O::log_every, "Print a progress line every N steps (0: ~20 lines)")
        .check(at_least_zero()).example("3"),
    switch_option("--no-memory-check", "memory_check", &O::memory_check, false,
                  "Skip the fit check: by default a run whose estimated memory (weights, gradients, "
                  "AdamW state, activations under the policy, the pinned host pool) exceeds the "
                  "device's (on CPU: host RAM) stops before allocating (TOML: memory_check = false)")
        .bench("Skip the fit check (by default a policy whose estimated memory exceeds the device's, on CPU "
               "host RAM, stops the bench before anything is allocated)"),
    // Many ranks (src/dist/, docs/dist.md): launched by torchrun, srun or RANK/WORLD_SIZE.
    option("--sp", &O::sp,
           "Sequence-parallel ranks (Ulysses): each sequence is cut into sp token shards; world = dp x sp, and "
           "--batch (global) is split over dp")
        .bench().check(positive_integer()).example("2"),
    option("--dist-timeout", &O::dist_timeout,
           "Seconds a collective (or the start-up join) waits for a peer; then every rank exits 1 naming the rank "
           "that died or hung")
        .bench().check(number([](double v) { return v > 0 && v <= 1e7; }, "in (0, 1e7] seconds")).example("60"),
    option("--zero", &O::zero,
           "ZeRO stage on many ranks: 0 replicates weights, gradients and AdamW state (gradients all-reduced); "
           "1 shards the fp32 master weights and AdamW state over the world, 2 also the gradients "
           "(reduce-scattered per layer), 3 also the layers' weights (gathered one layer ahead); "
           "(-1, the default: 3 on many ranks); one process ignores it")
        .bench().check(ValueCheck<int64_t>([](int64_t v, const std::string& key) {
          require_input(v >= -1 && v <= 3, key, " must be a ZeRO stage 0, 1, 2 or 3 (or -1: 3 on many ranks), got ", v);
        }))
        .example("3"),
  };
  // clang-format on
}

// The header lines of several options (or of the run), in order; a row
// whose label is not here gets a line of its own after "steps".
struct HeaderLine {
  std::string label;
  std::function<std::optional<std::string>(const TrainOptions&, const ResolvedRun&)> text;
};

const std::vector<HeaderLine>& fixed_header_lines() {
  using Text = std::optional<std::string>;
  static const std::vector<HeaderLine> lines = {
      {"model", [](const TrainOptions&, const ResolvedRun& r) -> Text {
         const auto& c = r.model;
         return strf("%s: %lld layers, hidden %lld, heads %lld/%lld kv, head dim %lld, ffn %lld, "
                     "vocab %lld, %s parameters",
                     c.name.c_str(), (long long)c.layers, (long long)c.hidden, (long long)c.heads,
                     (long long)c.kv_heads, (long long)c.head_dim, (long long)c.ffn, (long long)c.vocab_size,
                     format_count((double)c.total_params()).c_str());
       }},
      {"shape", [](const TrainOptions& o, const ResolvedRun&) -> Text {
         return strf("batch %lld x seq_len %lld x grad_accum %lld = %lld tokens/step", (long long)o.batch,
                     (long long)o.seq_len, (long long)o.grad_accum, (long long)(o.batch * o.seq_len * o.grad_accum));
       }},
      {"policy", [](const TrainOptions&, const ResolvedRun& r) -> Text { return r.policy; }},
      {"host mem", [](const TrainOptions&, const ResolvedRun& r) -> Text {
         if (r.policy != "offload" && r.policy != "memo") return std::nullopt;
         return strf("%s for the host pool, from %s",
                     r.host_budget_bytes > 0 ? format_bytes(r.host_budget_bytes).c_str() : "no limit",
                     r.host_budget_source.c_str());
       }},
      {"chunks", [](const TrainOptions& o, const ResolvedRun& r) -> Text {
         if (r.chunk_tokens <= 0)  // only auto gets here with --kv-on-host: the layer fit whole
           return strf("whole layers (--chunk-tokens %s)%s", o.chunk_tokens.c_str(),
                       o.kv_on_host ? "; --kv-on-host unused: K and V stay with the whole layer" : "");
         const int64_t shard = o.seq_len / std::max<int64_t>(1, o.sp);  // chunks of a rank's tokens
         const int64_t chunks = (shard + r.chunk_tokens - 1) / r.chunk_tokens;
         return strf("%lld tokens per chunk, %lld chunks per layer (--chunk-tokens %s)%s; whole-sequence tensors "
                     "on the device: %s",
                     (long long)r.chunk_tokens, (long long)chunks, o.chunk_tokens.c_str(),
                     o.kv_on_host ? ", K and V on the host (--kv-on-host)" : "", r.whole_sequence.c_str());
       }},
      {"device", [](const TrainOptions&, const ResolvedRun& r) -> Text {
         return strf("%s, compute %s, master float32, attention %s", r.device.c_str(), r.compute_dtype.c_str(),
                     r.attention_kernel.c_str());
       }},
      {"optimizer", [](const TrainOptions& o, const ResolvedRun&) -> Text {
         return strf("AdamW lr %g (warmup %lld, cosine to %g), betas %g/%g, wd %g, clip %g", o.lr, (long long)o.warmup,
                     o.lr * o.min_lr_ratio, o.beta1, o.beta2, o.weight_decay, o.clip);
       }},
      {"loss", [](const TrainOptions& o, const ResolvedRun& r) -> Text {
         const int64_t tokens = o.batch * o.seq_len;
         const int64_t chunks = (tokens + r.loss_chunk - 1) / r.loss_chunk;
         const std::string source =
             o.loss_chunk > 0 ? "--loss-chunk"
                              : "budget " + format_bytes(static_cast<double>(r.loss_budget_bytes)) + "; --loss-chunk sets it";
         return strf("cross-entropy in %lld chunk%s of %lld tokens per micro-batch (%s)", (long long)chunks,
                     chunks == 1 ? "" : "s", (long long)std::min(r.loss_chunk, tokens), source.c_str());
       }},
      {"data", [](const TrainOptions&, const ResolvedRun& r) -> Text { return r.data; }},
      {"steps", [](const TrainOptions& o, const ResolvedRun&) -> Text {
         return strf("%lld (seed %llu)", (long long)o.steps, (unsigned long long)o.seed);
       }},
      {"", {}},  // the rows' own lines go here
      {"weights", [](const TrainOptions&, const ResolvedRun& r) -> Text {
         if (r.weights_from.empty()) return std::nullopt;
         return r.weights_from + " (Hugging Face safetensors)";
       }},
      {"resume", [](const TrainOptions&, const ResolvedRun& r) -> Text {
         if (r.resumed_from.empty()) return std::nullopt;
         return strf("%s (after step %lld)", r.resumed_from.c_str(), (long long)r.start_step);
       }},
      {"checkpoint", [](const TrainOptions& o, const ResolvedRun&) -> Text {
         if (o.checkpoint_every <= 0) return std::nullopt;
         return strf("every %lld steps and after the last, in %s/checkpoints (keep %lld)",
                     (long long)o.checkpoint_every, o.out.c_str(), (long long)o.keep_checkpoints);
       }},
  };
  return lines;
}

// An option's value as text (for a row's own header line).
std::string value_text(const OptionField& field, const TrainOptions& o) {
  return std::visit(
      [&](auto member) -> std::string {
        const auto& v = o.*member;
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, std::string>) return v;
        else if constexpr (std::is_same_v<T, bool>) return v ? "true" : "false";
        else if constexpr (std::is_same_v<T, double>) return strf("%g", v);
        else return std::to_string(v);
      },
      field);
}

}  // namespace

const std::vector<OptionSpec>& option_table() {
  static const std::vector<OptionSpec> table = build_table();
  return table;
}

const OptionSpec* find_option(const std::string& key) {
  for (const auto& spec : option_table())
    if (spec.key == key) return &spec;
  return nullptr;
}

nlohmann::json resolved_config_json(const TrainOptions& options, const ResolvedRun& run) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& spec : option_table())
    if (spec.json) spec.json(j, options, run);
  return j;
}

nlohmann::json plan_cache_key(const TrainOptions& options, const ResolvedRun& run) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& spec : option_table())
    if (spec.cache_key) spec.cache_key(j, options, run);
  return j;
}

std::vector<std::string> header_labels() {
  std::vector<std::string> labels;
  for (const auto& line : fixed_header_lines()) {
    if (!line.label.empty()) {
      labels.push_back(line.label);
      continue;
    }
    for (const auto& spec : option_table())
      if (!spec.header.empty() && std::find(labels.begin(), labels.end(), spec.header) == labels.end()) {
        const auto& fixed = fixed_header_lines();
        if (std::none_of(fixed.begin(), fixed.end(), [&](const HeaderLine& l) { return l.label == spec.header; }))
          labels.push_back(spec.header);
      }
  }
  return labels;
}

std::vector<std::pair<std::string, std::string>> header_lines(const TrainOptions& options, const ResolvedRun& run) {
  std::vector<std::pair<std::string, std::string>> out;
  const auto& fixed = fixed_header_lines();
  for (const auto& label : header_labels()) {
    const auto line = std::find_if(fixed.begin(), fixed.end(), [&](const HeaderLine& l) { return l.label == label; });
    if (line != fixed.end()) {
      if (auto text = line->text(options, run)) out.emplace_back(label, *text);
      continue;
    }
    for (const auto& spec : option_table())  // a row's own line: its value
      if (spec.header == label) {
        out.emplace_back(label, value_text(spec.field, options));
        break;
      }
  }
  return out;
}

std::vector<std::pair<std::string, std::string>> resume_contract() {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& spec : option_table())
    for (const auto& entry : spec.resume_must_match) out.push_back(entry);
  return out;
}

nlohmann::json to_json(const runtime::SplitReport& s) {
  return {{"alpha", s.alpha},
          {"resident", s.resident},
          {"units", s.units},
          {"swapped_units", s.swapped_units},
          {"fixed_on_device_units", s.fixed_on_device_units},
          {"fixed_on_device_bytes", s.fixed_on_device_bytes},
          {"attention_recomputed_units", s.attention_recomputed_units},
          {"attention_recomputed_bytes", s.attention_recomputed_bytes}};
}

}  // namespace memo::train
