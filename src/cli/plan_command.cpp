// `memo plan`: the cost model and capacity planner (plan/cost_model.h) from
// the command line: per-GPU memory, alpha, predicted step time and MFU of each
// activation policy, and the longest sequence each fits; a table on stdout
// and, with --json, the same figures in a file. --profile measures matmul and
// attention rates, the host link and device memory on the present device and
// plans with those instead of the preset's assumptions.
#include <ATen/ATen.h>
#include <CLI/CLI.hpp>
#include <c10/core/CachingDeviceAllocator.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <optional>

#include "cli/commands.h"
#include "cli/io_checks.h"
#include "cli/strict_numbers.h"
#include "core/error.h"
#include "core/files.h"
#include "core/json.h"
#include "core/units.h"
#include "memory/device_memory.h"
#include "model/attention.h"
#include "model/config.h"
#include "plan/chunk_plan.h"
#include "plan/kv_on_host_plan.h"
#include "plan/cost_model.h"

namespace memo::cli {

namespace {

struct PlanFlags {
  std::string model = "llama3-8b";
  int64_t layers = 0;
  int64_t seq_len = 131072;
  int64_t batch = 1;
  std::string policy = "best";
  std::string hardware = "h200-141gb";
  std::optional<double> device_gib, peak_tflops, h2d_gbps, d2h_gbps, host_gib;
  std::optional<int> gpus_per_host;
  std::optional<double> matmul_efficiency, attention_efficiency;
  std::optional<double> nvlink_gbps, ib_gbps, comm_latency_us;
  std::optional<int> zero;  // default: 3 when dp x sp > 1, else 0
  int64_t tp = 1, sp = 1, cp = 1, dp = 1;
  bool profile = false;
  std::string json;
  std::optional<std::string> chunk_tokens;  // "auto" or a token count (0: the whole sequence)
  bool kv_on_host = false;                  // with chunks: K, V on the host (plan/kv_on_host_plan.h)
};

// Mean seconds of fn() over a few runs after one warm-up, device synchronised.
template <typename Fn>
double time_it(const at::Device& device, Fn&& fn) {
  const int reps = device.is_cpu() ? 3 : 10;
  fn();
  memory::synchronize(device);
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) fn();
  memory::synchronize(device);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps;
}

// --profile: replaces the preset's efficiencies (and, on CUDA, device memory
// and link bandwidth) with figures measured here at the model's shapes. On
// CPU there is no nominal peak: the measured matmul rate becomes the peak.
std::string profile_hardware(const plan::PlanInputs& in, plan::Hardware& hw) {
  const bool cuda = memory::cuda_available();
  const at::Device device = cuda ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
  const auto dtype = cuda ? at::kBFloat16 : at::kFloat;
  const auto opts = at::TensorOptions().dtype(dtype).device(device);
  const auto& m = in.model;
  const int64_t g = std::max(in.parallel.tp, in.parallel.sp);
  const double target = cuda ? 2e13 : 5e9;  // FLOPs per timed call

  // A layer-shaped matmul: tokens x h times h x f/g (the gate/up projection's slice).
  const int64_t cols = std::max<int64_t>(1, m.ffn / g);
  int64_t tokens = static_cast<int64_t>(target / (2.0 * static_cast<double>(m.hidden * cols)));
  tokens = std::clamp<int64_t>(tokens / 64 * 64, 64, 65536);
  auto a = at::randn({tokens, m.hidden}, opts);
  auto w = at::randn({m.hidden, cols}, opts);
  const double mm_flops = 2.0 * static_cast<double>(tokens * m.hidden * cols);
  const double mm_rate = mm_flops / time_it(device, [&] { (void)at::mm(a, w); });
  a.reset();
  w.reset();

  // Causal fused attention forward + backward with this GPU's heads.
  const int64_t nh = std::max<int64_t>(1, m.heads / g), nkv = std::max<int64_t>(1, m.kv_heads / g);
  const double per_s2 = 3.5 * 2.0 * static_cast<double>(nh * m.head_dim);
  int64_t S = static_cast<int64_t>(std::sqrt(target / per_s2));
  S = std::clamp<int64_t>(S / 128 * 128, 128, cuda ? 32768 : 4096);
  auto kernel = model::pick_attention_kernel(device, dtype);
  auto q = at::randn({1, nh, S, m.head_dim}, opts);
  auto k = at::randn({1, nkv, S, m.head_dim}, opts);
  auto v = at::randn({1, nkv, S, m.head_dim}, opts);
  const double at_s = time_it(device, [&] {
    auto out = model::attention_forward(kernel, q, k, v);
    (void)model::attention_backward(kernel, out.o, q, k, v, out.o, out.lse);
  });
  const double at_rate = per_s2 * static_cast<double>(S) * static_cast<double>(S) / at_s;
  q.reset();
  k.reset();
  v.reset();

  std::string where = cuda ? "cuda:0" : "cpu";
  if (cuda) {
    auto [free_b, total_b] = c10::getDeviceAllocator(device.type())->getMemoryInfo(0);
    (void)free_b;
    hw.device_bytes = static_cast<double>(total_b);
    const int64_t bytes = 256ll << 20;
    auto dev = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).device(device));
    auto host = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
    hw.d2h_bytes_per_s = static_cast<double>(bytes) / time_it(device, [&] { host.copy_(dev); });
    hw.h2d_bytes_per_s = static_cast<double>(bytes) / time_it(device, [&] { dev.copy_(host); });
  } else {
    hw.peak_flops = mm_rate;  // no nominal peak on a CPU
  }
  hw.matmul_efficiency = std::min(1.0, mm_rate / hw.peak_flops);
  hw.attention_efficiency = std::min(1.0, at_rate / hw.peak_flops);
  hw.name += " (profiled)";
  return strf("measured on %s: matmul %lld x %lld x %lld %.4g TFLOP/s (%.0f%% of peak), causal attention "
              "%lld heads x %lld tokens fwd+bwd %.4g TFLOP/s (%.0f%%)%s",
              where.c_str(), (long long)tokens, (long long)m.hidden, (long long)cols, mm_rate / 1e12,
              100 * hw.matmul_efficiency, (long long)nh, (long long)S, at_rate / 1e12, 100 * hw.attention_efficiency,
              cuda ? strf(", link %.1f/%.1f GB/s, device %s", hw.h2d_bytes_per_s / 1e9, hw.d2h_bytes_per_s / 1e9,
                          format_bytes(hw.device_bytes).c_str()).c_str()
                   : "; on CPU the measured matmul rate is taken as the peak");
}

