// Every SIMD kernel against its scalar reference (kernels_ref.h), on every
// Highway target this CPU supports: hwy::SetSupportedTargetsForTest forces the
// dynamic dispatch onto one target at a time.
//
// Tolerances. u = 2^-24 is float's unit roundoff. The references sum in
// double, so their own error is negligible and the bound is the kernel's:
//  * a float dot of n terms, however its partial sums are grouped (lanes,
//    accumulators, tail), is within (n - 1) u sum|a_i b_i| + O(u^2) of the
//    exact value (standard bound for recursive summation; FMA only tightens
//    it). We allow (n + 2) u sum|a_i b_i|.
//  * Because that bound grows with n it could hide a dropped element of a
//    long vector, so separate tests use small integers, whose float products
//    and sums are exact: there the kernel must match bit for bit.
//  * add, mul and scale round once per element, as the reference does:
//    exact equality.
#include "kernels/kernels.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <hwy/highway.h>
#include <hwy/targets.h>

#include <gtest/gtest.h>

#include "kernels/for_each_target.h"
#include "kernels/kernels_ref.h"
#include "kernels/test_weights.h"
#include "quant/blocks.h"
#include "quant/quant.h"

namespace engram::kernels {
namespace {

using test::random_floats;
using test::Weights;

constexpr float kU = 1.0f / (1 << 24);  // unit roundoff of float
const size_t kSizes[] = {0, 1, 3, 17, 64, 1000, 4099};



// Finite halves with magnitudes in [2^-14 .. 4), random mantissas, and a few
// subnormals, as raw bits (independent of any float->half conversion).
std::vector<uint16_t> random_halves(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint16_t> v(n);
  for (size_t i = 0; i < n; ++i) {
    const uint32_t r = rng();
    const uint32_t exponent = (i % 11 == 5) ? 0 : 1 + r % 16;  // biased exponent 0 = subnormal
    v[i] = static_cast<uint16_t>(((r >> 8) & 1) << 15 | exponent << 10 | ((r >> 9) & 0x3FF));
  }
  return v;
}

// bfloat16 bits of random floats in [-2, 2].
std::vector<uint16_t> random_bf16(size_t n, uint32_t seed) {
  std::vector<float> f = random_floats(n, -2.0f, 2.0f, seed);
  std::vector<uint16_t> v(n);
  for (size_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, &f[i], 4);
    v[i] = static_cast<uint16_t>(bits >> 16);
  }
  return v;
}

// Integers in [-8, 8]: every product and every partial sum of up to 2^18
// such products is exact in float.
std::vector<float> small_ints(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<float> v(n);
  for (float& f : v) f = static_cast<float>(static_cast<int>(rng() % 17) - 8);
  return v;
}

// Half bits of the integers -8..8, found by scanning every half so the test
// does not depend on a float->half conversion. Index k + 8 holds k.
std::vector<uint16_t> half_bits_of_small_ints() {
  std::vector<uint16_t> table(17, 0xFFFF);
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    const float f = ref::half_to_float(static_cast<uint16_t>(bits));
    if (f == std::round(f) && std::fabs(f) <= 8 && table[static_cast<int>(f) + 8] == 0xFFFF) {
      table[static_cast<int>(f) + 8] = static_cast<uint16_t>(bits);
    }
  }
  return table;
}

// sum |a_i b_i|, in double: the scale of a dot's rounding error.
double abs_dot(const std::vector<float>& a, const float* b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += std::fabs(static_cast<double>(a[i]) * b[i]);
  return s;
}

double dot_tolerance(size_t n, double abs_sum) { return (n + 2) * static_cast<double>(kU) * abs_sum; }

std::vector<float> halves_to_f32(const std::vector<uint16_t>& h) {
  std::vector<float> f(h.size());
  for (size_t i = 0; i < h.size(); ++i) f[i] = ref::half_to_float(h[i]);
  return f;
}
std::vector<float> bf16s_to_f32(const std::vector<uint16_t>& h) {
  std::vector<float> f(h.size());
  for (size_t i = 0; i < h.size(); ++i) f[i] = ref::bf16_to_float(h[i]);
  return f;
}

TEST(Kernels, ForcesEveryTargetAndReportsIt) {
  const std::vector<std::string> names = for_each_target([] {});
  std::string list;
  for (const std::string& n : names) list += n + " ";
  std::printf("[kernels] Highway targets tested here: %s(dispatched by default: %s; Arm sdot: %s)\n", list.c_str(),
              active_target(), uses_arm_dotprod() ? "used" : "not used");
  RecordProperty("hwy_targets", list);
  // Forcing must actually switch the dispatched code: each forced target
  // reports its own name from inside the dispatched function.
  for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(target);
    EXPECT_STREQ(active_target(), hwy::TargetName(target));
    hwy::SetSupportedTargetsForTest(0);
  }
#if HWY_ARCH_X86_64
  // Every x86-64 CPU has at least SSSE3 besides the scalar fallback.
  EXPECT_GE(names.size(), 2u) << list;
#else
  EXPECT_GE(names.size(), 1u) << list;
#endif
}

TEST(Kernels, LimitTargetsCapsDispatchAndNamesBadTargets) {
  const std::vector<int64_t> targets = hwy::SupportedAndGeneratedTargets();
  const std::string best = active_target();
  // The worst target first, then each in turn: dispatch runs exactly it.
  for (auto it = targets.rbegin(); it != targets.rend(); ++it) {
    std::string name = hwy::TargetName(*it);
    for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));  // case-insensitive
    const Status capped = limit_targets(name);
    ASSERT_TRUE(capped.is_ok()) << capped.message();
    EXPECT_STREQ(active_target(), hwy::TargetName(*it));
  }
  const Status bad = limit_targets("PDP11");
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.message().find("PDP11"), std::string::npos) << bad.message();
  EXPECT_NE(bad.message().find(hwy::TargetName(targets.front())), std::string::npos) << bad.message();
  // An error leaves no cap behind, and an empty name lifts one.
  EXPECT_EQ(active_target(), best);
  ASSERT_TRUE(limit_targets(hwy::TargetName(targets.back())).is_ok());
  ASSERT_TRUE(limit_targets("").is_ok());
  EXPECT_EQ(active_target(), best);
}

