// Small numeric kernels shared by the sampler and beam search.
//
// Written so that every platform computes bit-identical results: only IEEE basic operations, no FMA
// contraction (setup.py passes -ffp-contract=off), and sums accumulated in a fixed order (8 lanes,
// whatever the vector width the machine runs). That is what makes "same seed, same logits -> same
// token" hold across machines. The kernels use GCC/Clang vector types, with a plain C++17 fallback that
// computes the same bits (fast_math.cpp); on x86-64 Linux each is also compiled for AVX2 and AVX-512 and the
// loader picks the widest the CPU has (no -march=native).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace edgeai {

// exp(x) for float, relative error about 2e-7; exactly 0 below -87.3 (so masked -inf logits weigh 0).
// Cody-Waite range reduction and a degree-6 polynomial.
inline float fast_exp(float x) {
    float xc = x < 88.0f ? x : 88.0f;
    xc = xc > -87.0f ? xc : -87.0f;
    float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest integer
    float r = (xc - n * 0.693145751953125f) - n * 1.42860682030941723e-6f;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof(scale));
    return x < -87.3f ? 0.0f : p * scale;
}

// The maximum of x[0..n); -inf for n == 0.
float max_value(const float* x, size_t n);

// The maximum, and in `bad` whether any value is NaN or +inf (-inf is allowed: it marks a banned token).
float scan_logits(const float* x, size_t n, bool& bad);

inline bool has_nan_or_posinf(const float* x, size_t n) {
    bool bad;
    scan_logits(x, n, bad);
    return bad;
}

// out[i] = exp((x[i] - shift) * scale); returns their sum in double.
double exp_shifted_sum(const float* x, size_t n, float shift, float scale, float* out);

// Index of the first 32-aligned block at or after `from` (a multiple of 32) holding a value > threshold;
// n when none does. Lets top-k selection skip most of the vocabulary with one compare per vector.
size_t next_block_above(const float* x, size_t from, size_t n, float threshold);
constexpr size_t kScanBlock = 32;

}  // namespace edgeai