plan::PlanInputs to_inputs(const PlanFlags& f) {
  plan::PlanInputs in;
  in.model = model::to_plan_shape(model::resolve_model(f.model));
  if (f.layers != 0) {
    require_input(f.layers > 0, "--layers must be positive (0 keeps the model's), got ", f.layers);
    in.model.layers = f.layers;
  }
  in.seq_len = f.seq_len;
  in.batch = f.batch;
  in.policy = f.policy;
  in.hardware = plan::hardware_preset(f.hardware);
  auto& hw = in.hardware;
  in.parallel = {f.tp, f.sp, f.cp, f.dp};
  if (f.zero) {
    // -1 is PlanInputs' "default" internally, not a value a user may give.
    require_input(*f.zero >= 0 && *f.zero <= 3, "--zero must be 0, 1, 2 or 3, got ", *f.zero);
    in.zero = *f.zero;
  }
  if (f.profile) {
    plan::validate_plan_inputs(in);  // before spending time measuring
    std::printf("profile    %s\n", profile_hardware(in, hw).c_str());
  }
  // Explicit flags override both the preset and the profile.
  if (f.device_gib) hw.device_bytes = *f.device_gib * (1ull << 30);
  if (f.peak_tflops) hw.peak_flops = *f.peak_tflops * 1e12;
  if (f.h2d_gbps) hw.h2d_bytes_per_s = *f.h2d_gbps * 1e9;
  if (f.d2h_gbps) hw.d2h_bytes_per_s = *f.d2h_gbps * 1e9;
  if (f.host_gib) hw.host_bytes = *f.host_gib * (1ull << 30);
  if (f.gpus_per_host) hw.gpus_per_host = *f.gpus_per_host;
  if (f.matmul_efficiency) hw.matmul_efficiency = *f.matmul_efficiency;
  if (f.attention_efficiency) hw.attention_efficiency = *f.attention_efficiency;
  if (f.nvlink_gbps) hw.intra_host_bytes_per_s = *f.nvlink_gbps * 1e9;
  if (f.ib_gbps) hw.inter_host_bytes_per_s = *f.ib_gbps * 1e9;
  if (f.comm_latency_us) hw.collective_latency_s = *f.comm_latency_us * 1e-6;
  return in;
}

