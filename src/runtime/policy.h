// Activation policies: what each layer keeps between its forward and its
// backward, and where (docs/design.md section 5). The per-layer program (train/layer_program.*)
// asks the policy, never decides itself, so `offload` and `memo` plug in here
// without touching the trainer.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "model/layer.h"
#include "runtime/split_report.h"
#include "runtime/unit.h"

namespace memo::model {
class LlamaModel;
}

namespace memo::runtime {

class TraceRecorder;
class StageExchange;
class KvStream;

// Options of the swapping policies; ignored by keep and recompute.
struct PolicyOptions {
  std::optional<double> alpha;     // offloaded fraction; unset: chosen by the LP
  double host_memory_bytes = 0;    // host memory the pool may use; 0: memory::host_budget's default
  double device_spare_bytes = -1;  // device memory for resident tokens; < 0: measured
  TraceRecorder* trace = nullptr;  // spans of copies and recompute, when tracing
  // Tokens per chunk of a layer (docs/chunks.md); 0: whole layers. The
  // program runs chunks only when this is below the sequence; the policy
  // sizes its units by it.
  int64_t chunk_tokens = 0;
  // Many ranks: the alpha every rank uses, from this rank's choice (the
  // minimum over the ranks), so every rank swaps and recomputes alike.
  // Empty: this rank's own choice.
  std::function<double(double)> agree_alpha;
  // Chunked layers: K and V (and dK, dV) in host blocks streamed to the
  // device block by block (runtime/kv_stream.h, `--kv-on-host`), not as
  // whole-sequence tensors on the device.
  bool kv_on_host = false;
  // memo, host and device short: units may keep only x, their attention
  // recomputed in backward (plan/swap_split.h); false: never (the host must
  // then hold x, o, lse of every unit the device tier does not).
  bool attention_recompute = true;
  // Many ranks: how many units keep only x on every rank, from this rank's
  // count (the most over the ranks), so that every rank recomputes the same
  // units' attention (under sequence parallelism, with their all-to-alls in
  // step). Empty: this rank's own count.
  std::function<int64_t(int64_t)> agree_units;
};

// What a policy needs to rebuild a layer's skeletal set in backward.
struct LayerContext {
  const model::DecoderLayer& layer;
  const model::LayerWeights& weights;  // compute dtype
  const model::RopeTable& rope;        // rows for the step's sequence (from its first local token)
  // Chunked layers only (docs/chunks.md): the layer's K and V [B, S, 2 nkv d]
  // (restore_kv's result; undefined when restoring K and V themselves or
  // unchunked), the unit's first token and the chunk size.
  at::Tensor kv;
  int64_t t0 = 0;
  int64_t chunk_tokens = 0;
  // Attention's way to the whole sequence and back (Ulysses under sp > 1),
  // for a policy that recomputes attention; null: the layer's own, local.
  StageExchange* exchange = nullptr;
  // Chunked layers under sequence parallelism: K and V of every rank in head
  // layout [B, sp S, 2 nkv_local d] (runtime/chunk_exchange.h), for a policy
  // that recomputes a chunk's attention; undefined otherwise.
  at::Tensor kv_heads;
  // `--kv-on-host`: the layer's K and V in host blocks (ActivationPolicy::
  // kv_stream()); kv is undefined then.
  KvStream* kv_stream = nullptr;
  // Chunked layers: whether the forward ran each chunk's pre-attention (the
  // norm, QKV projection and RoPE whose k, v K and V hold) in the storage
  // forward_storage gave (one device), not in fresh tensors (under sp, its
  // first pass). A policy that rebuilds K, V lays its tensors out alike, so
  // that the kernels, and the bits, are the forward's.
  bool pre_attention_in_storage = false;
};

// Shape of the step about to run.
struct StepShape {
  int64_t layers = 0;
  int64_t batch = 0;
  int64_t seq_len = 0;
};

// Bytes a policy holds for backward, by place.
struct HeldBytes {
  int64_t device = 0;
  int64_t host = 0;
};

// Host memory a policy pinned for its pool in prepare, and how long that
// took (pinning is slow: 16 GiB took 6.3 s on the H200 host). 0 on CPU.
struct HostPinning {
  int64_t bytes = 0;
  double seconds = 0;
};

class ActivationPolicy {
 public:
  virtual ~ActivationPolicy() = default;
  virtual std::string name() const = 0;

