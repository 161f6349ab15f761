// Argument errors raised by framework-free code. The bindings turn ValueError/TypeError kinds into
// the Python exceptions of the same names; messages say what was expected and what was given.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace fomo {

struct ArgumentError : std::invalid_argument {
  enum Kind { kValue, kType };
  Kind kind;
  ArgumentError(Kind k, const std::string& message) : std::invalid_argument(message), kind(k) {}
};

template <class... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream stream;
  (stream << ... << parts);
  return stream.str();
}

template <class... Parts>
[[noreturn]] void fail_value(const Parts&... parts) {
  throw ArgumentError(ArgumentError::kValue, concat(parts...));
}

template <class... Parts>
[[noreturn]] void fail_type(const Parts&... parts) {
  throw ArgumentError(ArgumentError::kType, concat(parts...));
}

}  // namespace fomo
