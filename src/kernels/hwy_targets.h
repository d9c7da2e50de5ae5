// Target tests for the Highway kernel files (kernels.cpp, gemm.cpp, score.cpp). The
// macro is expanded at each use, so inside a foreach_target pass it tests the
// target being compiled.
#pragma once

// Any of Highway's SVE targets: their vectors are sizeless types (no arrays
// of vectors), and they run on cores that may have Armv8.2's dot product.
#define ENGRAM_TARGET_IS_SVE ((HWY_TARGET & (HWY_SVE | HWY_SVE2 | HWY_SVE_256 | HWY_SVE2_128)) != 0)

namespace engram::kernels {

// Whether the CPU has AVX512_BF16 (vdpbf16ps), which no target of the
// Highway we build against (Debian's 1.0.3) implies: the AVX3_DL kernels
// that use it check this at run time.
inline bool cpu_has_avx512_bf16() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool has = __builtin_cpu_supports("avx512bf16");
  return has;
#else
  return false;
#endif
}

}  // namespace engram::kernels
