// A non-owning view of a tensor's bytes, in ggml's dimension order:
// ne[0] is the innermost (contiguous) dimension, so a weight matrix that maps
// n_in -> n_out has ne = {n_in, n_out} and each of its n_out rows is one
// quantized row of n_in elements.
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "tensor/ggml_type.h"

namespace engram {

struct TensorView {
  GgmlType type = GgmlType::F32;
  std::array<int64_t, 4> ne{1, 1, 1, 1};  // elements per dimension, innermost first
  int n_dims = 0;
  const void* data = nullptr;
  std::string name;

  int64_t n_elements() const { return ne[0] * ne[1] * ne[2] * ne[3]; }
  int64_t n_rows() const { return ne[1] * ne[2] * ne[3]; }
  size_t row_size() const { return *row_bytes(type, ne[0]); }
  const uint8_t* row(int64_t i) const { return static_cast<const uint8_t*>(data) + static_cast<size_t>(i) * row_size(); }
};

}  // namespace engram
