// The CLI11 flags of `memo train` and `memo bench`, generated from the option
// table (train/option_table.h): one flag per row that the command takes,
// with the row's help and the command's default; a flag given on the command
// line overrides the same option after the TOML file. Header-only, so the
// tests parse command lines through it without the executable.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "train/option_table.h"

namespace memo::cli {

// A flag and how its value, when given, lands in the options.
struct FlagBinding {
  CLI::Option* option;
  std::function<void(train::TrainOptions&)> apply;
};

using FlagBindings = std::vector<FlagBinding>;

// Adds the flags of `command` to `app`; `defaults` are the values --help
// shows (train: TrainOptions{}; bench: its smaller shape).
inline std::shared_ptr<FlagBindings> add_option_flags(CLI::App* app, train::Command command,
                                                      const train::TrainOptions& defaults) {
  auto bindings = std::make_shared<FlagBindings>();
  for (const auto& spec : train::option_table()) {
    if (!spec.on(command)) continue;
    std::visit(
        [&](auto member) {
          using T = std::decay_t<decltype(defaults.*member)>;
          if constexpr (std::is_same_v<T, bool>) {
            if (spec.is_switch()) {  // given: the member becomes switch_sets
              // CLI11 writes into *given while parsing, so the binding owns it
              // (a local that died here was a use-after-free on every switch).
              auto given = std::make_shared<bool>(false);
              auto* opt = app->add_flag(spec.flag, *given, spec.help_for(command));
              bindings->push_back(
                  {opt, [given, member, sets = *spec.switch_sets](train::TrainOptions& o) { o.*member = sets; }});
              return;
            }
          }
          auto value = std::make_shared<T>(defaults.*member);
          auto* opt = app->add_option(spec.flag, *value, spec.help_for(command))->capture_default_str();
          bindings->push_back({opt, [value, member](train::TrainOptions& o) { o.*member = *value; }});
        },
        spec.field);
  }
  return bindings;
}

// The flags given on the command line, onto `options` (after the TOML file).
inline void apply_given_flags(const FlagBindings& bindings, train::TrainOptions& options) {
  for (const auto& b : bindings)
    if (b.option->count() > 0) b.apply(options);
}

}  // namespace memo::cli