// --chunk-tokens C|auto, checked before anything is planned.
plan::ChunkPlanInputs to_chunk_inputs(const PlanFlags& f, const plan::PlanInputs& in) {
  plan::ChunkPlanInputs ci;
  ci.plan = in;
  const std::string& given = *f.chunk_tokens;
  if (given == "auto") {
    ci.auto_chunk = true;
  } else {
    std::string text = given;
    require_input(detail::check_integer<int64_t>(text).empty(), "--chunk-tokens '", given,
                  "': expected a number of tokens (0: the whole sequence) or auto");
    ci.chunk_tokens = std::stoll(text);
  }
  plan::validate_chunk_inputs(ci);
  return ci;
}

// The Ulysses all-to-alls of one step at a policy's chunk (docs/chunks.md;
// none without sp).
plan::CommPlan chunked_comm(const plan::ChunkPlan& cp, const plan::ChunkMemory& m) {
  return plan::chunked_comm_plan(cp.in.plan, m.policy, m.chunk_tokens, 0.0, 0.0);
}

nlohmann::json to_json(const plan::ChunkPlan& cp, bool kv_on_host) {
  nlohmann::json j;
  j["chunk_tokens"] = cp.in.auto_chunk ? nlohmann::json("auto") : nlohmann::json(cp.in.chunk_tokens);
  j["chunk_unit"] = cp.in.chunk_unit;
  j["policies"] = nlohmann::json::array();
  for (size_t i = 0; i < cp.policies.size(); ++i) {
    const auto& m = cp.policies[i];
    const auto& lc = cp.longest[i];
    nlohmann::json whole = nlohmann::json::object();
    for (const auto& part : m.whole_sequence) whole[part.name] = part.bytes;
    nlohmann::json host = nlohmann::json::object();
    for (const auto& part : m.host) host[part.name] = part.bytes;
    j["policies"].push_back({{"policy", m.policy},
                             {"chunk_tokens", m.chunk_tokens},
                             {"chunks", m.chunks},
                             {"static_bytes", m.static_bytes},
                             {"whole_sequence_bytes", m.whole_sequence_bytes},
                             {"whole_sequence_bytes_per_token", m.whole_sequence_bytes_per_token},
                             {"whole_sequence", whole},
                             {"chunk_buffer_bytes", m.chunk_buffer_bytes},
                             {"chunk_transient_bytes", m.chunk_transient_bytes},
                             {"reserve_bytes", m.reserve_bytes},
                             {"device_bytes", m.device_bytes},
                             {"host_bytes", m.host_bytes},
                             {"host", host},
                             {"fits_device", m.fits_device},
                             {"fits_host", m.fits_host},
                             {"longest_seq", lc.seq_len},
                             {"longest_chunk_tokens", lc.chunk_tokens},
                             {"longest_limited_by", lc.limited_by}});
    if (m.policy == "memo") {  // its device tier and x-only units (plan/chunk_plan.h)
      auto& row = j["policies"].back();
      row["fixed_on_device_bytes"] = m.fixed_on_device_bytes;
      row["attention_recomputed_units"] = m.attention_recomputed_units;
      row["attention_recomputed_bytes"] = m.attention_recomputed_bytes;
      row["attention_recompute_flops"] = m.attention_recompute_flops;
    }
    if (m.rebuild_flops > 0) {  // chunked memo: K and V rebuilt in backward
      j["policies"].back()["rebuild_h2d_bytes"] = m.rebuild_h2d_bytes;
      j["policies"].back()["rebuild_flops"] = m.rebuild_flops;
    }
    if (kv_on_host && m.chunks > 1) {
      const auto kv = plan::kv_on_host_cost(cp.in.plan, m);
      auto& row = j["policies"].back();
      row["kv_on_host"] = true;
      row["kv_staging_bytes"] = kv.staging_bytes;
      row["kv_host_bytes"] = kv.host_bytes;
      row["kv_link_to_host_bytes"] = kv.link_to_host_bytes;
      row["kv_link_to_device_bytes"] = kv.link_to_device_bytes;
      row["kv_link_s"] = kv.link_s;
      row["fits_with_kv_on_host"] = kv.fits;
    }
    if (cp.in.plan.parallel.sp > 1) {
      const auto comm = chunked_comm(cp, m);
      j["policies"].back()["all_to_all_bytes"] = comm.all_to_all_bytes;
      j["policies"].back()["all_to_all_calls"] = comm.all_to_all_calls;
    }
  }
  return j;
}

