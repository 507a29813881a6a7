// JSON helpers shared by the library and the CLI.
#pragma once

#include <nlohmann/json.hpp>

#include <optional>

namespace memo {

// The value, or null when it is absent.
template <typename T>
nlohmann::json json_or_null(const std::optional<T>& v) {
  return v ? nlohmann::json(*v) : nlohmann::json(nullptr);
}

}  // namespace memo
