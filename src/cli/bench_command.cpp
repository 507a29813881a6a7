// `memo bench`: every activation policy on the same model, shape and batch,
// one table (and --json); on many ranks each row on the mesh, with the
// bytes each rank moves per step by collective kind.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <memory>
#include <sstream>

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
#include "memory/host_pool.h"
#include "train/bench.h"

namespace memo::cli {

namespace {

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

// The bench's own defaults: a smaller shape than train's.
train::TrainOptions bench_run_defaults() {
  train::TrainOptions run;
  run.model = "tiny";
  run.layers = 4;
  run.seq_len = 512;
  run.batch = 2;
  return run;
}

void print_header(const train::BenchOptions& o, const dist::Context* ranks) {
  std::printf("memo bench: %s, %lld layers, batch %lld x seq_len %lld\n", o.run.model.c_str(),
              (long long)o.run.layers, (long long)o.run.batch, (long long)o.run.seq_len);
  if (ranks)
    std::printf("  ranks %s, %s, launched by %s; ZeRO stage %lld; each row is memo train's step "
                "(forward, backward, gradient reduction, optimizer) on the mesh\n",
                ranks->mesh().describe().c_str(), ranks->backend_name().c_str(), ranks->launch().launcher.c_str(),
                (long long)(o.run.zero < 0 ? 3 : o.run.zero));
  std::printf("  threads %s\n", describe_cpu_threads().c_str());
  std::printf("  host memory for offload/memo pools: %s, from %s\n",
              o.host_budget->bytes > 0 ? format_bytes(o.host_budget->bytes).c_str() : "no limit",
              o.host_budget->source.c_str());
  std::fflush(stdout);
}

void print_table_head(bool planned_memory) {
  std::printf("\n%-10s %7s %-11s %10s %8s %7s %12s %12s %6s %12s %12s %8s %7s %14s %8s", "policy", "chunk", "status", "step",
              "vs keep", "MFU", "peak alloc", "peak resv", "frag", "host", "pinned", "pin", "alpha", "grad diff",
              "mallocs");
  if (planned_memory) std::printf(" %12s %9s", "arena", "fallbacks");
  std::printf("\n");
}

void print_row(const train::BenchRow& r, bool planned_memory) {
  std::printf("%-10s %7s %-11s %10s %8s %7s %12s %12s %6s %12s %12s %8s %7s %14s %8lld", r.policy.c_str(),
              r.chunk_tokens > 0 ? std::to_string(r.chunk_tokens).c_str() : "-", r.status.c_str(),
              r.status == "ok" ? format_seconds(r.step_s).c_str() : "-",
              r.ratio_to_keep ? strf("%.3fx", *r.ratio_to_keep).c_str() : "-",
              r.mfu ? strf("%.1f%%", *r.mfu * 100).c_str() : "-",
              format_bytes(static_cast<double>(r.peak_allocated_bytes)).c_str(),
              format_bytes(static_cast<double>(r.peak_reserved_bytes)).c_str(),
              r.peak_reserved_bytes > 0 ? strf("%.1f%%", 100.0 * r.fragmentation()).c_str() : "-",
              format_bytes(static_cast<double>(r.host_bytes)).c_str(),
              format_bytes(static_cast<double>(r.host_pinned_bytes)).c_str(),
              r.host_pinned_bytes > 0 ? format_seconds(r.pin_seconds).c_str() : "-",
              r.alpha ? strf("%.3f", *r.alpha).c_str() : "-",
              r.max_grad_rel_diff ? strf("%.2e", *r.max_grad_rel_diff).c_str() : "-",
              static_cast<long long>(r.device_mallocs_per_step));
  if (planned_memory)
    std::printf(" %12s %9s", r.arena_bytes ? format_bytes(static_cast<double>(*r.arena_bytes)).c_str() : "-",
                r.plan_fallbacks ? std::to_string(*r.plan_fallbacks).c_str() : "-");
  std::printf("\n");
}

nlohmann::json row_json(const train::BenchRow& r) {
  return {{"policy", r.policy},
          {"chunk_setting", r.chunk_setting},
          {"chunk_tokens", r.chunk_tokens},
          {"peak_split", train::to_json(r.peak_split)},
          {"status", r.status},
          {"message", r.message.empty() ? nlohmann::json(nullptr) : nlohmann::json(r.message)},
          {"step_s", r.status == "ok" ? nlohmann::json(r.step_s) : nlohmann::json(nullptr)},
          {"ratio_to_keep", json_or_null(r.ratio_to_keep)},
          {"mfu", json_or_null(r.mfu)},
          {"peak_allocated_bytes", r.peak_allocated_bytes},
          {"peak_reserved_bytes", r.peak_reserved_bytes},
          {"host_bytes", r.host_bytes},
          {"host_pinned_bytes", r.host_pinned_bytes},
          {"pin_seconds", r.pin_seconds},
          {"host_needed_bytes", json_or_null(r.host_needed_bytes)},
          {"host_budget_bytes", json_or_null(r.host_budget_bytes)},
          {"alpha", json_or_null(r.alpha)},
          {"split", r.split ? train::to_json(*r.split) : nlohmann::json(nullptr)},
          {"loss", json_or_null(r.loss)},
          {"max_grad_rel_diff", json_or_null(r.max_grad_rel_diff)},
          {"arena_bytes", json_or_null(r.arena_bytes)},
          {"plan_fallbacks", json_or_null(r.plan_fallbacks)},
          {"fragmentation", r.fragmentation()},
          {"device_mallocs_per_step", r.device_mallocs_per_step},
          {"comm_per_step", r.comm ? train::to_json(*r.comm) : nlohmann::json(nullptr)}};
}

// The peak of each ok row by purpose (train/memory_split.h), under the table.
void print_peak_splits(const std::vector<train::BenchRow>& rows) {
  std::printf("\n%-10s %7s %14s %14s %14s %14s\n", "policy", "chunk", "static", "whole-seq", "chunk bufs", "transient");
  for (const auto& r : rows) {
    if (r.status != "ok") continue;
    auto b = [](int64_t v) { return format_bytes(static_cast<double>(v)); };
    const auto& p = r.peak_split;
    std::printf("%-10s %7s %14s %14s %14s %14s\n", r.policy.c_str(),
                r.chunk_tokens > 0 ? std::to_string(r.chunk_tokens).c_str() : "-", b(p.static_bytes).c_str(),
                b(p.whole_sequence_bytes).c_str(), b(p.chunk_buffer_bytes).c_str(), b(p.transient_bytes).c_str());
  }
}

// memo on a short host: where a row's split holds units on the device
// tier or keeps only x of some, a line each, under the table.
void print_short_host_splits(const std::vector<train::BenchRow>& rows) {
  bool first = true;
  for (const auto& r : rows) {
    if (!r.split || (r.split->fixed_on_device_units == 0 && r.split->attention_recomputed_units == 0)) continue;
    const auto& s = *r.split;
    std::string parts;
    if (s.fixed_on_device_units > 0)
      parts += strf("; %lld on the device (%s)", (long long)s.fixed_on_device_units,
                    format_bytes(s.fixed_on_device_bytes).c_str());
    if (s.attention_recomputed_units > 0)
      parts += strf("; %lld keeping only x, their attention recomputed in backward (%s of o, lse kept nowhere)",
                    (long long)s.attention_recomputed_units, format_bytes(s.attention_recomputed_bytes).c_str());
    std::printf("%s%s, %s: host short of x, o, lse of its %lld swapped units%s\n", first ? "\n" : "",
                r.policy.c_str(),
                r.chunk_tokens > 0 ? ("chunks of " + std::to_string(r.chunk_tokens)).c_str() : "whole layers",
                (long long)s.swapped_units, parts.c_str());
    first = false;
  }
}

// Many ranks: the bytes rank 0 moved in a row's last step, and the calls,
// by collective kind, under the table.
void print_comm(const std::vector<train::BenchRow>& rows) {
  std::printf("\n%-10s %7s", "policy", "chunk");
  for (int k = 0; k < dist::kCollectiveKinds; ++k)
    std::printf(" %22s", dist::collective_name(static_cast<dist::Collective>(k)));
  std::printf("   (bytes sent per step by rank 0 / calls)\n");
  for (const auto& r : rows) {
    if (!r.comm) continue;
    std::printf("%-10s %7s", r.policy.c_str(), r.chunk_tokens > 0 ? std::to_string(r.chunk_tokens).c_str() : "-");
    for (const auto& b : r.comm->by_kind)
      std::printf(" %22s", strf("%s / %lld", format_bytes(static_cast<double>(b.bytes_sent)).c_str(),
                                static_cast<long long>(b.calls)).c_str());
    std::printf("\n");
  }
}

// Why a row is not ok, under the table.
void print_messages(const std::vector<train::BenchRow>& rows) {
  bool first = true;
  for (const auto& r : rows) {
    if (r.message.empty()) continue;
    if (first) std::printf("\n");
    first = false;
    std::printf("%s: %s: %s\n", r.policy.c_str(), r.status.c_str(), r.message.c_str());
  }
}

// Flags, the header, the rows, the table and --json.
int run_bench_command(train::BenchOptions o, const FlagBindings& flags, const std::string& policies,
                      const std::string& json) {
  apply_given_flags(flags, o.run);
  o.policies = split_list(policies);
  std::vector<NamedPath> outputs = {{"--json", json}};
  if (!o.trace.empty())
    for (const auto& p : o.policies) outputs.push_back({"--trace", o.trace + "." + p + ".json"});
  check_outputs(outputs, model_inputs(o.run.model));
  o.host_budget = memory::host_budget(o.run.host_memory_gib);
  // Many ranks (torchrun, srun, WORLD_SIZE/RANK) or --sp: the mesh is checked
  // from the options alone, then the process groups come up; every rank runs
  // every row together, and only rank 0 prints and writes.
  std::unique_ptr<dist::Context> ranks;
  if (const auto launch = dist::launch_from_environment(); launch.distributed() || o.run.sp > 1) {
    o.run.validate();
    ranks = join_ranks(o.run, launch, cat(" policies=", policies, " bench_steps=", o.steps, " trace=", o.trace));
  }
  const bool root = !ranks || ranks->is_root();
  if (root) print_header(o, ranks.get());
  auto progress = [root](const std::string& line) {
    if (root) std::fprintf(stderr, "  %s\n", line.c_str());
  };
  auto rows = train::run_bench(o, progress, ranks.get());
  if (!root) return 0;
  print_table_head(o.planned_memory);
  nlohmann::json out;
  out["host_memory_budget_bytes"] = o.host_budget->bytes;
  out["host_memory_budget_source"] = o.host_budget->source;
  if (ranks)
    out["mesh"] = {{"world", ranks->world_size()},
                   {"dp", ranks->mesh().dp},
                   {"sp", ranks->mesh().sp},
                   {"zero", o.run.zero < 0 ? 3 : o.run.zero}};
  out["rows"] = nlohmann::json::array();
  for (const auto& r : rows) {
    print_row(r, o.planned_memory);
    out["rows"].push_back(row_json(r));
  }
  print_peak_splits(rows);
  print_short_host_splits(rows);
  if (ranks) print_comm(rows);
  print_messages(rows);
  if (!json.empty()) write_file_atomic(json, out.dump(2) + "\n");
  return 0;
}

}  // namespace

void add_bench_command(CLI::App& root, Action& action) {
  auto* app = root.add_subcommand(
      "bench",
      "Run the same model, shape and batch under each activation policy in one process and\n"
      "print step time, ratio to keep, MFU, peak device memory, host bytes, alpha and the\n"
      "largest relative gradient difference from keep. A policy that cannot run (its host pool\n"
      "does not fit, the device runs out of memory, any other failure) gets that status and a\n"
      "message in its row, and the others still run; only bad options exit 2. Started as many\n"
      "ranks (torchrun, srun, RANK/WORLD_SIZE; --sp, --zero as in train), each row is memo\n"
      "train's step on the mesh, with the bytes each rank moves per step by collective kind;\n"
      "rank 0 prints and writes.");
  auto o = std::make_shared<train::BenchOptions>();
  o->run = bench_run_defaults();
  // The run's options (the rows of train/option_table.cpp that bench takes), then the bench's own.
  auto flags = add_option_flags(app, train::kBench, o->run);
  auto policies = std::make_shared<std::string>("keep,recompute,offload,memo");
  auto json = std::make_shared<std::string>();
  app->add_option("--steps", o->steps, "Timed steps per policy (after one untimed)")->capture_default_str();
  app->add_option("--policies", *policies, "Comma-separated policies")->capture_default_str();
  app->add_option("--trace", o->trace, "Write PREFIX.POLICY.json Chrome traces of each policy's last step");
  app->add_option("--json", *json, "Write {\"rows\": [...]} to this file");
  app->add_flag("--planned-memory", o->planned_memory,
                "Serve the timed steps from a bi-level planned arena (CPU allocator, or the pluggable CUDA "
                "allocator in a MEMO_CUDA build); adds arena and fallback columns");
  strict_numbers(app);
  app->callback([&action, o, flags, policies, json] {
    action = [o, flags, policies, json]() -> int { return run_bench_command(*o, *flags, *policies, *json); };
  });
}

}  // namespace memo::cli