void print_chunk_plan(const plan::ChunkPlan& cp, bool kv_on_host) {
  std::printf("\nchunked execution (--chunk-tokens %s%s; docs/chunks.md's model)\n",
              cp.in.auto_chunk ? "auto" : std::to_string(cp.in.chunk_tokens).c_str(),
              cp.in.plan.parallel.sp > 1 ? ", chunks of each GPU's shard" : "");
  std::printf("%-10s %9s %7s %11s %11s %10s %11s %11s %11s %11s %5s %11s %14s\n", "policy", "chunk", "chunks",
              "static", "whole-seq", "per token", "buffers", "transients", "device", "host", "fits", "longest",
              "limited by");
  for (size_t i = 0; i < cp.policies.size(); ++i) {
    const auto& m = cp.policies[i];
    const auto& lc = cp.longest[i];
    std::printf("%-10s %9lld %7lld %11s %11s %10s %11s %11s %11s %11s %5s %11lld %14s\n", m.policy.c_str(),
                (long long)m.chunk_tokens, (long long)m.chunks, format_bytes(m.static_bytes).c_str(),
                format_bytes(m.whole_sequence_bytes).c_str(),
                format_bytes(m.whole_sequence_bytes_per_token).c_str(), format_bytes(m.chunk_buffer_bytes).c_str(),
                format_bytes(m.chunk_transient_bytes).c_str(), format_bytes(m.device_bytes).c_str(),
                format_bytes(m.host_bytes).c_str(), m.fits() ? "yes" : "no", (long long)lc.seq_len,
                lc.limited_by.c_str());
  }
  std::printf("  whole-sequence tensors per token:");
  for (const auto& part : cp.policies.back().whole_sequence)
    if (part.name.rfind("every", 0) != 0) std::printf(" %s %s;", part.name.c_str(), format_bytes(part.bytes_per_token).c_str());
  std::printf(" keep adds every layer's skeletal set, recompute every layer's input\n");
  for (const auto& m : cp.policies) {
    if (!m.host.empty()) {
      std::printf("  host per token, %s%s:", m.policy.c_str(), m.policy == "memo" ? " (its least, alpha 0)" : "");
      for (const auto& part : m.host) std::printf(" %s %s;", part.name.c_str(), format_bytes(part.bytes_per_token).c_str());
      std::printf("\n");
    }
    if (m.fixed_on_device_units > 0)
      std::printf("  device tier, %s: the host share is short of x, o and lse of every swapped unit; %lld units "
                  "hold theirs on the device (%s, in its device bytes)\n",
                  m.policy.c_str(), (long long)m.fixed_on_device_units, format_bytes(m.fixed_on_device_bytes).c_str());
    if (m.attention_recomputed_units > 0) {
      const auto& hw = cp.in.plan.hardware;
      const double rate = hw.peak_flops * hw.attention_efficiency;
      std::printf("  attention recompute, %s: what the device tier cannot take; %lld units keep only x on the host "
                  "(%s of o and lse not kept), their attention recomputed in backward, earliest chunks first: "
                  "per step %.3g PFLOP, %.2f%% of the step's attention FLOPs (%.3g s)\n",
                  m.policy.c_str(), (long long)m.attention_recomputed_units,
                  format_bytes(m.attention_recomputed_bytes).c_str(), m.attention_recompute_flops / 1e15,
                  100.0 * m.attention_recompute_flops / plan::step_attention_flops(cp.in.plan),
                  rate > 0 ? m.attention_recompute_flops / rate : 0.0);
    }
    if (m.rebuild_flops > 0) {
      const auto& hw = cp.in.plan.hardware;
      const double link_s = hw.h2d_bytes_per_s > 0 ? m.rebuild_h2d_bytes / hw.h2d_bytes_per_s : 0.0;
      const double rate = hw.peak_flops * hw.matmul_efficiency;
      std::printf("  K, V rebuild, %s: each layer's K and V rebuilt in its backward from its chunks' inputs, not kept "
                  "on the host; per step %s of inputs to the device again (%.3g s), %.3g TFLOP of QKV "
                  "projection (%.3g s)\n",
                  m.policy.c_str(), format_bytes(m.rebuild_h2d_bytes).c_str(), link_s, m.rebuild_flops / 1e12,
                  rate > 0 ? m.rebuild_flops / rate : 0.0);
    }
    if (!kv_on_host || m.chunks < 2) continue;
    const auto kv = plan::kv_on_host_cost(cp.in.plan, m);
    std::printf("  --kv-on-host %s: device %s (staging %s), host +%s, link %s to host, %s to device (%.3g s), "
                "fits %s\n",
                m.policy.c_str(), format_bytes(kv.device_bytes).c_str(), format_bytes(kv.staging_bytes).c_str(),
                format_bytes(kv.host_bytes).c_str(), format_bytes(kv.link_to_host_bytes).c_str(),
                format_bytes(kv.link_to_device_bytes).c_str(), kv.link_s, kv.fits ? "yes" : "no");
  }
  if (cp.in.plan.parallel.sp > 1) {
    std::printf("  all-to-alls per step at each policy's chunk:");
    for (const auto& m : cp.policies) {
      const auto comm = chunked_comm(cp, m);
      std::printf(" %s %s in %lld calls;", m.policy.c_str(), format_bytes(comm.all_to_all_bytes).c_str(),
                  (long long)comm.all_to_all_calls);
    }
    std::printf("\n");
  }
}

