// libFuzzer target: the Hugging Face config.json parser
// (model::parse_hf_config) on arbitrary text. Every input must either give a
// validated ModelConfig or throw memo::InputError.
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/error.h"
#include "model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto c = memo::model::parse_hf_config(std::string(reinterpret_cast<const char*>(data), size), "fuzz.json");
    c.validate("fuzz.json");
  } catch (const memo::InputError&) {
  }
  return 0;
}