TEST(Kernels, DotMatchesReference) {
  for_each_target([] {
    for (size_t n : kSizes) {
      const auto a = random_floats(n, -1, 1, 1 + n), b = random_floats(n, -1, 1, 2 + n);
      EXPECT_NEAR(dot(a.data(), b.data(), n), ref::dot(a.data(), b.data(), n), dot_tolerance(n, abs_dot(a, b.data())))
          << "n=" << n;
    }
  });
}

TEST(Kernels, DotsOfSmallIntegersAreExact) {
  const std::vector<uint16_t> half_of = half_bits_of_small_ints();
  for_each_target([&] {
    for (size_t n : kSizes) {
      const auto a = small_ints(n, 3 + n), b = small_ints(n, 4 + n);
      std::vector<uint16_t> a16(n), abf(n);
      for (size_t i = 0; i < n; ++i) {
        a16[i] = half_of[static_cast<int>(a[i]) + 8];
        uint32_t bits;
        std::memcpy(&bits, &a[i], 4);
        abf[i] = static_cast<uint16_t>(bits >> 16);  // small integers have zero low mantissa bits
      }
      const float want = ref::dot(a.data(), b.data(), n);
      EXPECT_EQ(dot(a.data(), b.data(), n), want) << "n=" << n;
      EXPECT_EQ(dot_f16(a16.data(), b.data(), n), want) << "n=" << n;
      EXPECT_EQ(dot_bf16(abf.data(), b.data(), n), want) << "n=" << n;
      EXPECT_EQ(dot_row(GgmlType::F32, a.data(), b.data(), static_cast<int64_t>(n)), want) << "n=" << n;
    }
  });
}

TEST(Kernels, DotF16MatchesReference) {
  for_each_target([] {
    for (size_t n : kSizes) {
      const auto a = random_halves(n, 5 + n);
      const auto b = random_floats(n, -1, 1, 6 + n);
      const double tol = dot_tolerance(n, abs_dot(halves_to_f32(a), b.data()));
      EXPECT_NEAR(dot_f16(a.data(), b.data(), n), ref::dot_f16(a.data(), b.data(), n), tol) << "n=" << n;
      EXPECT_NEAR(dot_row(GgmlType::F16, a.data(), b.data(), static_cast<int64_t>(n)),
                  ref::dot_f16(a.data(), b.data(), n), tol)
          << "n=" << n;
    }
  });
}

TEST(Kernels, DotBF16MatchesReference) {
  for_each_target([] {
    for (size_t n : kSizes) {
      const auto a = random_bf16(n, 7 + n);
      const auto b = random_floats(n, -1, 1, 8 + n);
      const double tol = dot_tolerance(n, abs_dot(bf16s_to_f32(a), b.data()));
      EXPECT_NEAR(dot_bf16(a.data(), b.data(), n), ref::dot_bf16(a.data(), b.data(), n), tol) << "n=" << n;
      EXPECT_NEAR(dot_row(GgmlType::BF16, a.data(), b.data(), static_cast<int64_t>(n)),
                  ref::dot_bf16(a.data(), b.data(), n), tol)
          << "n=" << n;
    }
  });
}

TEST(Kernels, HalfConversionCoversEveryFiniteValue) {
  // get_row on an F16 row holding all 63488 finite halves must reproduce the
  // reference conversion exactly (conversion to float is exact). Inf/NaN
  // halves are left out: Highway 1.0.3's software conversion (SSE4 and
  // below) does not special-case them, and weights never hold them.
  std::vector<uint16_t> halves;
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    if (((bits >> 10) & 0x1F) != 0x1F) halves.push_back(static_cast<uint16_t>(bits));
  }
  TensorView W;
  W.type = GgmlType::F16;
  W.ne = {static_cast<int64_t>(halves.size()), 1, 1, 1};
  W.n_dims = 1;
  W.data = halves.data();
  for_each_target([&] {
    std::vector<float> got(halves.size());
    get_row(W, 0, got.data());
    for (size_t i = 0; i < halves.size(); ++i) {
      ASSERT_EQ(got[i], ref::half_to_float(halves[i])) << "half bits 0x" << std::hex << halves[i];
    }
    // f16_to_f32 (the dense KV cache's reads), from an odd start so that
    // neither end is vector-aligned.
    std::fill(got.begin(), got.end(), -1.f);
    f16_to_f32(halves.data() + 3, got.data(), halves.size() - 3);
    for (size_t i = 3; i < halves.size(); ++i) {
      ASSERT_EQ(got[i - 3], ref::half_to_float(halves[i])) << "half bits 0x" << std::hex << halves[i];
    }
  });
}

// f32_to_f16 (the dense KV cache's writes) rounds as the scalar reference
// on every target: normal and subnormal halves, ties, values just below the
// overflow threshold, both signs.
TEST(Kernels, FloatToHalfRoundsToNearestEven) {
  std::vector<float> values;
  std::mt19937 rng(17);
  std::uniform_int_distribution<int> exponent(-26, 15);
  std::uniform_real_distribution<float> mantissa(1.f, 2.f);
  for (int i = 0; i < 20000; ++i) {
    const float x = std::ldexp(mantissa(rng), exponent(rng));
    values.push_back(i % 2 ? x : -x);
  }
  for (uint32_t h = 0; h < 0x7C00; h += 7) {  // exact halves and the midpoints above them
    const float x = ref::half_to_float(static_cast<uint16_t>(h));
    const float next = ref::half_to_float(static_cast<uint16_t>(h + 1));
    values.push_back(x);
    values.push_back(x + (next - x) / 2);  // a tie: rounds to the even neighbour
  }
  values.insert(values.end(), {0.f, -0.f, 65504.f, -65504.f, 65519.f, 1e-8f, 3e-8f});
  for_each_target([&] {
    std::vector<uint16_t> got(values.size() - 1);
    f32_to_f16(values.data() + 1, got.data(), got.size());  // odd start: unaligned, with a tail
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_EQ(got[i], fp32_to_fp16(values[i + 1])) << "value " << values[i + 1];
    }
  });
}

