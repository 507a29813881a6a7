// HostSlots: the host pool's layout and views.
#include "runtime/host_slots.h"

#include "core/error.h"

namespace memo::runtime {

namespace {
int64_t align_up(int64_t v) { return (v + HostSlots::kAlign - 1) / HostSlots::kAlign * HostSlots::kAlign; }

int64_t bytes_of(const std::vector<int64_t>& shape, at::ScalarType dtype) {
  int64_t bytes = static_cast<int64_t>(c10::elementSize(dtype));
  for (auto d : shape) bytes *= d;
  return bytes;
}
}  // namespace

HostSlots::HostSlots(const std::vector<model::SkeletalSpec>& specs,
                     const std::map<Unit, std::vector<int64_t>>& host_tokens, c10::Device device,
                     double budget_bytes) {
  struct Place {
    int64_t offset;
    std::vector<int64_t> shape;
  };
  std::map<Unit, std::vector<Place>> places;
  int64_t offset = 0;
  for (const auto& [unit, tokens] : host_tokens) {
    if (tokens.size() != specs.size())
      throw Error(cat("host slots: unit ", to_string(unit), " gives ", tokens.size(), " token counts for ",
                      specs.size(), " skeletal tensors"));
    auto& unit_places = places[unit];
    for (size_t k = 0; k < specs.size(); ++k) {
      auto shape = specs[k].shape;
      shape[static_cast<size_t>(specs[k].token_dim)] = tokens[k];
      unit_places.push_back({offset, shape});
      offset += align_up(bytes_of(shape, specs[k].dtype));
    }
  }
  bytes_ = offset;
  try {
    pool_ = memory::HostPool(bytes_, device);
  } catch (const memory::HostMemoryError& e) {
    throw memory::HostMemoryError(e.what(), static_cast<double>(bytes_), budget_bytes);
  }
  const auto& pool = pool_.tensor();  // [mapped bytes] uint8
  for (const auto& [unit, unit_places] : places) {
    auto& views = views_[unit];
    for (size_t k = 0; k < unit_places.size(); ++k) {
      const auto& [off, shape] = unit_places[k];
      views.push_back(pool.narrow(0, off, bytes_of(shape, specs[k].dtype)).view(specs[k].dtype).view(shape));
    }
  }
}

const std::vector<at::Tensor>& HostSlots::views(Unit u) const {
  auto it = views_.find(u);
  if (it == views_.end()) throw Error(cat("host slots: unit ", to_string(u), " keeps nothing on the host"));
  return it->second;
}

}  // namespace memo::runtime
