// `memo bench`: every activation policy on the same model, shape and batch,
// one table (and --json).
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <memory>
#include <sstream>

#include "cli/commands.h"
#include "cli/io_checks.h"
#include "cli/strict_numbers.h"
#include "core/files.h"
#include "core/json.h"
#include "core/units.h"
#include "memory/host_pool.h"
#include "model/config.h"
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

}  // namespace

void add_bench_command(CLI::App& root, Action& action) {
  auto* app = root.add_subcommand(
      "bench",
      "Run the same model, shape and batch under each activation policy in one process and\n"
      "print step time, ratio to keep, MFU, peak device memory, host bytes, alpha and the\n"
      "largest relative gradient difference from keep. A policy that cannot run (its host pool\n"
      "does not fit, the device runs out of memory, any other failure) gets that status and a\n"
      "message in its row, and the others still run; only bad options exit 2.");
  auto o = std::make_shared<train::BenchOptions>();
  o->run.model = "tiny";
  o->run.layers = 4;
  o->run.seq_len = 512;
  o->run.batch = 2;
  auto policies = std::make_shared<std::string>("keep,recompute,offload,memo");
  auto json = std::make_shared<std::string>();
  app->add_option("--model", o->run.model, "Preset or Hugging Face config.json")->capture_default_str();
  app->add_option("--layers", o->run.layers, "Layers (0 keeps the model's)")->capture_default_str();
  app->add_option("--seq-len", o->run.seq_len, "Tokens per sequence")->capture_default_str();
  app->add_option("--batch", o->run.batch, "Sequences per step")->capture_default_str();
  app->add_option("--steps", o->steps, "Timed steps per policy (after one untimed)")->capture_default_str();
  app->add_option("--policies", *policies, "Comma-separated policies")->capture_default_str();
  app->add_option("--alpha", o->run.alpha, "memo's offloaded fraction (negative: chosen by the LP)")
      ->capture_default_str();
  app->add_option("--host-memory-gib", o->run.host_memory_gib,
                  "Host memory offload's and memo's pools may use, in GiB (0: MemTotal x 0.75 minus what "
                  "processes hold, at least half of MemAvailable, within the cgroup's memory.max; the header "
                  "says which)")
      ->capture_default_str();
  app->add_option("--device", o->run.device, "auto, cpu or cuda")->capture_default_str();
  app->add_option("--dtype", o->run.dtype, "Compute dtype: auto, float32 or bfloat16")->capture_default_str();
  app->add_option("--attention", o->run.attention, "CUDA attention kernel: auto (cudnn for bfloat16, efficient for float32), cudnn, flash or efficient")
      ->capture_default_str();
  app->add_option("--seed", o->run.seed, "Seed for weights and the batch")->capture_default_str();
  app->add_option("--peak-tflops", o->run.peak_tflops, "Peak for MFU (0: 989 on CUDA)")->capture_default_str();
  app->add_option("--trace", o->trace, "Write PREFIX.POLICY.json Chrome traces of each policy's last step");
  app->add_option("--json", *json, "Write {\"rows\": [...]} to this file");
  auto skip_check = std::make_shared<bool>(false);
  app->add_flag("--no-memory-check", *skip_check,
                "Skip the fit check (by default a policy whose estimated memory exceeds the device's, on CPU "
                "host RAM, stops the bench before anything is allocated)");
  app->add_flag("--planned-memory", o->planned_memory,
                "Serve the timed steps from a bi-level planned arena (CPU allocator, or the pluggable CUDA "
                "allocator in a MEMO_CUDA build); adds arena and fallback columns");
  strict_numbers(app);

  app->callback([&action, o, policies, json, skip_check] {
    action = [o, policies, json, skip_check]() -> int {
      o->policies = split_list(*policies);
      std::vector<NamedPath> outputs = {{"--json", *json}};
      if (!o->trace.empty())
        for (const auto& p : o->policies) outputs.push_back({"--trace", o->trace + "." + p + ".json"});
      check_outputs(outputs, model_inputs(o->run.model));
      o->run.memory_check = !*skip_check;
      o->host_budget = memory::host_budget(o->run.host_memory_gib);
      std::printf("memo bench: %s, %lld layers, batch %lld x seq_len %lld\n", o->run.model.c_str(),
                  (long long)o->run.layers, (long long)o->run.batch, (long long)o->run.seq_len);
      std::printf("  threads %s\n", describe_cpu_threads().c_str());
      std::printf("  host memory for offload/memo pools: %s, from %s\n",
                  o->host_budget->bytes > 0 ? format_bytes(o->host_budget->bytes).c_str() : "no limit",
                  o->host_budget->source.c_str());
      std::fflush(stdout);
      auto rows = train::run_bench(*o, [](const std::string& line) {
        std::fprintf(stderr, "  %s\n", line.c_str());
      });
      std::printf("\n%-10s %-11s %10s %8s %7s %12s %12s %6s %12s %12s %8s %7s %14s %8s", "policy", "status", "step",
                  "vs keep", "MFU", "peak alloc", "peak resv", "frag", "host", "pinned", "pin", "alpha", "grad diff",
                  "mallocs");
      if (o->planned_memory) std::printf(" %12s %9s", "arena", "fallbacks");
      std::printf("\n");
      nlohmann::json out;
      out["host_memory_budget_bytes"] = o->host_budget->bytes;
      out["host_memory_budget_source"] = o->host_budget->source;
      out["rows"] = nlohmann::json::array();
      for (const auto& r : rows) {
        std::printf("%-10s %-11s %10s %8s %7s %12s %12s %6s %12s %12s %8s %7s %14s %8lld", r.policy.c_str(),
                    r.status.c_str(),
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
        if (o->planned_memory)
          std::printf(" %12s %9s", r.arena_bytes ? format_bytes(static_cast<double>(*r.arena_bytes)).c_str() : "-",
                      r.plan_fallbacks ? std::to_string(*r.plan_fallbacks).c_str() : "-");
        std::printf("\n");
        out["rows"].push_back({{"policy", r.policy},
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
                               {"loss", json_or_null(r.loss)},
                               {"max_grad_rel_diff", json_or_null(r.max_grad_rel_diff)},
                               {"arena_bytes", json_or_null(r.arena_bytes)},
                               {"plan_fallbacks", json_or_null(r.plan_fallbacks)},
                               {"fragmentation", r.fragmentation()},
                               {"device_mallocs_per_step", r.device_mallocs_per_step}});
      }
      // Why a row is not ok, under the table.
      bool first = true;
      for (const auto& r : rows) {
        if (r.message.empty()) continue;
        if (first) std::printf("\n");
        first = false;
        std::printf("%s: %s: %s\n", r.policy.c_str(), r.status.c_str(), r.message.c_str());
      }
      if (!json->empty()) write_file_atomic(*json, out.dump(2) + "\n");
      return 0;
    };
  });
}

}  // namespace memo::cli