TEST(Kernels, FloatToBFloat16RoundsLikeQuant) {
  std::vector<float> values = random_floats(5000, -3, 3, 23);
  for (uint32_t b = 0; b < 0x7F80; b += 13) {  // exact bf16 values and the ties above them
    const uint32_t bits = b << 16;
    values.push_back(std::bit_cast<float>(bits));
    values.push_back(std::bit_cast<float>(bits | 0x8000));  // a tie: rounds to the even neighbour
    values.push_back(-std::bit_cast<float>(bits | 0x7FFF));
  }
  const float inf = std::numeric_limits<float>::infinity();
  values.insert(values.end(), {0.f, -0.f, inf, -inf, std::numeric_limits<float>::max(), 1e-40f,
                               std::bit_cast<float>(0x7F800001u), std::bit_cast<float>(0xFFC12345u)});
  for_each_target([&] {
    const size_t n = values.size() - 1;  // odd start: unaligned, with a tail
    std::vector<uint16_t> bits(n);
    std::vector<float> rounded(n);
    f32_to_bf16(values.data() + 1, bits.data(), n);
    round_to_bf16(values.data() + 1, rounded.data(), n);
    for (size_t i = 0; i < n; ++i) {
      const uint16_t want = fp32_to_bf16(values[i + 1]);
      ASSERT_EQ(bits[i], want) << "value " << values[i + 1];
      ASSERT_EQ(std::bit_cast<uint32_t>(rounded[i]), static_cast<uint32_t>(want) << 16) << "value " << values[i + 1];
    }
  });
}

// llama.cpp multiplies BF16 weights with bf16 activations; matmul does too on
// every path (gemm's bf16 dot instructions where the CPU has them), so x =
// 1 + 2^-9 (below half a bf16 step, rounds to 1) times rows of ones sums to
// exactly n_in.
TEST(Kernels, MatmulRoundsActivationsOfBF16WeightsToBF16) {
  for (int64_t n_in : {7, 64, 1100}) {
    const std::vector<uint16_t> ones(static_cast<size_t>(n_in * 40), 0x3F80);
    TensorView W;
    W.type = GgmlType::BF16;
    W.ne = {n_in, 40, 1, 1};
    W.n_dims = 2;
    W.data = ones.data();
    for_each_target([&] {
      ThreadPool pool(2);
      for (int n_tokens : {1, 3, 40}) {
        const std::vector<float> x(static_cast<size_t>(n_tokens * n_in), 1.0f + 1.0f / 512);
        std::vector<float> y(static_cast<size_t>(n_tokens * 40), NAN);
        matmul(W, x.data(), y.data(), n_tokens, pool);
        for (float v : y) ASSERT_EQ(v, static_cast<float>(n_in)) << "n_in " << n_in << " n_tokens " << n_tokens;
      }
    });
  }
}

TEST(Kernels, AddMulScaleAreExact) {
  for_each_target([] {
    for (size_t n : kSizes) {
      const auto a = random_floats(n, -3, 3, 9 + n), b = random_floats(n, -3, 3, 10 + n);
      std::vector<float> got(n), want(n);
      add(a.data(), b.data(), got.data(), n);
      ref::add(a.data(), b.data(), want.data(), n);
      EXPECT_EQ(got, want) << "add n=" << n;
      mul(a.data(), b.data(), got.data(), n);
      ref::mul(a.data(), b.data(), want.data(), n);
      EXPECT_EQ(got, want) << "mul n=" << n;
      got = a;
      want = a;
      scale(got.data(), -1.7f, n);
      ref::scale(want.data(), -1.7f, n);
      EXPECT_EQ(got, want) << "scale n=" << n;
    }
  });
}

TEST(Kernels, AddWorksInPlace) {
  for_each_target([] {
    auto a = random_floats(1000, -1, 1, 11);
    const auto b = random_floats(1000, -1, 1, 12);
    std::vector<float> want(1000);
    ref::add(a.data(), b.data(), want.data(), 1000);
    add(a.data(), b.data(), a.data(), 1000);  // the residual stream does x = x + f(x)
    EXPECT_EQ(a, want);
  });
}

TEST(Kernels, AxpyMatchesReference) {
  // The kernel may fuse alpha*x + y into one rounding where the reference
  // rounds twice: the two differ by at most u(|alpha x| + |y|) + u|result|.
  for_each_target([] {
    for (size_t n : kSizes) {
      const auto x = random_floats(n, -2, 2, 13 + n), y0 = random_floats(n, -2, 2, 14 + n);
      const float alpha = 0.37f;
      auto got = y0, want = y0;
      axpy(alpha, x.data(), got.data(), n);
      ref::axpy(alpha, x.data(), want.data(), n);
      for (size_t i = 0; i < n; ++i) {
        const double tol = 2 * kU * (std::fabs(alpha * x[i]) + std::fabs(y0[i]));
        ASSERT_NEAR(got[i], want[i], tol) << "n=" << n << " i=" << i;
      }
    }
  });
}

