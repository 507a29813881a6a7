// What memo's alpha LP (plan/swap_split.h) needs from the machine, measured
// once before training at the run's shape: the host link's speed each way,
// one layer's forward, backward and token-wise recompute time, and the
// device memory left over for resident tokens.
#pragma once

#include <cstdint>

namespace memo::model {
class LlamaModel;
}

namespace memo::runtime {

struct StartupTimes {
  double d2h_bytes_per_s = 0;
  double h2d_bytes_per_s = 0;
  double forward_s = 0;    // one layer's forward
  double backward_s = 0;   // one layer's backward (without recompute)
  double recompute_s = 0;  // one layer's token-wise recompute of every token
  double pre_attention_s = 0;  // one layer's input norm, QKV projection and RoPE (chunked memo's K, V rebuild)
};

// Times copies of min(256 MiB, `skeletal_set_bytes`) through host memory like
// the pool's (pinned on CUDA), and the model's first layer on random input
// of [batch, seq_len] (a few seconds at most). Each figure is the second of
// two runs. Draws its input from the global generator.
StartupTimes measure_startup_times(model::LlamaModel& model, int64_t batch, int64_t seq_len,
                                   double skeletal_set_bytes);

// Device memory for resident tokens, read now: after the model, its
// gradients and the optimizer state exist (the trainer creates the optimizer
// first) and after the measurement's blocks are given back; less
// `whole_sequence_bytes`, what chunked layers hold over every token (the
// hidden state, K, V and their accumulators), which a unit's figures leave
// out. Resident tokens and memo's device tier share it. 0 on CPU.
double measure_spare_device(const model::LlamaModel& model, int64_t batch, int64_t seq_len,
                            double skeletal_set_bytes, double whole_sequence_bytes = 0);

}  // namespace memo::runtime
