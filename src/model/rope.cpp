#include "model/rope.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace engram::transformer {
namespace {

// Pair index at which a dimension completes n_rot rotations over n_ctx_orig positions.
float corr_dim(int n_dims, int64_t n_ctx_orig, float n_rot, float base) {
  return static_cast<float>(n_dims) *
         std::log(static_cast<float>(n_ctx_orig) / (n_rot * 2.f * std::numbers::pi_v<float>)) / (2.f * std::log(base));
}

// 1 below `low`, 0 above `high`, linear in between (per pair index i0/2).
float yarn_ramp(float low, float high, int i0) {
  const float y = (static_cast<float>(i0 / 2) - low) / std::max(0.001f, high - low);
  return 1.f - std::min(1.f, std::max(0.f, y));
}

}  // namespace

void yarn_corr_dims(int n_dims, int64_t n_ctx_orig, float freq_base, float beta_fast, float beta_slow, float dims[2]) {
  const float start = std::floor(corr_dim(n_dims, n_ctx_orig, beta_fast, freq_base));
  const float end = std::ceil(corr_dim(n_dims, n_ctx_orig, beta_slow, freq_base));
  dims[0] = std::max(0.f, start);
  dims[1] = std::min(static_cast<float>(n_dims - 1), end);
}

Rope::Rope(const RopeConfig& config, const float* freq_factors) : config_(config), freq_factors_(freq_factors) {
  theta_scale_ = std::pow(config_.freq_base, -2.f / static_cast<float>(config_.n_dims));
  yarn_corr_dims(config_.n_dims, config_.n_ctx_orig, config_.freq_base, config_.yarn_beta_fast,
                 config_.yarn_beta_slow, corr_dims_);
}

void Rope::angles(int64_t pos, float* cache) const {
  const float freq_scale = config_.freq_scale, ext_factor = config_.yarn_ext_factor;
  // theta_i = pos * base^(-2i/n_dims), built by repeated multiplication as ggml does.
  float theta_extrap = static_cast<float>(pos);
  for (int i0 = 0; i0 < config_.n_dims; i0 += 2) {
    const float ff = freq_factors_ ? freq_factors_[i0 / 2] : 1.f;
    const float extrap = theta_extrap / ff;
    const float interp = freq_scale * extrap;
    float theta = interp;
    float mscale = config_.yarn_attn_factor;
    if (ext_factor != 0.f) {
      // YaRN: high-frequency pairs keep extrapolated angles, low-frequency
      // pairs are interpolated, with a linear ramp in between.
      const float mix = yarn_ramp(corr_dims_[0], corr_dims_[1], i0) * ext_factor;
      theta = interp * (1.f - mix) + extrap * mix;
      mscale *= 1.f + 0.1f * std::log(1.f / freq_scale);
    }
    cache[i0] = std::cos(theta) * mscale;
    cache[i0 + 1] = std::sin(theta) * mscale;
    theta_extrap *= theta_scale_;
  }
}

namespace {

// Rotates the first n_dims values of each head by the pairs' cos/sin in cache.
void rotate_heads(float* x, int n_heads, int head_dim, int n_dims, bool neox, const float* cache) {
  for (int h = 0; h < n_heads; ++h) {
    float* v = x + static_cast<size_t>(h) * head_dim;  // [head_dim]
    for (int i0 = 0; i0 < n_dims; i0 += 2) {
      const float c = cache[i0], s = cache[i0 + 1];
      // NORM rotates (2i, 2i+1); NEOX rotates (i, i + n_dims/2).
      const int a = neox ? i0 / 2 : i0;
      const int b = neox ? i0 / 2 + n_dims / 2 : i0 + 1;
      const float x0 = v[a], x1 = v[b];
      v[a] = x0 * c - x1 * s;
      v[b] = x0 * s + x1 * c;
    }
  }
}

}  // namespace

void Rope::rotate_by(float* x, int n_heads, int head_dim, int64_t delta, std::vector<float>& cache) const {
  const int n_dims = config_.n_dims;
  if (delta == 0 || n_dims <= 0) return;
  cache.resize(static_cast<size_t>(n_dims));
  angles(delta, cache.data());
  // angles() folds YaRN's mscale into cos/sin; a pure rotation must not.
  for (int i0 = 0; i0 < n_dims; i0 += 2) {
    const float norm = std::hypot(cache[i0], cache[i0 + 1]);
    if (norm > 0.f) {
      cache[i0] /= norm;
      cache[i0 + 1] /= norm;
    }
  }
  rotate_heads(x, n_heads, head_dim, n_dims, config_.neox, cache.data());
}

void Rope::apply(float* x, int n_tokens, int n_heads, int head_dim, int64_t pos0, std::vector<float>& cache) const {
  const int n_dims = config_.n_dims;
  cache.resize(static_cast<size_t>(n_dims));
  for (int t = 0; t < n_tokens; ++t) {
    angles(pos0 + t, cache.data());
    rotate_heads(x + static_cast<size_t>(t) * n_heads * head_dim, n_heads, head_dim, n_dims, config_.neox,
                 cache.data());
  }
}

}  // namespace engram::transformer
