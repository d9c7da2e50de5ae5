// Test data shared by the kernel tests: random floats and weight matrices of
// any storage type.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "quant/quant.h"
#include "tensor/tensor.h"

namespace engram::kernels::test {

inline std::vector<float> random_floats(size_t n, float lo, float hi, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& f : v) f = dist(rng);
  return v;
}

// A weight matrix [n_out rows of n_in] of `type`.
struct Weights {
  GgmlType type;
  int64_t n_in, n_out;
  std::vector<uint8_t> bytes;

  TensorView view() const {
    TensorView W;
    W.type = type;
    W.ne = {n_in, n_out, 1, 1};
    W.n_dims = 2;
    W.data = bytes.data();
    W.name = "test.weight";
    return W;
  }
  const uint8_t* row(int64_t o) const { return bytes.data() + static_cast<size_t>(o) * *row_bytes(type, n_in); }
};

}  // namespace engram::kernels::test