  // Once before training at a (batch, seq_len), after the model and the
  // optimizer state exist: allocate buffers and host pools, measure, choose
  // splits. Throws InputError when the run cannot fit (the host pool:
  // memory::HostMemoryError), before the first step.
  virtual void prepare(model::LlamaModel& model, int64_t batch, int64_t seq_len) {}
  // Lines describing the choices made in prepare (split, pool sizes...).
  virtual std::vector<std::pair<std::string, std::string>> describe() const { return {}; }
  // The offloaded fraction of the swappable tokens, for policies that swap.
  virtual std::optional<double> alpha() const { return std::nullopt; }
  // The split prepare chose, by units (offload, memo); none for the others.
  virtual std::optional<SplitReport> split_report() const { return std::nullopt; }
  // What prepare pinned, for policies with a host pool.
  virtual HostPinning host_pinning() const { return {}; }
  // Device bytes of the rounding buffers prepare allocated (offload, memo: two
  // units' skeletal sets; 0 for the others).
  virtual int64_t buffer_bytes() const { return 0; }

  // Before layer 0's forward of a micro-batch. Overrides call this first.
  virtual void begin_step(const StepShape& shape) { peak_ = {}; }
  // A unit is a layer (chunk 0) or, with chunked layers, one token chunk
  // of a layer (runtime/unit.h); units run forward in order and backward in
  // reverse order.
  // Preallocated storage unit `u`'s forward must write into (a rounding
  // buffer), or nullptr to let it allocate.
  virtual const model::LayerActivations* forward_storage(Unit u) { return nullptr; }
  // Unit `u` has run forward and produced `acts`, its full skeletal set;
  // keep whatever backward will need.
  virtual void save(Unit u, model::LayerActivations&& acts) = 0;
  // Unit `u` is about to run backward: return its full skeletal set,
  // restored from where it was kept and/or recomputed (chunked: against
  // ctx.kv).
  virtual model::LayerActivations restore(Unit u, const LayerContext& ctx) = 0;
  // Chunked layers: after every chunk of layer `layer` ran forward, its K and
  // V [B, S, 2 nkv d] (backward of each chunk needs the keys of its whole
  // prefix); before the layer's backward (ahead of its chunks' restore), the
  // same K and V back. A policy that does not run chunked layers throws.
  virtual void save_kv(int64_t layer, at::Tensor kv);
  virtual at::Tensor restore_kv(int64_t layer, const LayerContext& ctx);
  // `--kv-on-host` (PolicyOptions::kv_on_host): the policy's KvStream, which
  // the chunk program writes each chunk's K, V into in forward and streams
  // from in backward; null otherwise (K and V go through save_kv,
  // restore_kv). After a layer's forward, kv_forward_done: the stream keeps
  // the layer's blocks (keep, offload) or drops them (recompute, memo); before
  // its backward, restore_kv_on_host makes sure the blocks hold them again
  // (recompute and memo rebuild them, runtime/kv_rebuild.h).
  KvStream* kv_stream() const { return kv_stream_.get(); }
  void enable_kv_on_host();
  virtual void kv_forward_done(int64_t layer) {}
  virtual void restore_kv_on_host(int64_t layer, const LayerContext& ctx);
  // Chunked memo: bytes its K, V rebuilds have copied to the device since
  // prepare (each swapped chunk's input once more per step); 0 otherwise.
  virtual int64_t rebuild_h2d_bytes() const { return 0; }
  // After the last layer's forward, before the loss: what the policy still
  // holds of forward's whole-sequence tensors beyond what it needs can go.
  virtual void forward_done() {}
  // After the last layer's backward.
  virtual void end_step() {}

  // What is held now, and the most held at once since begin_step.
  virtual HeldBytes held() const = 0;
  HeldBytes peak_held() const { return peak_; }

 protected:
  void note_held() {
    HeldBytes h = held();
    peak_.device = std::max(peak_.device, h.device);
    peak_.host = std::max(peak_.host, h.host);
  }
  HeldBytes peak_;
  std::shared_ptr<KvStream> kv_stream_;  // shared_ptr: KvStream is incomplete here
};

// Names accepted by make_policy, in display order.
std::vector<std::string> policy_names();

// A policy by name; throws InputError naming the known ones.
std::unique_ptr<ActivationPolicy> make_policy(const std::string& name,
                                              const PolicyOptions& options = {});
// The swapping policies (swap_policy.cpp), both over the activation store
// (activation_store.h). offload: every layer, every token to the host.
std::unique_ptr<ActivationPolicy> make_offload_policy(const PolicyOptions& options);
// memo: x, o, lse to the host; of the other tensors the share the alpha LP
// chooses (or options.alpha), the rest recomputed token-wise; the last two
// layers stay in their rounding buffers.
std::unique_ptr<ActivationPolicy> make_memo_policy(const PolicyOptions& options);

}  // namespace memo::runtime
