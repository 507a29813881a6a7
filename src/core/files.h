// Small file helpers: atomic whole-file writes (temporary file, fsync, rename),
// so an interrupted write never leaves a half-written file behind.
#pragma once

#include <string>

namespace memo {

// Writes `content` to `path` atomically; creates parent directories. Throws
// InputError naming the path when it cannot be written.
void write_file_atomic(const std::string& path, const std::string& content);

// Appends one line to `path` (created if missing). Throws InputError on failure.
void append_line(const std::string& path, const std::string& line);

}  // namespace memo