TEST(Kernels, MaxValueIsExact) {
  for_each_target([] {
    EXPECT_EQ(max_value(nullptr, 0), -std::numeric_limits<float>::infinity());
    for (size_t n : kSizes) {
      if (n == 0) continue;
      const auto x = random_floats(n, -100, -1, 15 + n);  // all negative: a 0 from padding would show
      EXPECT_EQ(max_value(x.data(), n), ref::max_value(x.data(), n)) << "n=" << n;
      // The maximum in the last (tail) position must be found too.
      auto y = x;
      y[n - 1] = 5.0f;
      EXPECT_EQ(max_value(y.data(), n), 5.0f) << "n=" << n;
    }
  });
}

TEST(Kernels, RmsNormMatchesReference) {
  // Sum of squares: relative error <= n u (dot bound, all terms positive);
  // the square root halves it; the divide, sqrt and two multiplies add about
  // 4u. So |got - want| <= (n/2 + 6) u |want|.
  for_each_target([] {
    for (size_t n : kSizes) {
      const auto x = random_floats(n, -4, 4, 16 + n), w = random_floats(n, 0.5f, 1.5f, 17 + n);
      for (const float* weight : {w.data(), static_cast<const float*>(nullptr)}) {
        std::vector<float> got(n), want(n);
        rms_norm(x.data(), weight, got.data(), n, 1e-5f);
        ref::rms_norm(x.data(), weight, want.data(), n, 1e-5f);
        for (size_t i = 0; i < n; ++i) {
          ASSERT_NEAR(got[i], want[i], (n / 2.0 + 6) * kU * std::fabs(want[i]) + 1e-30)
              << "n=" << n << " i=" << i << (weight ? " weighted" : " unweighted");
        }
      }
    }
  });
}

TEST(Kernels, SoftmaxMatchesReference) {
  // Each e^(x - max): x - max rounds once (relative error u of an argument up
  // to 20 in size: 20u relative on the exponential) and Exp is within 1 ulp.
  // The float sum adds n u. Then one divide-like multiply. So relative
  // (n + 24) u per output.
  for_each_target([] {
    for (size_t n : kSizes) {
      auto got = random_floats(n, -10, 10, 18 + n);
      auto want = got;
      softmax(got.data(), n);
      ref::softmax(want.data(), n);
      double total = 0;
      for (size_t i = 0; i < n; ++i) {
        ASSERT_NEAR(got[i], want[i], (n + 24) * kU * want[i] + 1e-37) << "n=" << n << " i=" << i;
        total += got[i];
      }
      if (n > 0) EXPECT_NEAR(total, 1.0, (n + 24) * kU) << "n=" << n;
    }
  });
}

TEST(Kernels, SoftmaxHandlesMaskedEntries) {
  const float inf = std::numeric_limits<float>::infinity();
  for_each_target([&] {
    for (size_t n : {1u, 5u, 19u}) {
      std::vector<float> x(n, -inf);
      x[0] = 1.0f;
      if (n > 2) x[n - 1] = 1.0f;
      softmax(x.data(), n);
      const float p = n > 2 ? 0.5f : 1.0f;
      EXPECT_FLOAT_EQ(x[0], p) << "n=" << n;
      for (size_t i = 1; i + 1 < n; ++i) EXPECT_EQ(x[i], 0.0f) << "masked entry " << i << " n=" << n;
      // All masked: uniform rather than NaN.
      std::vector<float> all(n, -inf);
      softmax(all.data(), n);
      for (float v : all) EXPECT_FLOAT_EQ(v, 1.0f / n) << "n=" << n;
    }
  });
}

TEST(Kernels, SiluMulMatchesReference) {
  // Exp within 1 ulp, then an add, a divide and a multiply: 4 roundings.
  // 8u relative leaves margin.
  for_each_target([] {
    for (size_t n : kSizes) {
      const auto gate = random_floats(n, -12, 12, 19 + n), up = random_floats(n, -2, 2, 20 + n);
      std::vector<float> got(n), want(n);
      silu_mul(gate.data(), up.data(), got.data(), n);
      ref::silu_mul(gate.data(), up.data(), want.data(), n);
      for (size_t i = 0; i < n; ++i) {
        ASSERT_NEAR(got[i], want[i], 8 * kU * std::fabs(want[i]) + 1e-37) << "n=" << n << " i=" << i;
      }
    }
  });
}

TEST(Kernels, SiluMulSaturatesWithoutOverflow) {
  // Far outside Exp's range: silu(-200) is 0 to within 1e-30 and silu(200)
  // is 200; nothing may become NaN or inf.
  for_each_target([] {
    const std::vector<float> gate = {-200.0f, 200.0f, -1e30f, 1e30f, 0.0f};
    const std::vector<float> up(gate.size(), 1.0f);
    std::vector<float> out(gate.size());
    silu_mul(gate.data(), up.data(), out.data(), gate.size());
    EXPECT_NEAR(out[0], 0.0f, 1e-30f);
    EXPECT_FLOAT_EQ(out[1], 200.0f);
    EXPECT_TRUE(std::isfinite(out[2])) << out[2];
    EXPECT_NEAR(out[2], 0.0f, 1e-6f);
    EXPECT_FLOAT_EQ(out[3], 1e30f);
    EXPECT_EQ(out[4], 0.0f);
  });
}

// ---- dot_row / matmul / get_row over storage types ----


Weights make_weights(GgmlType type, int64_t n_in, int64_t n_out, uint32_t seed) {
  Weights w{type, n_in, n_out, {}};
  const size_t row = *row_bytes(type, n_in);
  w.bytes.resize(row * static_cast<size_t>(n_out));
  const std::vector<float> values = random_floats(static_cast<size_t>(n_in * n_out), -1, 1, seed);
  for (int64_t o = 0; o < n_out; ++o) {
    const float* src = values.data() + o * n_in;
    uint8_t* dst = w.bytes.data() + o * row;
    switch (type) {
      case GgmlType::F32:
        std::memcpy(dst, src, row);
        break;
      case GgmlType::F16: {
        // Halves by raw bits, to stay independent of float->half rounding.
        const auto h = random_halves(static_cast<size_t>(n_in), seed + 1000 + static_cast<uint32_t>(o));
        std::memcpy(dst, h.data(), row);
        break;
      }
      case GgmlType::BF16: {
        const auto h = random_bf16(static_cast<size_t>(n_in), seed + 1000 + static_cast<uint32_t>(o));
        std::memcpy(dst, h.data(), row);
        break;
      }
      default:
        quantize_row(type, src, dst, n_in);
    }
  }
  return w;
}

