// Rotary position embedding as ggml computes it (ggml_rope_ext): plain,
// linear-scaled ("position interpolation") and YaRN, in NORM order (adjacent
// pairs, llama) or NEOX order (pairs i, i + n_dims/2: qwen2, qwen3, ...).
#pragma once

#include <cstdint>
#include <vector>

#include "model/model.h"

namespace engram::transformer {

class Rope {
 public:
  Rope() = default;
  // freq_factors: optional per-pair divisors of theta ([n_dims/2], Llama 3.1's
  // rope_freqs.weight); must outlive the Rope.
  explicit Rope(const RopeConfig& config, const float* freq_factors = nullptr);

  // Rotates the first n_dims values of every head in place.
  // x: [n_tokens, n_heads, head_dim]; token t sits at position pos0 + t.
  // cache: scratch, resized to [n_dims] floats.
  void apply(float* x, int n_tokens, int n_heads, int head_dim, int64_t pos0, std::vector<float>& cache) const;

  // Rotates x, already rotated at some positions, as if those positions were
  // `delta` further on: every angle is linear in the position (plain, linear
  // and YaRN scaling, per-pair freq_factors), so this is apply() at position
  // delta without YaRN's magnitude scale (applied once already).
  // x: [n_heads, head_dim]; delta may be negative. cache: as in apply().
  void rotate_by(float* x, int n_heads, int head_dim, int64_t delta, std::vector<float>& cache) const;

  // cos/sin of every rotated pair at one position: cache[2i] = cos, cache[2i+1] = sin.
  void angles(int64_t pos, float* cache) const;

  const RopeConfig& config() const { return config_; }

 private:
  RopeConfig config_;
  const float* freq_factors_ = nullptr;
  float theta_scale_ = 1.f;   // freq_base^(-2/n_dims)
  float corr_dims_[2] = {0.f, 0.f};  // YaRN ramp between these pair indices
};

// YaRN's correction range: the pair indices whose wavelength fits
// beta_fast..beta_slow rotations in the original context (ggml_rope_yarn_corr_dims).
void yarn_corr_dims(int n_dims, int64_t n_ctx_orig, float freq_base, float beta_fast, float beta_slow, float dims[2]);

}  // namespace engram::transformer
