// MemoryPlanning: profile, plan, cache and arm the planned allocator.
#include "train/memory_planning.h"

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "core/error.h"
#include "core/files.h"
#include "core/units.h"
#include "memory/device_memory.h"
#include "memory/planned_allocator.h"
#include "train/option_table.h"

namespace memo::train {

namespace {

// 2: requests off the compute stream are left to the fallback; 3: placements
// carry their lifetimes, so a cached plan is validated before it is armed.
constexpr int kPlanFormat = 3;

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

}  // namespace

MemoryPlanning::MemoryPlanning(MemoryPlanningOptions options) : options_(std::move(options)) {
  options_.key["memo_plan_format"] = kPlanFormat;
  options_.key["torch"] = MEMO_TORCH_VERSION;
  if (enabled()) memory::PlannedAllocator::install(options_.device);
}

std::string MemoryPlanning::cache_file() const {
  if (options_.cache_dir.empty()) return {};
  return options_.cache_dir + "/plan-" + strf("%016llx", (unsigned long long)fnv1a(options_.key.dump())) + ".json";
}

bool MemoryPlanning::load_cache() {
  const auto path = cache_file();
  if (path.empty() || !std::filesystem::exists(path)) return false;
  // A file on disk is input like any other: anything unreadable, edited or
  // unsafe is rejected (with the reason in the report) and planned afresh.
  plan::BilevelPlan p;
  int64_t level1_plans = 0;
  try {
    std::ifstream in(path);
    const auto j = nlohmann::json::parse(in);
    if (!j.is_object()) throw InputError("not a JSON object");
    if (j.value("key", nlohmann::json()) != options_.key) return false;  // another run's plan (a hash collision)
    p.arena_bytes = j.at("arena_bytes").get<int64_t>();
    p.flat_load = j.at("flat_load").get<int64_t>();
    level1_plans = j.at("level1_plans").get<int64_t>();
    if (level1_plans < 0) throw InputError(cat("level1_plans is negative (", level1_plans, ")"));
    for (const auto& e : j.at("placements")) {
      if (!e.is_array() || e.size() != 5) throw InputError("a placement is not [kind, bytes, offset, alloc, free]");
      for (const auto& x : e)
        if (!x.is_number_integer()) throw InputError(cat("placement ", e.dump(), " holds a non-integer"));
      const int64_t kind = e[0].get<int64_t>();
      if (kind != 0 && kind != 1) throw InputError(cat("placement kind ", kind, " is neither 0 nor 1"));
      plan::Placement pl;
      pl.kind = kind ? plan::Placement::Kind::Arena : plan::Placement::Kind::Fallback;
      pl.bytes = e[1].get<int64_t>();
      pl.offset = e[2].get<int64_t>();
      pl.alloc_time = e[3].get<int64_t>();
      pl.free_time = e[4].get<int64_t>();
      p.placements.push_back(pl);
    }
    const auto problem = plan::validate_plan(p, memory::PlannedAllocator::instance()->alignment());
    if (!problem.empty()) throw InputError(problem);
  } catch (const std::exception& e) {  // nlohmann's parse and type errors included
    report_.cache_rejected = cat(path, ": ", e.what());
    return false;
  }
  report_.source = "cache";
  report_.cache_file = path;
  report_.arena_bytes = p.arena_bytes;
  report_.flat_load = p.flat_load;
  report_.level1_plans = level1_plans;
  plan_ = std::move(p);
  return true;
}

void MemoryPlanning::save_cache(const plan::BilevelPlan& p) const {
  const auto path = cache_file();
  if (path.empty()) return;
  nlohmann::json j;
  j["key"] = options_.key;
  j["arena_bytes"] = p.arena_bytes;
  j["flat_load"] = p.flat_load;
  j["level1_plans"] = p.level1.size();
  auto& pls = j["placements"] = nlohmann::json::array();
  for (const auto& pl : p.placements)
    pls.push_back({pl.kind == plan::Placement::Kind::Arena ? 1 : 0, pl.bytes, pl.offset, pl.alloc_time, pl.free_time});
  write_file_atomic(path, j.dump() + "\n");
}

void MemoryPlanning::before_step(int64_t step) {
  if (!enabled()) return;
  auto& a = *memory::PlannedAllocator::instance();
  if (step == 1 && options_.planned && load_cache() && options_.timeline_path.empty()) {
    a.arm(*plan_);
    report_.active = true;
  }
  if (step == 1 && !report_.active) {
    a.start_recording();
    recording_ = true;
  }
  a.reset_counters();
  const auto m = memory::memory_stats(options_.device);
  mallocs_before_ = m.device_mallocs;
  frees_before_ = m.device_frees;
  a.begin_step();
}

void MemoryPlanning::after_step(int64_t step) {
  if (!enabled()) return;
  auto& a = *memory::PlannedAllocator::instance();
  a.end_step();
  const auto s = a.stats();
  if (report_.active) {
    report_.fallbacks += s.fallback;
    report_.first_fallback_request = s.first_fallback_request;
    report_.first_fallback_bytes = s.first_fallback_bytes;
    report_.planned_requests = s.planned;
    report_.arena_unused_bytes = std::max<int64_t>(0, a.arena_bytes() - s.peak_live_planned_bytes);
  }
  report_.base_allocs_last_step = s.base_allocs;
  report_.base_frees_last_step = s.base_frees;
  const auto m = memory::memory_stats(options_.device);
  report_.device_mallocs_last_step = m.device_mallocs - mallocs_before_;
  report_.device_frees_last_step = m.device_frees - frees_before_;
  report_.peak_reserved_bytes = m.peak_reserved;
  report_.peak_allocated_bytes = m.peak_allocated;
  if (!recording_) return;
  recording_ = false;
  auto trace = a.stop_recording();
  auto p = plan_profiled_step(trace, a.alignment());
  // memo's own plans pass the same validator as cached ones; a failure is a planner bug.
  if (const auto problem = plan::validate_plan(p, a.alignment()); !problem.empty())
    throw Error("memory plan of the profiled step is invalid (a bug in the planner): " + problem);
  if (!options_.export_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(options_.export_dir, ec);
    if (ec) throw_file_error("create directory", options_.export_dir, ec.value());
    for (size_t g = 0; g < p.level1.size(); ++g)
      write_file_atomic(options_.export_dir + "/level1-" + std::to_string(g) + "-" + p.level1[g].region + ".csv",
                        plan::to_csv(p.level1[g].problem, p.level1[g].offsets));
    write_file_atomic(options_.export_dir + "/level2.csv", plan::to_csv(p.level2, p.level2_offsets));
  }
  if (!options_.timeline_path.empty())
    write_file_atomic(options_.timeline_path, memory_timeline_html(trace, options_.planned ? p.arena_bytes : 0));
  if (options_.planned) {
    save_cache(p);
    report_.source = "profiled";
    report_.cache_file = cache_file();
    report_.arena_bytes = p.arena_bytes;
    report_.flat_load = p.flat_load;
    report_.level1_plans = static_cast<int64_t>(p.level1.size());
    a.arm(p);
    report_.active = true;
    plan_ = std::move(p);
  }
}

nlohmann::json plan_cache_key(const TrainOptions& options, const model::ModelConfig& model,
                              const std::string& device, const std::string& compute_dtype) {
  ResolvedRun run;
  run.model = model;
  run.device = device;
  run.compute_dtype = compute_dtype;
  return plan_cache_key(options, run);
}

plan::BilevelPlan plan_profiled_step(const plan::RequestTrace& trace, int64_t alignment) {
  plan::SolveOptions so;
  so.time_limit_s = 60.0;
  so.node_limit = 300;  // greedy runs per solve: deterministic, and best-fit is usually within 2% of LOAD
  return plan::plan_bilevel(trace, alignment, so);
}

nlohmann::json to_json(const MemoryPlanReport& r) {
  return {{"active", r.active},
          {"source", r.source},
          {"arena_bytes", r.arena_bytes},
          {"load_bytes", r.flat_load},
          {"arena_over_load", r.flat_load > 0 ? static_cast<double>(r.arena_bytes) / static_cast<double>(r.flat_load) : 0.0},
          {"level1_plans", r.level1_plans},
          {"planned_requests_per_step", r.planned_requests},
          {"fallbacks", r.fallbacks},
          {"first_fallback", {{"request", r.first_fallback_request}, {"bytes", r.first_fallback_bytes}}},
          {"fallback_allocs_last_step", r.base_allocs_last_step},
          {"fallback_frees_last_step", r.base_frees_last_step},
          {"device_mallocs_last_step", r.device_mallocs_last_step},
          {"device_frees_last_step", r.device_frees_last_step},
          {"arena_unused_at_peak_bytes", r.arena_unused_bytes},
          {"peak_reserved_bytes_last_step", r.peak_reserved_bytes},
          {"peak_allocated_bytes_last_step", r.peak_allocated_bytes},
          {"cache_file", r.cache_file},
          {"cache_rejected", r.cache_rejected}};
}

std::string memory_timeline_html(const plan::RequestTrace& trace, int64_t arena_bytes) {
  // Live bytes after every event.
  std::map<int64_t, int64_t> delta;
  for (const auto& r : trace.requests) {
    delta[r.alloc_time] += r.bytes;
    if (r.free_time >= 0) delta[r.free_time] -= r.bytes;
  }
  std::vector<std::pair<int64_t, int64_t>> points;
  int64_t live = 0, peak = 0;
  for (const auto& [t, d] : delta) {
    live += d;
    peak = std::max(peak, live);
    points.push_back({t, live});
  }
  const double W = 1100, H = 380, L = 80, T = 30;
  const double tmax = static_cast<double>(std::max<int64_t>(trace.end_time, 1));
  const double ymax = static_cast<double>(std::max({peak, arena_bytes, int64_t{1}})) * 1.08;
  auto X = [&](double t) { return L + t / tmax * (W - L - 20); };
  auto Y = [&](double b) { return T + H - b / ymax * H; };
  std::ostringstream svg;
  svg << "<svg xmlns='http://www.w3.org/2000/svg' width='" << W << "' height='" << H + T + 60 << "'>";
  std::map<std::string, std::string> colour = {{"layer_fwd", "#dbeafe"}, {"layer_bwd", "#fde68a"},
                                               {"loss", "#fecaca"}, {"embed", "#d1fae5"}};
  for (const auto& r : trace.regions) {
    auto c = colour.count(r.name) ? colour[r.name] : "#e5e7eb";
    svg << "<rect x='" << X(r.begin_time) << "' y='" << T << "' width='" << std::max(0.5, X(r.end_time) - X(r.begin_time))
        << "' height='" << H << "' fill='" << c << "'><title>" << r.name << "</title></rect>";
  }
  svg << "<polyline fill='none' stroke='#1d4ed8' stroke-width='1.5' points='";
  int64_t prev = 0;
  for (const auto& [t, b] : points) {
    svg << X(t) << "," << Y(prev) << " " << X(t) << "," << Y(b) << " ";
    prev = b;
  }
  svg << "'/>";
  if (arena_bytes > 0)
    svg << "<line x1='" << L << "' x2='" << W - 20 << "' y1='" << Y(arena_bytes) << "' y2='" << Y(arena_bytes)
        << "' stroke='#dc2626' stroke-dasharray='6,4'/><text x='" << L + 4 << "' y='" << Y(arena_bytes) - 4
        << "' font-size='12' fill='#dc2626'>reserved: arena " << format_bytes(arena_bytes) << "</text>";
  svg << "<text x='" << L + 4 << "' y='" << Y(peak) - 4 << "' font-size='12' fill='#1d4ed8'>allocated, peak "
      << format_bytes(peak) << "</text>";
  svg << "<line x1='" << L << "' x2='" << L << "' y1='" << T << "' y2='" << T + H << "' stroke='black'/>";
  svg << "<line x1='" << L << "' x2='" << W - 20 << "' y1='" << T + H << "' y2='" << T + H << "' stroke='black'/>";
  svg << "<text x='" << L << "' y='" << T + H + 20 << "' font-size='12'>allocation events of one step ("
      << trace.requests.size() << " requests); shaded: embed (green), layer forward (blue), loss (red), "
         "layer backward (yellow)</text>";
  svg << "<text x='4' y='" << T + 12 << "' font-size='12'>" << format_bytes(ymax) << "</text></svg>";
  return "<!doctype html><html><head><meta charset='utf-8'><title>memo memory timeline</title></head>"
         "<body style='font-family:sans-serif'><h3>memo: memory over one training step</h3>" +
         svg.str() + "</body></html>\n";
}

}  // namespace memo::train