// Bytes one rank sends per step by kind, and their time.
nlohmann::json comm_json(const plan::CommPlan& c) {
  return {{"all_to_all_bytes", c.all_to_all_bytes},     {"all_gather_bytes", c.all_gather_bytes},
          {"reduce_scatter_bytes", c.reduce_scatter_bytes}, {"all_reduce_bytes", c.all_reduce_bytes},
          {"all_to_all_s", c.all_to_all_s},             {"zero_s", c.zero_s},
          {"exposed_s", c.exposed_s}};
}

nlohmann::json to_json(const plan::Plan& pl) {
  const auto& in = pl.in;
  nlohmann::json j;
  j["model"] = in.model.name;
  j["layers"] = in.model.layers;
  j["seq_len"] = in.seq_len;
  j["batch"] = in.batch;
  j["policy"] = in.policy;
  j["hardware"] = {{"name", in.hardware.name},
                   {"peak_flops", in.hardware.peak_flops},
                   {"device_bytes", in.hardware.device_bytes},
                   {"h2d_bytes_per_s", in.hardware.h2d_bytes_per_s},
                   {"d2h_bytes_per_s", in.hardware.d2h_bytes_per_s},
                   {"host_bytes", in.hardware.host_bytes},
                   {"gpus_per_host", in.hardware.gpus_per_host},
                   {"matmul_efficiency", in.hardware.matmul_efficiency},
                   {"attention_efficiency", in.hardware.attention_efficiency},
                   {"reserve_bytes", in.hardware.reserve_bytes},
                   {"intra_host_bytes_per_s", in.hardware.intra_host_bytes_per_s},
                   {"inter_host_bytes_per_s", in.hardware.inter_host_bytes_per_s},
                   {"collective_latency_s", in.hardware.collective_latency_s}};
  j["parallel"] = {{"tp", in.parallel.tp}, {"sp", in.parallel.sp}, {"cp", in.parallel.cp}, {"dp", in.parallel.dp}};
  j["zero"] = plan::zero_stage(in);
  j["weight_bytes"] = pl.weight_bytes;
  j["grad_bytes"] = pl.grad_bytes;
  j["optimizer_bytes"] = pl.optimizer_bytes;
  j["per_layer_skeletal_bytes"] = pl.per_layer_skeletal_bytes;
  nlohmann::json tensors = nlohmann::json::object();
  for (const auto& t : pl.skeletal) tensors[t.name] = t.bytes;
  j["skeletal_tensor_bytes"] = tensors;
  j["rounding_buffer_bytes"] = 2.0 * pl.per_layer_skeletal_bytes;
  j["transient_bytes"] = pl.transient_bytes;
  j["model_flops"] = pl.model_flops;
  j["layer_forward_s"] = pl.layer_forward_s;
  j["layer_backward_s"] = pl.layer_backward_s;
  j["chosen"] = pl.chosen_plan() ? nlohmann::json(pl.chosen_plan()->policy) : nlohmann::json(nullptr);
  j["verdict"] = pl.verdict;
  const auto* c = pl.chosen_plan();
  j["host_bytes"] = c ? c->host_bytes : 0.0;
  j["alpha"] = c ? json_or_null(c->alpha) : nlohmann::json(nullptr);
  j["alpha_per_layer"] = c ? nlohmann::json(c->alpha_per_layer) : nlohmann::json::array();
  j["step_s"] = c ? nlohmann::json(c->step_s) : nlohmann::json(nullptr);
  j["mfu"] = c ? nlohmann::json(c->mfu) : nlohmann::json(nullptr);
  j["comm"] = c ? comm_json(c->comm) : nlohmann::json(nullptr);
  j["max_seq"] = nlohmann::json::object();
  j["policies"] = nlohmann::json::array();
  for (const auto& p : pl.policies) {
    j["max_seq"][p.policy] = p.max_seq;
    j["policies"].push_back({{"policy", p.policy},
                             {"fits", p.fits},
                             {"why_not", p.why_not},
                             {"device_bytes", p.device_bytes},
                             {"activation_bytes", p.activation_bytes},
                             {"buffer_bytes", p.buffer_bytes},
                             {"resident_bytes", p.resident_bytes},
                             {"host_bytes", p.host_bytes},
                             {"alpha", json_or_null(p.alpha)},
                             {"resident", p.resident},
                             {"limited_by", p.limited_by},
                             {"matmul_s", p.matmul_s},
                             {"attention_s", p.attention_s},
                             {"recompute_s", p.recompute_s},
                             {"exposed_copy_s", p.exposed_copy_s},
                             {"comm", comm_json(p.comm)},
                             {"step_s", p.step_s},
                             {"mfu", p.mfu},
                             {"tokens_per_s", p.tokens_per_s},
                             {"max_seq", p.max_seq}});
  }
  return j;
}

