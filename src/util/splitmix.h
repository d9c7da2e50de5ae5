// SplitMix64 (Steele, Lea and Flood, 2014): a fast 64-bit generator whose
// output function also serves as a well-spread mixer of 64-bit values. The
// same on every platform, so seeded results are reproducible anywhere.
#pragma once

#include <cstdint>

namespace engram {

// The output function: a bijection that spreads every input bit over the
// whole word.
inline uint64_t splitmix64_mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The next value of the generator whose state is `state` (advanced).
inline uint64_t splitmix64_next(uint64_t& state) { return splitmix64_mix(state += 0x9E3779B97F4A7C15ull); }

}  // namespace engram
