// JSON helpers shared by the library and the CLI.
#pragma once

#include <nlohmann/json.hpp>

#include <optional>
#include <string>

#include "core/error.h"

namespace memo {

// Parses `text`; InputError "SOURCE: not valid JSON (...)" otherwise (the
// parser's out_of_range for numbers like 1e400 included).
inline nlohmann::json parse_json(const std::string& text, const std::string& source) {
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw InputError(cat(source, ": not valid JSON (", e.what(), ")"));
  }
}

// The value, or null when it is absent.
template <typename T>
nlohmann::json json_or_null(const std::optional<T>& v) {
  return v ? nlohmann::json(*v) : nlohmann::json(nullptr);
}

}  // namespace memo
