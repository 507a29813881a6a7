// Error types thrown by the library. Only cli/ catches them and maps each kind
// to an exit code: InputError (bad user input: config, flags, files) -> 2,
// anything else -> 1.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace memo {

// Base of every error memo throws on purpose.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// The user gave something we cannot use; the message names the file, field or
// value and what was expected.
class InputError : public Error {
 public:
  explicit InputError(const std::string& what) : Error(what) {}
};

// Concatenates streamable parts into one message: cat("seq_len ", 5, " > ", 3).
template <typename... Parts>
std::string cat(Parts&&... parts) {
  std::ostringstream out;
  (out << ... << std::forward<Parts>(parts));
  return out.str();
}

// Throws InputError(cat(parts...)) unless cond holds.
template <typename... Parts>
void require_input(bool cond, Parts&&... parts) {
  if (!cond) throw InputError(cat(std::forward<Parts>(parts)...));
}

}  // namespace memo
