// Target tests for the Highway kernel files (kernels.cpp, score.cpp). The
// macro is expanded at each use, so inside a foreach_target pass it tests the
// target being compiled.
#pragma once

// Any of Highway's SVE targets: their vectors are sizeless types (no arrays
// of vectors), and they run on cores that may have Armv8.2's dot product.
#define ENGRAM_TARGET_IS_SVE ((HWY_TARGET & (HWY_SVE | HWY_SVE2 | HWY_SVE_256 | HWY_SVE2_128)) != 0)
