// `memo train`: flags and an optional TOML config (flags override the file),
// a printout of the resolved configuration, progress lines and a summary;
// --json FILE and --out DIR for machines.
#include <CLI/CLI.hpp>
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/io_checks.h"
#include "cli/multi_rank.h"
#include "cli/option_flags.h"
#include "cli/strict_numbers.h"
#include "core/error.h"
#include "core/files.h"
#include "core/json.h"
#include "core/units.h"
#include "dist/context.h"
#include "dist/launch.h"
#include "train/trainer.h"

namespace memo::cli {

namespace {

using train::TrainOptions;

void print_step(const train::StepRecord& r, int64_t total) {
  std::printf("step %*lld/%lld  loss %.4f  lr %.2e  |g| %6.3f  %9.0f tok/s  mfu %s  peak %s  %s/step\n",
              static_cast<int>(std::to_string(total).size()), static_cast<long long>(r.step),
              static_cast<long long>(total), r.loss, r.lr, r.grad_norm, r.tokens_per_s,
              r.mfu ? strf("%.1f%%", *r.mfu * 100).c_str() : "-",
              format_bytes(static_cast<double>(r.peak_device_bytes)).c_str(),
              format_seconds(r.seconds).c_str());
  std::fflush(stdout);
}

void print_summary(const train::TrainSummary& s) {
  std::printf("\nsummary\n");
  std::printf("  steps            %lld (%s tokens) in %s\n", static_cast<long long>(s.steps),
              format_count(static_cast<double>(s.tokens)).c_str(), format_seconds(s.seconds).c_str());
  std::printf("  loss             %.4f -> %.4f (mean of the last tenth of the steps)\n", s.first_loss,
              s.final_loss);
  if (s.no_context_loss)
    std::printf("  no-context loss  %.4f: %s\n", *s.no_context_loss,
                s.final_loss < std::min(*s.no_context_loss, s.first_loss) - 0.1
                    ? "the final loss is below it, so the model reads its context"
                    : "the final loss is not below it yet: the model has not learned to use its context");
  std::printf("  throughput       %.0f tokens/s%s\n", s.tokens_per_s,
              s.mfu ? strf(", MFU %.1f%%", *s.mfu * 100).c_str() : "");
  if (!s.memory_plan.cache_rejected.empty()) {
    std::fflush(stdout);
    std::fprintf(stderr, "memo: warning: the cached memory plan was not used and was planned afresh: %s\n",
                 s.memory_plan.cache_rejected.c_str());
  }
  if (s.memory_plan.active) {
    const auto& m = s.memory_plan;
    std::printf("  memory plan      arena %s (%s), LOAD %s, arena/LOAD %.4f, %lld level-1 plans\n",
                format_bytes(static_cast<double>(m.arena_bytes)).c_str(), m.source.c_str(),
                format_bytes(static_cast<double>(m.flat_load)).c_str(),
                m.flat_load ? static_cast<double>(m.arena_bytes) / static_cast<double>(m.flat_load) : 0.0,
                static_cast<long long>(m.level1_plans));
    std::printf("                   last step: %lld requests from the arena, %lld from the fallback, "
                "%lld device mallocs, %lld device frees\n",
                static_cast<long long>(m.planned_requests), static_cast<long long>(m.base_allocs_last_step),
                static_cast<long long>(m.device_mallocs_last_step),
                static_cast<long long>(m.device_frees_last_step));
    std::printf("                   %lld fallbacks in all planned steps%s; arena unused at the peak %s\n",
                static_cast<long long>(m.fallbacks),
                m.fallbacks ? " (requests the plan did not expect; served by the plain allocator)" : "",
                format_bytes(static_cast<double>(m.arena_unused_bytes)).c_str());
    const int64_t frag = m.peak_reserved_bytes - m.peak_allocated_bytes;
    std::printf("                   fragmentation (peak reserved - peak allocated, last step) %s%s\n",
                format_bytes(static_cast<double>(frag)).c_str(),
                m.peak_reserved_bytes > 0
                    ? strf(", %.2f%% of reserved", 100.0 * static_cast<double>(frag) / static_cast<double>(m.peak_reserved_bytes)).c_str()
                    : "");
  }
  if (s.comm) {
    std::string kinds;
    for (int k = 0; k < dist::kCollectiveKinds; ++k) {
      const auto& b = s.comm->by_kind[static_cast<size_t>(k)];
      if (b.calls == 0) continue;
      kinds += strf("%s%s %s in %lld", kinds.empty() ? "" : ", ", dist::collective_name(static_cast<dist::Collective>(k)),
                    format_bytes(static_cast<double>(b.bytes_sent)).c_str(), static_cast<long long>(b.calls));
    }
    std::printf("  communication    %s sent per step by rank 0 (%s; world %d = dp %d x sp %d)\n",
                format_bytes(static_cast<double>(s.comm->total().bytes_sent)).c_str(), kinds.c_str(), s.world, s.dp,
                s.sp);
  }
  std::printf("  peak memory      %s on the device; %s of activations held for backward; %s on the host\n",
              format_bytes(static_cast<double>(s.peak_device_bytes)).c_str(),
              format_bytes(static_cast<double>(s.peak_activation_bytes)).c_str(),
              format_bytes(static_cast<double>(s.host_bytes)).c_str());
  std::printf("  peak split       %s\n", train::describe(s.peak_split).c_str());
  auto b = [](int64_t v) { return format_bytes(static_cast<double>(v)); };
  std::printf("  model state      %s held between steps%s: weights %s, master %s, gradients %s, AdamW moments %s\n",
              b(s.model_state.total()).c_str(), s.world > 1 ? " by rank 0 (sharded by --zero)" : "",
              b(s.model_state.weights).c_str(), b(s.model_state.master).c_str(), b(s.model_state.grads).c_str(),
              b(s.model_state.moments).c_str());
}

// Refuses, before anything runs, outputs that would destroy something:
// reports or --out files that are an input (data, model, config, the
// checkpoint resumed from), directories in place of files, unwritable paths.
void check_train_outputs(const TrainOptions& o, const std::string& config_file) {
  std::vector<NamedPath> inputs = model_inputs(o.model);
  inputs.push_back({"--config", config_file});
  for (auto& d : data_inputs(o.data)) inputs.push_back(d);
  if (!o.resume.empty()) {
    // The checkpoints only: --resume OUT --out OUT rewrites OUT's own reports.
    namespace fs = std::filesystem;
    std::error_code ec;
    const bool is_checkpoint = fs::exists(fs::path(o.resume) / "trainer_state.json", ec);
    inputs.push_back({"--resume", is_checkpoint ? o.resume : (fs::path(o.resume) / "checkpoints").string()});
  }
  std::vector<NamedPath> outputs = {{"--json", o.json}, {"--trace", o.trace}, {"--memory-timeline", o.memory_timeline}};
  if (!o.out.empty())
    for (const char* name : {"config.json", "metrics.jsonl", "summary.json"})
      outputs.push_back({cat("--out (", name, ")"), o.out + "/" + name});
  check_output_dirs({{"--out", o.out}, {"--export-dsa", o.export_dsa}, {"--plan-cache", o.plan_cache}}, inputs);
  if (o.checkpoint_every > 0) {
    // (Not --resume: continuing from OUT's own checkpoints and pruning them is the point.)
    std::vector<NamedPath> read = model_inputs(o.model);
    for (auto& d : data_inputs(o.data)) read.push_back(d);
    read.push_back({"--config", config_file});
    refuse_inputs_inside(read, o.out + "/checkpoints", "where this run saves and prunes checkpoints");
  }
  check_outputs(outputs, inputs);
}

// On --resume, metrics.jsonl keeps the lines of the steps up to the
// checkpoint's: the steps after it run again and append theirs, so the file
// ends as the uninterrupted run's would. A torn last line (a crash mid-write)
// ends what is kept.
void truncate_metrics(const std::string& path, int64_t last_step) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return;  // nothing recorded yet (or a pipe)
  const std::string text = read_text_file(path, size_t{1} << 32, "--out metrics file");
  std::string kept;
  size_t begin = 0;
  while (begin < text.size()) {
    const size_t end = text.find('\n', begin);
    if (end == std::string::npos) break;  // no newline: torn
    const auto j = nlohmann::json::parse(text.substr(begin, end - begin), nullptr, /*allow_exceptions=*/false);
    if (!j.is_object() || !j.contains("step") || !j["step"].is_number_integer() ||
        j["step"].get<int64_t>() > last_step)
      break;
    kept.append(text, begin, end + 1 - begin);
    begin = end + 1;
  }
  if (kept.size() != text.size()) write_file_atomic(path, kept);
}

// The options of this run: defaults, then the TOML file, then the flags
// given; validated.
TrainOptions resolve_options(const std::string& config_file, const FlagBindings& flags) {
  TrainOptions options;
  if (!config_file.empty()) train::apply_toml_file(config_file, options);
  apply_given_flags(flags, options);
  options.validate();
  return options;
}

void print_header(const train::Trainer& trainer, const dist::Context* context) {
  std::printf("memo train\n");
  for (const auto& [k, v] : trainer.describe()) std::printf("  %-10s %s\n", k.c_str(), v.c_str());
  if (context)
    std::printf("  %-10s %s, %s, launched by %s; ZeRO stage 0 (weights, gradients, AdamW state replicated)\n",
                "ranks", context->mesh().describe().c_str(), context->backend_name().c_str(),
                context->launch().launcher.c_str());
  for (const auto& [k, v] : trainer.describe_policy()) std::printf("  %-10s %s\n", k.c_str(), v.c_str());
  std::printf("  %-10s %s\n", "threads", describe_cpu_threads().c_str());
  std::printf("\n");
  std::fflush(stdout);
}

// The report's "config" (the resolved configuration and the CPU threads);
// with --out, config.json written and metrics.jsonl started (or cut back to
// the resumed checkpoint's step).
nlohmann::json start_report(const train::Trainer& trainer, const TrainOptions& options) {
  nlohmann::json report;
  report["config"] = trainer.resolved_config();
  report["config"]["cpu_threads"] = {{"threads", cpu_threads().threads},
                                     {"cores", cpu_threads().cores},
                                     {"passive_wait", cpu_threads().passive_wait}};
  report["steps"] = nlohmann::json::array();
  if (!options.out.empty()) {
    write_file_atomic(options.out + "/config.json", report["config"].dump(2) + "\n");
    const std::string metrics = options.out + "/metrics.jsonl";
    if (options.resume.empty())
      write_file_atomic(metrics, "");
    else
      truncate_metrics(metrics, trainer.start_step());
  }
  return report;
}

// One finished step: into the report, metrics.jsonl (fsynced before a
// checkpoint) and, every log_every steps, a progress line.
void record_step(const train::StepRecord& r, const TrainOptions& options, int64_t log_every, nlohmann::json& report) {
  auto j = train::to_json(r);
  report["steps"].push_back(j);
  if (!options.out.empty()) {
    const std::string metrics = options.out + "/metrics.jsonl";
    append_line(metrics, j.dump());  // a failed append stops the run (exit 1)
    // Before a checkpoint is saved, its steps' lines are on disk too.
    if (options.checkpoint_every > 0 && (r.step % options.checkpoint_every == 0 || r.step == options.steps))
      fsync_file(metrics);
  }
  if (r.step == 1 || r.step % log_every == 0 || r.step == options.steps) print_step(r, options.steps);
}

// The summary: printed, summary.json, the trace and --json report named.
void finish_report(const train::TrainSummary& summary, const TrainOptions& options, nlohmann::json& report) {
  print_summary(summary);
  report["summary"] = train::to_json(summary);
  if (!options.out.empty()) write_file_atomic(options.out + "/summary.json", report["summary"].dump(2) + "\n");
  if (!options.trace.empty()) std::printf("  trace            %s\n", options.trace.c_str());
  if (!options.json.empty()) {
    write_file_atomic(options.json, report.dump(2) + "\n");
    std::printf("  report           %s\n", options.json.c_str());
  }
}

int run_train(const std::string& config_file, const FlagBindings& flags) {
  const TrainOptions options = resolve_options(config_file, flags);
  check_train_outputs(options, config_file);
  // Many ranks (torchrun, srun, WORLD_SIZE/RANK) or --sp: the mesh is
  // checked from the options alone, then the process groups come up. Only
  // rank 0 prints and writes; the others speak only on errors.
  std::unique_ptr<dist::Context> context;
  if (const auto launch = dist::launch_from_environment(); launch.distributed() || options.sp > 1)
    context = join_ranks(options, launch);
  const bool root = !context || context->is_root();
  // One run at a time per --out (held until the process ends; a crashed
  // run's lock dies with it).
  std::optional<DirectoryLock> out_lock;
  if (root && !options.out.empty()) out_lock.emplace(options.out, "--out");

  train::Trainer trainer(options, context.get());
  if (root) print_header(trainer, context.get());
  nlohmann::json report = root ? start_report(trainer, options) : nlohmann::json();
  const int64_t every = trainer.log_every();
  auto summary = trainer.run([&](const train::StepRecord& r) {
    if (root) record_step(r, options, every, report);
  });
  if (root) finish_report(summary, options, report);
  return 0;
}

}  // namespace

void add_train_command(CLI::App& root, Action& action) {
  auto* app = root.add_subcommand(
      "train",
      "Train a Llama-family model. With no options: the tiny built-in model on the built-in\n"
      "in-context task, on the CPU (or CUDA when present), about a minute on 2 cores.");
  auto config_file = std::make_shared<std::string>();
  app->add_option("--config", *config_file,
                  "TOML file with any of the keys below (underscores for dashes: seq_len = 4096); "
                  "flags given on the command line override it")
      ->check(CLI::ExistingFile);
  auto flags = add_option_flags(app, train::kTrain, TrainOptions{});  // train/option_table.cpp's rows
  strict_numbers(app);
  app->callback([&action, config_file, flags] {
    action = [config_file, flags]() -> int { return run_train(*config_file, *flags); };
  });
}

}  // namespace memo::cli
