// --chunk-tokens: parsing, resolution (auto from plan/chunk_plan.h) and the
// whole-sequence tensors of the run header.
#include "train/chunking.h"

#include <algorithm>
#include <cctype>

#include "core/error.h"
#include "core/units.h"
#include "plan/chunk_plan.h"
#include "plan/hardware.h"
#include "plan/kv_on_host_plan.h"
#include "train/loss.h"

namespace memo::train {

namespace {

constexpr const char* kExpected =
    "expected a chunk of at least 1 token, 0 for whole layers (no chunks), or auto";

ChunkSetting parse_value(const std::string& value) {
  if (value == "auto") return {true, 0};
  bool digits = !value.empty() && value.size() <= 18;
  for (size_t i = 0; i < value.size() && digits; ++i)
    digits = std::isdigit(static_cast<unsigned char>(value[i])) || (i == 0 && value[i] == '-' && value.size() > 1);
  require_input(digits, "--chunk-tokens '", value, "': ", kExpected);
  const int64_t tokens = std::stoll(value);
  require_input(tokens >= 0, "--chunk-tokens ", tokens, ": ", kExpected);
  return {false, tokens};
}

}  // namespace

plan::PlanInputs chunk_plan_inputs(const ChunkContext& ctx) {
  plan::PlanInputs in;
  in.model = model::to_plan_shape(ctx.config);
  in.seq_len = ctx.seq_len * ctx.sp;  // the plan's sequence is the whole one; a GPU's shard is seq_len / sp
  in.batch = ctx.batch;
  in.parallel.sp = ctx.sp;
  in.parallel.dp = ctx.dp;
  in.zero = ctx.zero;
  in.compute_bytes = static_cast<int>(c10::elementSize(ctx.compute_dtype));
  in.master_bytes = 4;
  in.hardware = plan::hardware_preset("h200-141gb");
  in.hardware.name = ctx.device.str();
  in.hardware.device_bytes = ctx.device_bytes;
  in.hardware.gpus_per_host = ctx.sp * ctx.dp;
  // The host share is this rank's budget where memo's device tier and x-only
  // units can take up the rest (CUDA); elsewhere the tier does not run: no
  // host bound here (the auto chunk is the device's largest; a run on a
  // short budget still gets x-only units from the runtime's LP).
  in.hardware.host_bytes = !ctx.device.is_cpu() && ctx.host_budget_bytes > 0
                               ? ctx.host_budget_bytes * static_cast<double>(in.hardware.gpus_per_host)
                               : 1e30;
  if (ctx.device.is_cpu()) in.hardware.reserve_bytes = 64.0 * 1024 * 1024;  // no CUDA context
  const int64_t loss_chunk =
      default_loss_chunk(ctx.config.vocab_size, ctx.compute_dtype, default_loss_budget(ctx.device));
  in.loss_chunk_bytes = static_cast<double>(std::min(loss_chunk, ctx.batch * ctx.seq_len)) *
                        static_cast<double>(loss_bytes_per_token(ctx.config.vocab_size, ctx.compute_dtype));
  return in;
}

std::vector<ChunkSetting> parse_chunk_tokens(const std::string& text) {
  std::vector<ChunkSetting> out;
  size_t begin = 0;
  while (true) {
    const size_t comma = text.find(',', begin);
    out.push_back(parse_value(text.substr(begin, comma == std::string::npos ? std::string::npos : comma - begin)));
    if (comma == std::string::npos) break;
    begin = comma + 1;
  }
  return out;
}

ChunkSetting parse_one_chunk_setting(const std::string& text) {
  const auto all = parse_chunk_tokens(text);
  require_input(all.size() == 1, "--chunk-tokens '", text,
                "': train takes one chunk size (a list compares chunk sizes in `memo bench`)");
  return all.front();
}

int64_t resolve_chunk_tokens(const ChunkSetting& setting, const ChunkContext& ctx) {
  if (!setting.automatic && (setting.tokens == 0 || setting.tokens >= ctx.seq_len)) return 0;
  if (!setting.automatic) return setting.tokens;
  // auto: the largest chunk the memory model says fits; a unit of 1024
  // tokens, or an eighth of a short sequence.
  const auto in = chunk_plan_inputs(ctx);
  const int64_t unit = std::clamp<int64_t>(ctx.seq_len / 8, 1, 1024);
  const bool kv_on_host = ctx.kv_on_host && ctx.sp == 1;
  const int64_t chunk = kv_on_host ? plan::auto_chunk_tokens_kv_on_host(in, ctx.policy, unit)
                                   : plan::auto_chunk_tokens(in, ctx.policy, unit);
  require_input(chunk > 0, "--chunk-tokens auto: not even a chunk of ", unit, " tokens fits ",
                format_bytes(ctx.device_bytes), " of ", ctx.device.str(), " at batch ", ctx.batch, " x seq_len ",
                ctx.seq_len, (ctx.sp > 1 ? " per rank of --sp " + std::to_string(ctx.sp) : std::string()), " under ", ctx.policy,
                kv_on_host ? " with K, V on the host" : "",
                " (the memory model of docs/chunks.md)");
  return chunk >= ctx.seq_len ? 0 : chunk;
}

std::vector<WholeSequenceTensor> whole_sequence_tensors(const model::ModelConfig& c, c10::ScalarType compute,
                                                        int64_t sp, bool chunked, bool kv_on_host) {
  std::vector<WholeSequenceTensor> out;
  for (const auto& part : plan::layer_whole_sequence(model::to_plan_shape(c),
                                                     static_cast<int>(c10::elementSize(compute)), sp, chunked)) {
    // --kv-on-host: K, V and dK, dV live in host blocks (runtime/kv_stream.h).
    if (kv_on_host && (part.name == plan::whole_part::kLayerKv || part.name == plan::whole_part::kKvAccumulators))
      continue;
    out.push_back({part.name, static_cast<int64_t>(part.bytes_per_token)});
  }
  return out;
}

std::string describe_whole_sequence(const model::ModelConfig& c, c10::ScalarType compute, int64_t sp,
                                    bool kv_on_host) {
  std::string out;
  int64_t total = 0;
  for (const auto& t : whole_sequence_tensors(c, compute, sp, true, kv_on_host)) {
    out += (out.empty() ? "" : ", ") + t.name + " " + format_bytes(static_cast<double>(t.bytes_per_token));
    total += t.bytes_per_token;
  }
  return out + " = " + format_bytes(static_cast<double>(total)) +
         (sp > 1 ? " per token of a rank's shard" : " per token");
}

}  // namespace memo::train
