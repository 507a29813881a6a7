// safetensors reading (header validation over a read-only map) and writing.
#include "model/safetensors.h"

#include <fcntl.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <bit>
#include <cstring>

#include "core/error.h"
#include "core/files.h"

namespace memo::model {

static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes a little-endian host");

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

namespace {

constexpr uint64_t kMaxHeaderBytes = 100ull << 20;  // the reference implementation's limit

SafetensorsTensor parse_entry(const std::string& name, const nlohmann::json& e, uint64_t data_bytes,
                              const std::string& source) {
  const std::string where = cat(source, ": tensor \"", name, "\"");
  require_input(e.is_object(), where, ": header entry is not an object");
  SafetensorsTensor t;
  t.name = name;
  require_input(e.contains("dtype") && e.at("dtype").is_string(), where, ": missing or non-string dtype");
  t.dtype = e.at("dtype").get<std::string>();
  const int64_t esize = safetensors_dtype_size(t.dtype);
  require_input(esize > 0, where, ": dtype \"", t.dtype, "\" is not supported (F64, F32, F16, BF16, I64, I32)");
  require_input(e.contains("shape") && e.at("shape").is_array(), where, ": missing shape array");
  uint64_t numel = 1;
  for (const auto& d : e.at("shape")) {
    require_input(d.is_number_unsigned() || (d.is_number_integer() && d.get<int64_t>() >= 0), where,
                  ": shape entries must be non-negative integers");
    const uint64_t v = d.get<uint64_t>();
    require_input(v <= (1ull << 40), where, ": shape entry ", v, " is implausibly large");
    t.shape.push_back(static_cast<int64_t>(v));
    require_input(v == 0 || numel <= (1ull << 56) / v, where, ": shape ", "overflows");
    numel *= v;
  }
  require_input(e.contains("data_offsets") && e.at("data_offsets").is_array() &&
                    e.at("data_offsets").size() == 2,
                where, ": data_offsets must be [begin, end]");
  const auto& off = e.at("data_offsets");
  for (const auto& o : off)
    require_input(o.is_number_unsigned() || (o.is_number_integer() && o.get<int64_t>() >= 0), where,
                  ": data_offsets must be non-negative integers");
  const uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
  require_input(begin <= end, where, ": data_offsets [", begin, ", ", end, "] are reversed");
  require_input(end <= data_bytes, where, ": data_offsets [", begin, ", ", end,
                "] run past the end of the data (", data_bytes, " bytes; the file is truncated?)");
  require_input(end - begin == numel * static_cast<uint64_t>(esize), where, ": data_offsets span ",
                end - begin, " bytes but ", t.dtype, " ", shape_str(t.shape), " needs ",
                numel * static_cast<uint64_t>(esize));
  t.begin = begin;
  t.end = end;
  return t;
}

}  // namespace

int64_t safetensors_dtype_size(const std::string& d) {
  if (d == "F64" || d == "I64") return 8;
  if (d == "F32" || d == "I32") return 4;
  if (d == "F16" || d == "BF16") return 2;
  return 0;
}

int64_t SafetensorsTensor::numel() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

const SafetensorsTensor* SafetensorsHeader::find(const std::string& name) const {
  for (const auto& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

SafetensorsHeader parse_safetensors_header(const uint8_t* data, size_t size, uint64_t file_size,
                                           const std::string& source) {
  require_input(size >= 8 && file_size >= 8, source, ": too short for a safetensors file (",
                file_size, " bytes; needs an 8-byte header length)");
  uint64_t n = 0;
  std::memcpy(&n, data, 8);
  require_input(n <= kMaxHeaderBytes, source, ": header length ", n, " is larger than the 100 MiB limit");
  require_input(n <= file_size - 8, source, ": header length ", n, " runs past the end of the file (",
                file_size, " bytes)");
  require_input(8 + n <= size, source, ": header is not fully available");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(data + 8, data + 8 + n);
  } catch (const nlohmann::json::exception& e) {
    throw InputError(cat(source, ": safetensors header is not valid JSON (", e.what(), ")"));
  }
  require_input(j.is_object(), source, ": safetensors header is not a JSON object");
  SafetensorsHeader h;
  h.data_start = 8 + n;
  const uint64_t data_bytes = file_size - h.data_start;
  for (const auto& [name, e] : j.items()) {
    if (name == "__metadata__") {
      require_input(e.is_object(), source, ": __metadata__ is not an object");
      for (const auto& [k, v] : e.items()) {
        require_input(v.is_string(), source, ": __metadata__ value of \"", k, "\" is not a string");
        h.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    h.tensors.push_back(parse_entry(name, e, data_bytes, source));
  }
  std::sort(h.tensors.begin(), h.tensors.end(),
            [](const auto& a, const auto& b) { return a.begin != b.begin ? a.begin < b.begin : a.end < b.end; });
  const SafetensorsTensor* prev = nullptr;
  for (auto& t : h.tensors) {
    if (t.begin == t.end) continue;  // empty tensors occupy no bytes
    if (prev)
      require_input(t.begin >= prev->end, source, ": tensors \"", prev->name, "\" and \"", t.name,
                    "\" overlap (bytes [", prev->begin, ", ", prev->end, ") and [", t.begin, ", ", t.end, "))");
    prev = &t;
  }
  for (auto& t : h.tensors) {
    t.begin += h.data_start;
    t.end += h.data_start;
  }
  return h;
}

SafetensorsReader::SafetensorsReader(const std::string& path) : file_(path) {
  static const uint8_t kEmpty[8] = {};
  header_ = parse_safetensors_header(file_.data() ? file_.data() : kEmpty, file_.size(), file_.size(), path);
}

std::string safetensors_header_bytes(const std::vector<SafetensorsOutput>& tensors,
                                     const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  if (!metadata.empty()) j["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    j[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.bytes}}};
    offset += t.bytes;
  }
  std::string text = j.dump();
  while (text.size() % 8 != 0) text.push_back(' ');
  const uint64_t n = text.size();
  std::string out(8, '\0');
  std::memcpy(out.data(), &n, 8);
  return out + text;
}

void write_safetensors(const std::string& path, const std::vector<SafetensorsOutput>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  const std::string header = safetensors_header_bytes(tensors, metadata);
  // FileWriter: complete writes or an error classified by errno (a full disk
  // is a runtime Error), and the test-only fault hook (core/files.h).
  FileWriter out(path, O_CREAT | O_TRUNC, 0644);
  out.write(header.data(), header.size());
  for (const auto& t : tensors) out.write(t.data, t.bytes);
  out.sync();
  out.close();
}

}  // namespace memo::model
