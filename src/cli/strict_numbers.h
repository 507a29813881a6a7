// Strict parsing of every numeric option of a subcommand. CLI11 2.1 converts
// integers with strtoll/strtoull in base 0 and does not check errno, so by
// itself it reads "010" as 8, "0x10" as 16, "-1" as 2^64 - 1 for unsigned
// options, saturates "99999999999999999999" to the largest value, and takes
// "inf", "nan" and "1e400" (infinity) as floating-point values. Each numeric
// option gets a check that runs on the text first: integers are read as
// decimal (leading zeros dropped), everything else above is refused with a
// message naming the option (CLI11 prefixes it): exit 2.
#pragma once

#include <CLI/CLI.hpp>

#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <limits>
#include <string>

namespace memo::cli {

namespace detail {

inline bool all_digits(const std::string& s, size_t from) {
  if (from >= s.size()) return false;
  for (size_t i = from; i < s.size(); ++i)
    if (!std::isdigit(static_cast<unsigned char>(s[i]))) return false;
  return true;
}

// "" when `text` is a decimal integer that fits T, else why not. Leading
// zeros are dropped, so that CLI11 (base 0) reads "010" as 10, not 8.
template <typename T>
std::string check_integer(std::string& text) {
  const bool negative = !text.empty() && text[0] == '-';
  if (!all_digits(text, negative ? 1 : 0))
    return "'" + text + "' is not a " + std::string(std::is_signed_v<T> ? "" : "non-negative ") +
           "decimal integer";
  if (negative && !std::is_signed_v<T>) return "'" + text + "' is negative (a non-negative integer is expected)";
  T value{};
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec == std::errc::result_out_of_range)
    return "'" + text + "' is out of range (at most " + std::to_string(std::numeric_limits<T>::max()) + ")";
  if (ec != std::errc() || end != text.data() + text.size()) return "'" + text + "' is not an integer";
  text = std::to_string(value);
  return "";
}

// "" when `text` is a finite decimal number, else why not.
inline std::string check_finite(const std::string& text) {
  // Digits, one optional point and exponent: no inf, nan, hex floats or spaces.
  size_t i = 0;
  if (i < text.size() && (text[i] == '+' || text[i] == '-')) ++i;
  size_t digits = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) ++i, ++digits;
  if (i < text.size() && text[i] == '.') {
    ++i;
    while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) ++i, ++digits;
  }
  bool ok = digits > 0;
  if (ok && i < text.size() && (text[i] == 'e' || text[i] == 'E')) {
    ++i;
    if (i < text.size() && (text[i] == '+' || text[i] == '-')) ++i;
    ok = all_digits(text, i);
    if (ok) i = text.size();
  }
  if (!ok || i != text.size()) return "'" + text + "' is not a finite decimal number";
  const double v = std::strtod(text.c_str(), nullptr);
  if (!std::isfinite(v)) return "'" + text + "' is not a finite number (out of range)";
  return "";
}

}  // namespace detail

// Adds the strict check to every INT, UINT and FLOAT option of `app`; call it
// after the options are added.
inline void strict_numbers(CLI::App* app) {
  for (CLI::Option* opt : app->get_options()) {
    const std::string type = opt->get_type_name();
    const std::string base = type.substr(0, type.find(':'));
    std::function<std::string(std::string&)> check;
    if (base == "INT")
      check = [](std::string& s) { return detail::check_integer<int64_t>(s); };
    else if (base == "UINT")
      check = [](std::string& s) { return detail::check_integer<uint64_t>(s); };
    else if (base == "FLOAT")
      check = [](std::string& s) { return detail::check_finite(s); };
    else
      continue;
    opt->transform(CLI::Validator(check, "", "strict number"));  // transform: may rewrite the text
  }
}

}  // namespace memo::cli
