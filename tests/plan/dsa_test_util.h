// Helpers shared by the plan/ tests: building problems by hand and at random.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "plan/dsa_problem.h"

namespace memo::plan::testing {

// {lower, upper, size[, alignment]} -> Buffer with id "b<index>".
struct Spec {
  int64_t lower, upper, size, alignment = 1;
};
inline Problem make_problem(const std::vector<Spec>& specs) {
  Problem p;
  for (size_t i = 0; i < specs.size(); ++i)
    p.buffers.push_back({"b" + std::to_string(i), specs[i].lower, specs[i].upper, specs[i].size,
                         specs[i].alignment});
  return p;
}

// n buffers with lifetimes inside [0, horizon) and sizes in [1, max_size].
inline Problem random_problem(std::mt19937_64& rng, int n, int64_t horizon, int64_t max_size,
                              bool aligned = false) {
  std::uniform_int_distribution<int64_t> time(0, horizon - 1), size(1, max_size);
  std::uniform_int_distribution<int> pick(0, 2);
  std::vector<Spec> specs;
  for (int i = 0; i < n; ++i) {
    int64_t a = time(rng), b = time(rng);
    if (a > b) std::swap(a, b);
    int64_t align = aligned ? int64_t{1} << pick(rng) : 1;
    specs.push_back({a, b + 1, size(rng), align});
  }
  return make_problem(specs);
}

}  // namespace memo::plan::testing