void print_plan(const plan::Plan& pl) {
  const auto& in = pl.in;
  const auto& m = in.model;
  const auto& hw = in.hardware;
  const auto& p = in.parallel;
  std::printf("  model      %s: %lld layers, hidden %lld, heads %lld/%lld kv, head dim %lld, ffn %lld, vocab %lld, "
              "%s parameters\n",
              m.name.c_str(), (long long)m.layers, (long long)m.hidden, (long long)m.heads, (long long)m.kv_heads,
              (long long)m.head_dim, (long long)m.ffn, (long long)m.vocab,
              format_count(static_cast<double>(m.total_params())).c_str());
  std::printf("  shape      batch %lld x seq_len %lld per replica; tp %lld, sp %lld, cp %lld, dp %lld (%lld GPUs "
              "per replica)\n",
              (long long)in.batch, (long long)in.seq_len, (long long)p.tp, (long long)p.sp, (long long)p.cp,
              (long long)p.dp, (long long)p.replica_gpus());
  std::printf("  comm       ZeRO-%d over %lld ranks, Ulysses over %lld; links %.0f GB/s within a host, %.0f GB/s "
              "across, %.0f us per collective\n",
              plan::zero_stage(in), (long long)plan::zero_group(in), (long long)plan::ulysses_group(in),
              hw.intra_host_bytes_per_s / 1e9, hw.inter_host_bytes_per_s / 1e9, hw.collective_latency_s * 1e6);
  std::printf("  hardware   %s: %.4g TFLOP/s bf16 (matmul %.0f%%, attention %.0f%%), %s device, "
              "link %.0f/%.0f GB/s, host %s per %d GPUs (%s each)\n",
              hw.name.c_str(), hw.peak_flops / 1e12, 100 * hw.matmul_efficiency, 100 * hw.attention_efficiency,
              format_bytes(hw.device_bytes).c_str(), hw.h2d_bytes_per_s / 1e9, hw.d2h_bytes_per_s / 1e9,
              format_bytes(hw.host_bytes).c_str(), hw.gpus_per_host, format_bytes(hw.host_share()).c_str());
  std::printf("\nper GPU\n");
  std::printf("  weights    %s (bf16 copy + fp32 master)\n", format_bytes(pl.weight_bytes).c_str());
  std::printf("  gradients  %s (fp32)\n", format_bytes(pl.grad_bytes).c_str());
  std::printf("  optimizer  %s (2 x fp32, sharded per --zero)\n", format_bytes(pl.optimizer_bytes).c_str());
  std::printf("  skeletal   %s per layer:", format_bytes(pl.per_layer_skeletal_bytes).c_str());
  for (const auto& t : pl.skeletal) std::printf(" %s %s", t.name.c_str(), format_bytes(t.bytes).c_str());
  std::printf("\n  transient  %s (one layer's backward working set + loss chunk)\n",
              format_bytes(pl.transient_bytes).c_str());
  std::printf("  per layer  forward %s, backward %s, token-wise recompute %s\n",
              format_seconds(pl.layer_forward_s).c_str(), format_seconds(pl.layer_backward_s).c_str(),
              format_seconds(pl.layer_recompute_s).c_str());

  std::printf("\n%-10s %-5s %12s %12s %12s %7s %10s %10s %10s %10s %10s %10s %7s %10s %10s\n", "policy", "fits",
              "device", "activations", "host", "alpha", "matmul", "attention", "recompute", "copy", "comm", "step",
              "MFU", "tokens/s", "max seq");
  for (const auto& q : pl.policies) {
    std::printf("%-10s %-5s %12s %12s %12s %7s %10s %10s %10s %10s %10s %10s %7s %10s %10lld\n", q.policy.c_str(),
                q.fits ? "yes" : "no", format_bytes(q.device_bytes).c_str(),
                format_bytes(q.activation_bytes).c_str(), format_bytes(q.host_bytes).c_str(),
                q.alpha ? strf("%.3f", *q.alpha).c_str() : "-", format_seconds(q.matmul_s).c_str(),
                format_seconds(q.attention_s).c_str(), format_seconds(q.recompute_s).c_str(),
                format_seconds(q.exposed_copy_s).c_str(), format_seconds(q.comm.exposed_s).c_str(),
                format_seconds(q.step_s).c_str(),
                strf("%.1f%%", 100 * q.mfu).c_str(), format_count(q.tokens_per_s).c_str(), (long long)q.max_seq);
  }
  std::printf("\ncommunication per rank per step (comm above: its exposed time)\n");
  std::printf("%-10s %12s %12s %12s %12s %12s %12s\n", "policy", "all-to-all", "all-gather", "red-scatter",
              "all-reduce", "a2a time", "ZeRO time");
  for (const auto& q : pl.policies)
    std::printf("%-10s %12s %12s %12s %12s %12s %12s\n", q.policy.c_str(),
                format_bytes(q.comm.all_to_all_bytes).c_str(), format_bytes(q.comm.all_gather_bytes).c_str(),
                format_bytes(q.comm.reduce_scatter_bytes).c_str(), format_bytes(q.comm.all_reduce_bytes).c_str(),
                format_seconds(q.comm.all_to_all_s).c_str(), format_seconds(q.comm.zero_s).c_str());
  std::printf("\nverdict: %s\n", pl.verdict.c_str());
}

}  // namespace

