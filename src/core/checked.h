// Checked int64 size arithmetic: every size memo computes from a flag or a
// file (parameter counts, tokens per step, tensor elements and bytes, plan
// offsets) goes through these, so a huge value is a clear InputError naming
// the quantity instead of a wrapped, negative size reaching an allocator.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string_view>

#include "core/error.h"

namespace memo {

// a * b; InputError "`what` overflows: a x b is beyond 2^63" on overflow.
inline int64_t checked_mul(int64_t a, int64_t b, std::string_view what) {
  int64_t r = 0;
  if (__builtin_mul_overflow(a, b, &r))
    throw InputError(cat(what, " overflows: ", a, " x ", b, " is beyond the 64-bit range (2^63)"));
  return r;
}

// a + b; InputError naming `what` on overflow.
inline int64_t checked_add(int64_t a, int64_t b, std::string_view what) {
  int64_t r = 0;
  if (__builtin_add_overflow(a, b, &r))
    throw InputError(cat(what, " overflows: ", a, " + ", b, " is beyond the 64-bit range (2^63)"));
  return r;
}

// The product of all factors, checked.
inline int64_t checked_product(std::initializer_list<int64_t> factors, std::string_view what) {
  int64_t r = 1;
  for (int64_t f : factors) r = checked_mul(r, f, what);
  return r;
}

}  // namespace memo