// Every row's dequantized values, via the reference path.
double row_abs_dot(const Weights& w, int64_t o, const float* x) {
  const std::vector<float> row = ref::row_to_f32(w.type, w.bytes.data() + o * *row_bytes(w.type, w.n_in), w.n_in);
  return abs_dot(row, x);
}

// sum_b |d_w * d_x| * sum_j |w_j x_j|: scale for the float rounding of a
// Q8_0-activation dot (the block sums themselves are exact).
double abs_dot_q8(GgmlType type, const void* row, const void* x_q8, int64_t n) {
  double s = 0;
  for (int64_t b = 0; b < n / 32; ++b) {
    BlockQ8_0 xb;
    std::memcpy(&xb, static_cast<const uint8_t*>(x_q8) + b * sizeof xb, sizeof xb);
    int64_t abs_sum = 0;
    for (int j = 0; j < 32; ++j) abs_sum += std::abs(ref::weight_quant(type, row, b, j) * xb.qs[j]);
    s += std::fabs(static_cast<double>(ref::half_to_float(ref::weight_scale(type, row, b))) *
                   ref::half_to_float(xb.d)) * static_cast<double>(abs_sum);
  }
  return s;
}

// Bound for a float sum of n_blocks scaled block sums spread over at most 16
// lanes each (see the tolerance note at the top).
double dot_q8_tolerance(int64_t n, double abs_sum) { return dot_tolerance(static_cast<size_t>(n / 32 + 16), abs_sum); }

// sum_b |d_w d_x| sum |sc q xq| + |dmin_w d_x| sum |m xq| for K-quant rows
// with Q8_K activations: the scale of their float rounding.
double abs_dot_q8_K(GgmlType type, const void* row, const BlockQ8_K* x, int64_t n) {
  double s = 0;
  for (int64_t b = 0; b < n / 256; ++b) {
    int64_t scaled = 0, mins = 0;
    double d = 0, dmin = 0;
    if (type == GgmlType::Q4_K) {
      BlockQ4_K w;
      std::memcpy(&w, static_cast<const uint8_t*>(row) + b * sizeof w, sizeof w);
      for (int i = 0; i < 256; ++i) {
        int q, sc, m;
        ref::q4_K_quant(w, i, &q, &sc, &m);
        scaled += std::abs(sc * q * x[b].qs[i]);
        mins += std::abs(m * x[b].qs[i]);
      }
      d = ref::half_to_float(w.d);
      dmin = ref::half_to_float(w.dmin);
    } else {
      BlockQ6_K w;
      std::memcpy(&w, static_cast<const uint8_t*>(row) + b * sizeof w, sizeof w);
      for (int i = 0; i < 256; ++i) {
        int q, sc;
        ref::q6_K_quant(w, i, &q, &sc);
        scaled += std::abs(sc * q * x[b].qs[i]);
      }
      d = ref::half_to_float(w.d);
    }
    s += std::fabs(d * x[b].d) * static_cast<double>(scaled) + std::fabs(dmin * x[b].d) * static_cast<double>(mins);
  }
  return s;
}

// Super-block sums are rounded to float once (they may exceed 2^24), then
// summed over super-blocks and lanes.
double dot_q8_K_tolerance(int64_t n, double abs_sum) { return dot_tolerance(static_cast<size_t>(n / 256 + 16 + 4), abs_sum); }

std::vector<uint8_t> quantize_q8(const float* x, int64_t n) {
  std::vector<uint8_t> q(*row_bytes(GgmlType::Q8_0, n));
  quantize_row(GgmlType::Q8_0, x, q.data(), n);
  return q;
}

void check_matmul(GgmlType type, int64_t n_in) {
  const int64_t n_out = 37;  // odd, and more than 2 grains so 3 threads all get rows
  const Weights w = make_weights(type, n_in, n_out, 21 + static_cast<uint32_t>(n_in));
  const TensorView W = w.view();
  for (int threads : {1, 2, 3}) {
    ThreadPool pool(threads);
    for (int n_tokens : {1, 5}) {
      const auto x = random_floats(static_cast<size_t>(n_tokens * n_in), -1, 1, 22 + n_tokens);
      std::vector<float> got(static_cast<size_t>(n_tokens * n_out), NAN), want(got.size());
      matmul(W, x.data(), got.data(), n_tokens, pool);
      ref::matmul(W, x.data(), want.data(), n_tokens);
      for (int t = 0; t < n_tokens; ++t) {
        for (int64_t o = 0; o < n_out; ++o) {
          const float* xt = x.data() + t * n_in;
          const double tol = dot_tolerance(static_cast<size_t>(n_in), row_abs_dot(w, o, xt));
          // Q8_0 / Q4_0 / Q4_K / Q6_K: matmul sees x quantized, as ref::matmul does.
          double mm_tol = tol;
          if (ref::activation_type(type, n_in) == GgmlType::Q8_0) {
            mm_tol = dot_q8_tolerance(n_in, abs_dot_q8(type, W.row(o), quantize_q8(xt, n_in).data(), n_in));
          } else if (ref::activation_type(type, n_in) == GgmlType::Q8_K) {
            mm_tol = dot_q8_K_tolerance(n_in, abs_dot_q8_K(type, W.row(o), ref::quantize_q8_K(xt, n_in).data(), n_in));
          }
          ASSERT_NEAR(got[t * n_out + o], want[t * n_out + o], mm_tol)
              << type_traits(type).name << " n_in=" << n_in << " threads=" << threads << " n_tokens=" << n_tokens
              << " t=" << t << " o=" << o;
          // dot_row (float activations) on the same row agrees with its reference.
          ASSERT_NEAR(dot_row(type, W.row(o), xt, n_in), ref::dot_row(type, W.row(o), xt, n_in), tol);
        }
      }
    }
  }
  // get_row is the exact dequantization.
  std::vector<float> got(static_cast<size_t>(n_in)), want(got.size());
  for (int64_t o : {int64_t{0}, n_out - 1}) {
    get_row(W, o, got.data());
    ref::get_row(W, o, want.data());
    EXPECT_EQ(got, want) << type_traits(type).name << " row " << o;
  }
}