void add_plan_command(CLI::App& root, Action& action) {
  auto* app = root.add_subcommand(
      "plan",
      "Predict, without running, each activation policy's per-GPU memory, host memory, memo's\n"
      "alpha, step time and MFU for a model, sequence length, hardware and parallel degrees,\n"
      "and the longest sequence each policy fits (docs/design.md section 6).");
  auto f = std::make_shared<PlanFlags>();
  app->add_option("--model", f->model, "Preset or Hugging Face config.json")->capture_default_str();
  app->add_option("--layers", f->layers, "Layers (0 keeps the model's)")->capture_default_str();
  app->add_option("--seq-len", f->seq_len, "Tokens per sequence")->capture_default_str();
  app->add_option("--batch", f->batch, "Sequences per micro-batch per replica")->capture_default_str();
  app->add_option("--policy", f->policy, "keep, recompute, offload, memo or best")->capture_default_str();
  app->add_option("--hardware", f->hardware, "a100-80gb, a800-80gb, h100-80gb or h200-141gb")
      ->capture_default_str();
  app->add_option("--device-gib", f->device_gib, "Override: device memory per GPU, GiB");
  app->add_option("--peak-tflops", f->peak_tflops, "Override: peak dense bf16 TFLOP/s per GPU");
  app->add_option("--h2d-gbps", f->h2d_gbps, "Override: host-to-device GB/s per GPU");
  app->add_option("--d2h-gbps", f->d2h_gbps, "Override: device-to-host GB/s per GPU");
  app->add_option("--host-gib", f->host_gib, "Override: host memory per host, GiB");
  app->add_option("--gpus-per-host", f->gpus_per_host, "Override: GPUs sharing one host's memory");
  app->add_option("--matmul-efficiency", f->matmul_efficiency, "Override: fraction of peak matmuls reach");
  app->add_option("--attention-efficiency", f->attention_efficiency,
                  "Override: fraction of peak causal attention reaches");
  app->add_option("--tp", f->tp, "Tensor parallel degree")->capture_default_str();
  app->add_option("--sp", f->sp, "Sequence parallel degree (1, = tp, or with tp 1)")->capture_default_str();
  app->add_option("--cp", f->cp, "Context parallel degree")->capture_default_str();
  app->add_option("--dp", f->dp, "Data parallel degree")->capture_default_str();
  app->add_option("--zero", f->zero, "ZeRO stage 0-3 for communication (default 3 when dp x sp > 1, else 0)");
  app->add_option("--nvlink-gbps", f->nvlink_gbps, "Override: intra-host link GB/s per GPU per direction");
  app->add_option("--ib-gbps", f->ib_gbps, "Override: inter-host link GB/s per GPU per direction");
  app->add_option("--comm-latency-us", f->comm_latency_us, "Override: fixed cost of one collective, microseconds");
  app->add_option("--json", f->json, "Write the plan as JSON to this file");
  app->add_option("--chunk-tokens", f->chunk_tokens,
                  "C|auto: also model token-chunked execution (issue 14) with chunks of C tokens (0: the\n"
                  "whole sequence; auto: the largest that fits): the device split, the chunk and the longest\n"
                  "context per policy");
  app->add_flag("--kv-on-host", f->kv_on_host,
                "With --chunk-tokens: also the device, host and link bytes of K and V on the host\n"
                "(docs/chunks.md, \"K and V on the host\")");
  app->add_flag("--profile", f->profile,
                "Measure matmul and attention rates (and on CUDA the host link and device memory) here\n"
                "and plan with them instead of the preset's figures");
  strict_numbers(app);

  app->callback([&action, f] {
    action = [f]() -> int {
      check_outputs({{"--json", f->json}}, model_inputs(f->model));
      std::printf("memo plan\n");
      const auto in = to_inputs(*f);
      std::optional<plan::ChunkPlanInputs> chunked;
      if (f->chunk_tokens) chunked = to_chunk_inputs(*f, in);  // bad values before any output
      require_input(!f->kv_on_host || chunked, "--kv-on-host models K and V of chunked layers: it needs --chunk-tokens");
      require_input(!f->kv_on_host || f->sp == 1, "--kv-on-host is not built for sequence parallelism: it needs --sp 1, "
                    "got --sp ", f->sp);
      auto plan = plan::make_plan(in);
      print_plan(plan);
      auto j = to_json(plan);
      if (chunked) {
        const auto cp = plan::make_chunk_plan(*chunked);
        print_chunk_plan(cp, f->kv_on_host);
        j["chunked"] = to_json(cp, f->kv_on_host);
      }
      if (!f->json.empty()) write_file_atomic(f->json, j.dump(2) + "\n");
      return 0;
    };
  });
}

}  // namespace memo::cli
