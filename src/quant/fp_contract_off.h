// Included first by the quant sources: forbids the compiler from fusing a*b+c
// into one fused multiply-add. ggml's reference (de)quantizers round every
// product and sum separately (x86-64 builds of ggml-base have no FMA), and
// bit-exact results depend on doing the same on every target (aarch64 has FMA
// and GCC contracts by default there).
#pragma once

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