TEST(Kernels, MatmulPlainTypes) {
  for_each_target([] {
    for (GgmlType type : {GgmlType::F32, GgmlType::F16, GgmlType::BF16}) {
      for (int64_t n_in : {1, 67, 512}) check_matmul(type, n_in);
    }
  });
}

TEST(Kernels, MatmulQuantizedTypes) {
  for_each_target([] {
    for (GgmlType type : {GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_K, GgmlType::Q6_K}) {
      ASSERT_TRUE(can_dequantize(type) && can_quantize(type)) << type_traits(type).name;
      // 768 = three of dot_row's 256-element chunks.
      for (int64_t n_in : {256, 768}) check_matmul(type, n_in);
    }
  });
}

// ---- Q8_0 / Q4_0 weights with Q8_0 activations ----

// Blocks of random quants whose scales are powers of two (weights 0.5, 1, 2
// cycling; activations 1): every product and partial sum is an integer below
// 2^24, so the float result is exact and must equal the integer sum exactly.
TEST(Kernels, DotRowQ8BlockSumsAreExact) {
  std::mt19937 rng(31);
  const uint16_t kPow2[] = {0x3800, 0x3C00, 0x4000};  // 0.5, 1, 2 as halves
  for (GgmlType type : {GgmlType::Q8_0, GgmlType::Q4_0}) {
    for (int64_t nb : {1, 2, 3, 5, 16}) {
      const int64_t n = nb * 32;
      std::vector<uint8_t> row(*row_bytes(type, n)), xq(*row_bytes(GgmlType::Q8_0, n));
      for (uint8_t& byte : row) byte = static_cast<uint8_t>(rng());
      for (uint8_t& byte : xq) byte = static_cast<uint8_t>(rng());
      const size_t wblock = *row_bytes(type, 32);
      double want = 0;
      for (int64_t b = 0; b < nb; ++b) {
        std::memcpy(row.data() + b * wblock, &kPow2[b % 3], 2);
        BlockQ8_0 xb;
        std::memcpy(&xb, xq.data() + b * sizeof xb, sizeof xb);
        xb.d = 0x3C00;
        for (int8_t& q : xb.qs) q = q == -128 ? -127 : q;  // Q8_0 activations are in [-127, 127]
        std::memcpy(xq.data() + b * sizeof xb, &xb, sizeof xb);
        want += ref::half_to_float(kPow2[b % 3]) * ref::block_sum_q8(type, row.data(), xq.data(), b);
      }
      ASSERT_LT(std::fabs(want), 1 << 24);
      EXPECT_EQ(ref::dot_row_q8(type, row.data(), xq.data(), n), want);
      const auto targets = for_each_target([&] {
        EXPECT_EQ(dot_row_q8(type, row.data(), xq.data(), n), want) << type_traits(type).name << " nb=" << nb;
      });
      EXPECT_FALSE(targets.empty());
    }
  }
}

// The reference's reading of the blocks agrees with the quant layer's
// dequantization (itself tested bit-exact against ggml in tests/quant).
TEST(Kernels, Q8ReferenceReadsBlocksLikeDequantize) {
  for (GgmlType type : {GgmlType::Q8_0, GgmlType::Q4_0}) {
    const int64_t n = 96;
    const Weights w = make_weights(type, n, 1, 32);
    std::vector<float> values(static_cast<size_t>(n));
    dequantize_row(type, w.bytes.data(), values.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      const float d = ref::half_to_float(ref::weight_scale(type, w.bytes.data(), i / 32));
      ASSERT_EQ(values[i], d * static_cast<float>(ref::weight_quant(type, w.bytes.data(), i / 32, i % 32)))
          << type_traits(type).name << " i=" << i;
    }
  }
}

TEST(Kernels, DotRowQ8MatchesReference) {
  for_each_target([] {
    for (GgmlType type : {GgmlType::Q8_0, GgmlType::Q4_0}) {
      for (int64_t n : {32, 64, 96, 4096}) {
        const Weights w = make_weights(type, n, 1, 33 + static_cast<uint32_t>(n));
        const auto x = random_floats(static_cast<size_t>(n), -3, 3, 34 + static_cast<uint32_t>(n));
        const auto xq = quantize_q8(x.data(), n);
        const float want = ref::dot_row_q8(type, w.bytes.data(), xq.data(), n);
        EXPECT_NEAR(dot_row_q8(type, w.bytes.data(), xq.data(), n), want,
                    dot_q8_tolerance(n, abs_dot_q8(type, w.bytes.data(), xq.data(), n)))
            << type_traits(type).name << " n=" << n;
        // And the quantized-activation dot is close to the float one: the
        // activation rounding is at most half a step (amax / 254) per element.
        EXPECT_NEAR(want, ref::dot_row(type, w.bytes.data(), x.data(), n), 0.02 * std::sqrt(static_cast<double>(n)))
            << type_traits(type).name << " n=" << n;
      }
    }
  });
}

// ---- K-quant weights with Q8_K activations ----

