// exp(x) for double, written so that `#pragma omp simd` loops vectorise it (libm's exp does not).
//
// Range reduction x = k ln2 + r with |r| <= ln2 / 2 (Cody-Waite split of ln2), then the degree-13 Taylor
// polynomial of exp(r) (truncation error < 1e-17 relative) and a scale by 2^k done in two halves so
// results down to the subnormal range come out right. Measured against std::exp by
// tests/unit/test_kernels_compiled.py: <= 4 ulp over [-745, 709]; exactly 0 below ~-745.2, inf above ~709.8.
#pragma once

#include <cstdint>
#include <cstring>

namespace lmroute {

inline double bits_to_double(int64_t bits) {
    double out;
    std::memcpy(&out, &bits, sizeof out);
    return out;
}

inline int64_t double_to_bits(double value) {
    int64_t out;
    std::memcpy(&out, &value, sizeof out);
    return out;
}

#pragma omp declare simd
inline double fast_exp(double x) {
    constexpr double kLog2e = 1.4426950408889634;
    constexpr double kLn2Hi = 6.93147180369123816490e-01;  // ln2 with 32 trailing zero bits
    constexpr double kLn2Lo = 1.90821492927058770002e-10;  // ln2 - kLn2Hi
    constexpr double kRound = 6755399441055744.0;           // 1.5 * 2^52: adding it rounds to an integer
    x = x < -746.0 ? -746.0 : x;
    x = x > 710.0 ? 710.0 : x;
    const double t = x * kLog2e + kRound;
    const double k = t - kRound;  // nearest integer to x / ln2
    const int64_t ki = double_to_bits(t) - double_to_bits(kRound);
    const double r = (x - k * kLn2Hi) - k * kLn2Lo;
    double p = 1.0 / 6227020800.0;  // 1/13!
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    // 2^k as two factors 2^k1 * 2^k2 (each a normal double for |k| <= 1076).
    const int64_t k1 = ki >> 1;
    const int64_t k2 = ki - k1;
    // The exponent bits shifted as unsigned: for a NaN x, k is garbage and a signed shift of it undefined.
    return p * bits_to_double(static_cast<int64_t>(static_cast<uint64_t>(k1 + 1023) << 52)) *
           bits_to_double(static_cast<int64_t>(static_cast<uint64_t>(k2 + 1023) << 52));
}

}  // namespace lmroute
