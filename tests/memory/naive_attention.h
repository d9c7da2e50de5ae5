// A naive double-precision reference for the memory tests: causal GQA
// attention of queries against stored keys/values restricted to the
// positions a predicate admits.
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <vector>

#include "memory/memory.h"

namespace engram::test {

inline std::vector<float> random_floats(size_t n, std::mt19937& rng, float sd = 1.f) {
  std::normal_distribution<float> d(0.f, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// All keys/values written to one (layer, seq): k [n, n_kv_head, k_dim], v likewise.
struct KvLog {
  std::vector<float> k, v;
};

// visible(query_pos, key_pos, kv_head): whether the query may see the key.
inline std::vector<float> naive_attention(const MemoryLayout& l, int n_head, const KvLog& s, int64_t pos0, int n,
                                          const float* q, float scale,
                                          const std::function<bool(int64_t, int64_t, int)>& visible) {
  std::vector<float> out(static_cast<size_t>(n) * n_head * l.v_dim, 0.f);
  const int group = n_head / l.n_kv_head;
  for (int i = 0; i < n; ++i) {
    for (int h = 0; h < n_head; ++h) {
      const int g = h / group;
      const float* qh = q + (static_cast<size_t>(i) * n_head + h) * l.k_dim;
      std::vector<double> w;
      std::vector<int64_t> idx;
      double mx = -1e300;
      for (int64_t j = 0; j <= pos0 + i; ++j) {
        if (!visible(pos0 + i, j, g)) continue;
        double d = 0;
        for (int c = 0; c < l.k_dim; ++c)
          d += double(qh[c]) * s.k[(static_cast<size_t>(j) * l.n_kv_head + g) * l.k_dim + c];
        d *= scale;
        w.push_back(d);
        idx.push_back(j);
        mx = std::max(mx, d);
      }
      double sum = 0;
      for (double& x : w) sum += (x = std::exp(x - mx));
      float* o = out.data() + (static_cast<size_t>(i) * n_head + h) * l.v_dim;
      for (size_t t = 0; t < w.size(); ++t)
        for (int c = 0; c < l.v_dim; ++c)
          o[c] += static_cast<float>(w[t] / sum * s.v[(static_cast<size_t>(idx[t]) * l.n_kv_head + g) * l.v_dim + c]);
    }
  }
  return out;
}

}  // namespace engram::test