TEST(Kernels, Q8KActivationsMatchReference) {
  for (GgmlType type : {GgmlType::Q4_K, GgmlType::Q6_K}) {
    ASSERT_EQ(activation_type(type, 512), GgmlType::Q8_K);
    auto x = random_floats(1024, -2, 2, 41);
    std::fill(x.begin() + 256, x.begin() + 512, 0.0f);  // an all-zero super-block
    x[700] = -5.0f;                                      // largest magnitude negative
    std::vector<uint8_t> got(*row_bytes(GgmlType::Q8_K, 1024));
    quantize_activations(type, x.data(), got.data(), 1024);
    const auto want = ref::quantize_q8_K(x.data(), 1024);
    ASSERT_EQ(got.size(), want.size() * sizeof(BlockQ8_K));
    EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size()), 0) << type_traits(type).name;
    EXPECT_EQ(want[2].qs[700 - 512], -127);
  }
  EXPECT_EQ(activation_type(GgmlType::Q4_K, 100), GgmlType::F32);
  EXPECT_EQ(activation_type(GgmlType::F16, 512), GgmlType::F32);
  EXPECT_EQ(activation_type(GgmlType::Q8_0, 64), GgmlType::Q8_0);
}

// The vectorised activation quantizers are byte-exact with the scalar ones on
// every target, including ties (x / d exactly k + 1/2: Q8_0 rounds them away
// from zero, Q8_K to even), all-zero blocks and a negative largest value.
TEST(Kernels, ActivationQuantizationIsExactOnEveryTarget) {
  auto x = random_floats(2048, -3, 3, 61);
  std::fill(x.begin() + 256, x.begin() + 512, 0.0f);  // all-zero blocks of both kinds
  for (int i = 0; i < 32; ++i) x[1024 + i] = static_cast<float>(i) - 15.5f;  // Q8_0 block: amax 15.5
  x[1024 + 31] = -127.0f;  // ... now amax 127 (d = 1): the others are ties k + 1/2
  for (int i = 0; i < 256; ++i) x[1536 + i] = 0.5f * static_cast<float>(i % 9) - 2.0f;  // Q8_K: ties
  x[1536 + 7] = -127.0f;  // first largest magnitude, negative: iscale = 1
  x[1536 + 9] = 127.0f;   // same magnitude later: must not be picked
  std::vector<uint8_t> want_q8_0(*row_bytes(GgmlType::Q8_0, 2048));
  quantize_row(GgmlType::Q8_0, x.data(), want_q8_0.data(), 2048);
  const auto want_q8_K = ref::quantize_q8_K(x.data(), 2048);
  for_each_target([&] {
    std::vector<uint8_t> got(want_q8_0.size());
    quantize_activations(GgmlType::Q8_0, x.data(), got.data(), 2048);
    EXPECT_EQ(got, want_q8_0);
    got.assign(want_q8_K.size() * sizeof(BlockQ8_K), 0xAA);
    quantize_activations(GgmlType::Q4_K, x.data(), got.data(), 2048);
    EXPECT_EQ(std::memcmp(got.data(), want_q8_K.data(), got.size()), 0);
  });
  BlockQ8_0 tie;
  std::memcpy(&tie, want_q8_0.data() + 32 * sizeof tie, sizeof tie);
  EXPECT_EQ(tie.qs[0], -16);  // -15.5 away from zero
  EXPECT_EQ(tie.qs[30], 15);  // 14.5
  EXPECT_EQ(want_q8_K[6].qs[0], -2);
  EXPECT_EQ(want_q8_K[6].qs[1], -2);  // -1.5 to even
  EXPECT_EQ(want_q8_K[6].qs[3], 0);   // -0.5 to even
}

// Scales 1 and small activation quants: every sum is an integer below 2^24,
// so each target must return the reference's integer exactly.
TEST(Kernels, DotRowQ8KSumsAreExact) {
  std::mt19937 rng(42);
  for (GgmlType type : {GgmlType::Q4_K, GgmlType::Q6_K}) {
    for (int64_t nb : {1, 2}) {
      const int64_t n = nb * 256;
      std::vector<uint8_t> row(*row_bytes(type, n));
      for (uint8_t& byte : row) byte = static_cast<uint8_t>(rng());
      std::vector<BlockQ8_K> x(static_cast<size_t>(nb));
      const size_t wblock = *row_bytes(type, 256);
      for (int64_t b = 0; b < nb; ++b) {
        const uint16_t one = 0x3C00;
        if (type == GgmlType::Q4_K) {
          std::memcpy(row.data() + b * wblock, &one, 2);      // d
          std::memcpy(row.data() + b * wblock + 2, &one, 2);  // dmin
        } else {
          std::memcpy(row.data() + b * wblock + offsetof(BlockQ6_K, d), &one, 2);
        }
        x[b] = BlockQ8_K{};
        x[b].d = 1.0f;
        for (int i = 0; i < 256; ++i) {
          x[b].qs[i] = static_cast<int8_t>(static_cast<int>(rng() % 9) - 4);
          x[b].bsums[i / 16] = static_cast<int16_t>(x[b].bsums[i / 16] + x[b].qs[i]);
        }
      }
      const float want = ref::dot_row_q8_K(type, row.data(), x.data(), n);
      ASSERT_LT(std::fabs(want), 1 << 23);
      for_each_target([&] {
        EXPECT_EQ(dot_row_q8(type, row.data(), x.data(), n), want) << type_traits(type).name << " nb=" << nb;
      });
    }
  }
}

