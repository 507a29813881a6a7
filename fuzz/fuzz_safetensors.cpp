// libFuzzer target: the safetensors header parser (model/safetensors.cpp) on
// arbitrary bytes. Every input must either parse into tensors whose byte
// ranges lie inside the input, or throw memo::InputError; anything else
// (a crash, a sanitizer report, another exception) is a finding.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "core/error.h"
#include "model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto h = memo::model::parse_safetensors_header(data, size, size, "fuzz.safetensors");
    uint64_t prev_end = h.data_start;
    unsigned sum = 0;
    for (const auto& t : h.tensors) {
      if (t.begin < h.data_start || t.end > size || t.begin > t.end) std::abort();
      if (t.begin != t.end && t.begin < prev_end) std::abort();  // overlap slipped through
      if (t.begin != t.end) prev_end = t.end;
      for (uint64_t i = t.begin; i < t.end; ++i) sum += data[i];  // ASan checks the range
    }
    (void)sum;
  } catch (const memo::InputError&) {
  }
  return 0;
}
