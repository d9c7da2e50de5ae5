// Loops that measure what the machine can do (`engram bench roofline`):
// streaming reads for memory bandwidth, and register-resident loops of fused
// multiply-adds (float32) and widening integer multiply-adds (the int8 path
// of the quantized dot products) for compute peaks. Each returns a value
// that depends on all its work, so the compiler cannot drop it.
#pragma once

#include <cstddef>
#include <cstdint>

namespace engram::kernels {

// Sum of n 64-bit words read in order (one streaming pass over the buffer).
uint64_t sum_words(const uint64_t* words, size_t n);

// `rounds` rounds of independent vector FMAs on float32 registers. Returns
// the floating-point operations done (2 per lane per FMA) in *flops and a
// result to keep.
float fma_rounds(size_t rounds, double* flops);

// `rounds` rounds of int16 x int16 -> int32 widening multiply-adds on
// registers, the instruction the Q8_0 / Q4_0 / Q4_K / Q6_K dot products use
// for their int8 values (AVX2 vpmaddwd, NEON smlal). *ops: integer
// operations done (2 per multiply-add of one int8 pair).
int32_t int8_madd_rounds(size_t rounds, double* ops);

}  // namespace engram::kernels