// The reference's reading of K-quant blocks agrees with dequantize_row.
TEST(Kernels, Q8KReferenceReadsBlocksLikeDequantize) {
  for (GgmlType type : {GgmlType::Q4_K, GgmlType::Q6_K}) {
    const Weights w = make_weights(type, 256, 1, 43);
    std::vector<float> values(256);
    dequantize_row(type, w.bytes.data(), values.data(), 256);
    for (int i = 0; i < 256; ++i) {
      float v;
      if (type == GgmlType::Q4_K) {
        BlockQ4_K b;
        std::memcpy(&b, w.bytes.data(), sizeof b);
        int q, sc, m;
        ref::q4_K_quant(b, i, &q, &sc, &m);
        v = ref::half_to_float(b.d) * static_cast<float>(sc) * static_cast<float>(q) -
            ref::half_to_float(b.dmin) * static_cast<float>(m);
      } else {
        BlockQ6_K b;
        std::memcpy(&b, w.bytes.data(), sizeof b);
        int q, sc;
        ref::q6_K_quant(b, i, &q, &sc);
        v = ref::half_to_float(b.d) * static_cast<float>(sc) * static_cast<float>(q);
      }
      ASSERT_NEAR(values[i], v, 1e-6f * (1 + std::fabs(v))) << type_traits(type).name << " i=" << i;
    }
  }
}

TEST(Kernels, DotRowQ8KMatchesReference) {
  for_each_target([] {
    for (GgmlType type : {GgmlType::Q4_K, GgmlType::Q6_K}) {
      for (int64_t n : {256, 512, 4096}) {
        const Weights w = make_weights(type, n, 1, 44 + static_cast<uint32_t>(n));
        const auto x = random_floats(static_cast<size_t>(n), -3, 3, 45 + static_cast<uint32_t>(n));
        std::vector<uint8_t> xq(*row_bytes(GgmlType::Q8_K, n));
        quantize_activations(type, x.data(), xq.data(), n);
        const auto xr = ref::quantize_q8_K(x.data(), n);
        const float want = ref::dot_row_q8_K(type, w.bytes.data(), xr.data(), n);
        EXPECT_NEAR(dot_row_q8(type, w.bytes.data(), xq.data(), n), want,
                    dot_q8_K_tolerance(n, abs_dot_q8_K(type, w.bytes.data(), xr.data(), n)))
            << type_traits(type).name << " n=" << n;
        EXPECT_NEAR(want, ref::dot_row(type, w.bytes.data(), x.data(), n), 0.02 * std::sqrt(static_cast<double>(n)))
            << type_traits(type).name << " n=" << n;
      }
    }
  });
}

// One token through matmul (the generation path: several weight rows per pass)
// with unit scales and activations that quantize to themselves: every block
// sum is an integer and every partial sum stays below 2^24, so each output must
// equal the reference exactly. A dropped block, lane or row changes it.
TEST(Kernels, MatVecQuantizedSumsAreExact) {
  std::mt19937 rng(51);
  const uint16_t one = 0x3C00;
  for (GgmlType type : {GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_K, GgmlType::Q6_K}) {
    const int64_t n_in = 512;
    const int64_t n_out = 3 * 16 + 7;  // three threads' grains, groups of rows and a remainder
    const size_t row = *row_bytes(type, n_in);
    const int64_t block = type_traits(type).block_size;
    const size_t block_bytes = *row_bytes(type, block);
    Weights w{type, n_in, n_out, std::vector<uint8_t>(row * static_cast<size_t>(n_out))};
    for (uint8_t& byte : w.bytes) byte = static_cast<uint8_t>(rng());
    for (size_t b = 0; b < w.bytes.size() / block_bytes; ++b) {
      uint8_t* blk = w.bytes.data() + b * block_bytes;
      if (type == GgmlType::Q6_K) {
        std::memcpy(blk + offsetof(BlockQ6_K, d), &one, 2);
      } else {
        std::memcpy(blk, &one, 2);                                    // d
        if (type == GgmlType::Q4_K) std::memcpy(blk + 2, &one, 2);  // dmin
      }
    }
    // Small integers with -127 first in every block of 32: Q8_0 and Q8_K
    // scales are then exactly 1 and the quants equal the values.
    std::vector<float> x(static_cast<size_t>(n_in));
    for (int64_t i = 0; i < n_in; ++i) {
      x[static_cast<size_t>(i)] = i % 32 == 0 ? -127.0f : static_cast<float>(static_cast<int>(rng() % 9) - 4);
    }
    const TensorView W = w.view();
    std::vector<float> want(static_cast<size_t>(n_out));
    ref::matmul(W, x.data(), want.data(), 1);
    // sum |x| = 16 * (127 + 31 * 4) = 4016 and every integer weight term is
    // at most 128 * 32 (Q6_K scale times quant) in magnitude: 4016 * 4096 < 2^24.
    for_each_target([&] {
      for (int threads : {1, 3}) {
        ThreadPool pool(threads);
        std::vector<float> got(want.size(), NAN);
        matmul(W, x.data(), got.data(), 1, pool);
        for (int64_t o = 0; o < n_out; ++o) {
          ASSERT_EQ(got[o], want[o]) << type_traits(type).name << " threads=" << threads << " row " << o;
        }
      }
    });
  }
}

TEST(Kernels, MatmulSplitsLargeOutputsAcrossThreads) {
  // n_out far above the grain, so the chunk boundaries land mid-matrix.
  const Weights w = make_weights(GgmlType::F32, 64, 1001, 23);
  const TensorView W = w.view();
  const auto x = random_floats(3 * 64, -1, 1, 24);
  std::vector<float> want(3 * 1001);
  ref::matmul(W, x.data(), want.data(), 3);
  for (int threads : {1, 2, 3}) {
    ThreadPool pool(threads);
    std::vector<float> got(want.size(), NAN);
    matmul(W, x.data(), got.data(), 3, pool);
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_NEAR(got[i], want[i], dot_tolerance(64, 64.0)) << "threads=" << threads << " i=" << i;
    }
  }
}

TEST(Kernels, ActiveTargetIsNamed) {
  const std::string name = active_target();
  EXPECT_FALSE(name.empty());
  EXPECT_NE(name, "Unknown");
}

}  // namespace
}  // namespace engram::kernels
