// Storage dtype dispatch: calls f with a value of the storage type's pointer class, once.
#pragma once

#include <stdexcept>

#include "fomo/math.h"
#include "fomo/ops.h"

namespace fomo {

template <class T>
struct TypeTag {
  using type = T;
};

template <class F>
decltype(auto) dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::float32: return f(TypeTag<float>{});
    case DType::float64: return f(TypeTag<double>{});
    case DType::float16: return f(TypeTag<half_t>{});
    case DType::bfloat16: return f(TypeTag<bfloat16_t>{});
  }
  throw std::logic_error("fomo: unknown storage dtype code");
}

}  // namespace fomo
