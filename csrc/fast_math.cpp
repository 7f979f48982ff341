#include "fast_math.h"

#include <limits>

// Two implementations with the same lane-wise IEEE arithmetic and the same summation order, so they give
// bit-identical results: GCC/Clang vector types (one instruction per operation; on x86-64 Linux with GCC
// also cloned for AVX2 and AVX-512, picked at load time), and plain C++17 loops over eight lanes for other
// compilers (MSVC) or when EDGEAI_PORTABLE_SIMD is defined (tools/check_portable.sh compares the two).
#if (defined(__GNUC__) || defined(__clang__)) && !defined(EDGEAI_PORTABLE_SIMD)
#define EDGEAI_VECTOR_TYPES 1
#endif

#if defined(EDGEAI_VECTOR_TYPES) && defined(__x86_64__) && defined(__linux__) && !defined(__clang__)
#define EDGEAI_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define EDGEAI_MULTIVERSION
#endif

namespace edgeai {

#ifdef EDGEAI_VECTOR_TYPES
namespace {

typedef float f32x8 __attribute__((vector_size(32)));
typedef int32_t i32x8 __attribute__((vector_size(32)));
typedef double f64x8 __attribute__((vector_size(64)));

inline f32x8 load8(const float* p) {
    f32x8 v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}

inline f32x8 splat(float x) { return f32x8{x, x, x, x, x, x, x, x}; }

inline f32x8 vmax(f32x8 a, f32x8 b) { return a > b ? a : b; }

// The same arithmetic as fast_exp, eight lanes at a time.
inline f32x8 fast_exp8(f32x8 x) {
    f32x8 xc = x < splat(88.0f) ? x : splat(88.0f);
    xc = xc > splat(-87.0f) ? xc : splat(-87.0f);
    f32x8 n = (xc * splat(1.44269504088896341f) + splat(12582912.0f)) - splat(12582912.0f);
    f32x8 r = (xc - n * splat(0.693145751953125f)) - n * splat(1.42860682030941723e-6f);
    f32x8 p = splat(1.0f / 720.0f);
    p = p * r + splat(1.0f / 120.0f);
    p = p * r + splat(1.0f / 24.0f);
    p = p * r + splat(1.0f / 6.0f);
    p = p * r + splat(0.5f);
    p = p * r + splat(1.0f);
    p = p * r + splat(1.0f);
    i32x8 bits = (__builtin_convertvector(n, i32x8) + 127) << 23;
    f32x8 scale;
    std::memcpy(&scale, &bits, sizeof(scale));
    return x < splat(-87.3f) ? splat(0.0f) : p * scale;
}

inline float hmax(f32x8 v) {
    float m = v[0];
    for (int j = 1; j < 8; ++j) m = v[j] > m ? v[j] : m;
    return m;
}

}  // namespace

EDGEAI_MULTIVERSION
float max_value(const float* x, size_t n) {
    const float ninf = -std::numeric_limits<float>::infinity();
    f32x8 m = splat(ninf);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) m = vmax(load8(x + i), m);
    float r = hmax(m);
    for (; i < n; ++i) r = x[i] > r ? x[i] : r;
    return r;
}

EDGEAI_MULTIVERSION
float scan_logits(const float* x, size_t n, bool& bad) {
    const float inf = std::numeric_limits<float>::infinity();
    f32x8 m = splat(-inf);
    i32x8 flags = {0, 0, 0, 0, 0, 0, 0, 0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        f32x8 v = load8(x + i);
        m = vmax(v, m);
        flags |= ~(v < splat(inf));  // comparison lanes are -1 when true: NaN and +inf set bits
    }
    float r = hmax(m);
    int32_t f = 0;
    for (int j = 0; j < 8; ++j) f |= flags[j];
    for (; i < n; ++i) {
        r = x[i] > r ? x[i] : r;
        f |= !(x[i] < inf);
    }
    bad = f != 0;
    return r;
}

EDGEAI_MULTIVERSION
double exp_shifted_sum(const float* x, size_t n, float shift, float scale, float* out) {
    f64x8 acc = {0, 0, 0, 0, 0, 0, 0, 0};  // lane j sums elements j, j+8, j+16, ... in order
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        f32x8 e = fast_exp8((load8(x + i) - splat(shift)) * splat(scale));
        std::memcpy(out + i, &e, sizeof(e));
        acc += __builtin_convertvector(e, f64x8);
    }
    double lanes[8];
    for (int j = 0; j < 8; ++j) lanes[j] = acc[j];
    for (size_t j = 0; i < n; ++i, ++j) {
        out[i] = fast_exp((x[i] - shift) * scale);
        lanes[j] += out[i];
    }
    return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
}

EDGEAI_MULTIVERSION
size_t next_block_above(const float* x, size_t from, size_t n, float threshold) {
    const f32x8 t = splat(threshold);
    for (size_t i = from; i + kScanBlock <= n; i += kScanBlock) {
        i32x8 hit = (load8(x + i) > t) | (load8(x + i + 8) > t) | (load8(x + i + 16) > t) | (load8(x + i + 24) > t);
        int32_t any = 0;
        for (int j = 0; j < 8; ++j) any |= hit[j];
        if (any) return i;
    }
    return n;
}

#else  // portable: the same arithmetic, lane by lane

namespace {
constexpr size_t kLanes = 8;
}

float max_value(const float* x, size_t n) {
    float m[kLanes];
    for (auto& v : m) v = -std::numeric_limits<float>::infinity();
    size_t i = 0;
    for (; i + kLanes <= n; i += kLanes)
        for (size_t j = 0; j < kLanes; ++j) m[j] = x[i + j] > m[j] ? x[i + j] : m[j];
    float r = m[0];
    for (size_t j = 1; j < kLanes; ++j) r = m[j] > r ? m[j] : r;
    for (; i < n; ++i) r = x[i] > r ? x[i] : r;
    return r;
}

float scan_logits(const float* x, size_t n, bool& bad) {
    const float inf = std::numeric_limits<float>::infinity();
    bad = false;
    for (size_t i = 0; i < n; ++i) bad = bad || !(x[i] < inf);  // NaN and +inf
    return max_value(x, n);
}

double exp_shifted_sum(const float* x, size_t n, float shift, float scale, float* out) {
    double lanes[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};  // lane j sums elements j, j+8, j+16, ... in order
    size_t i = 0;
    for (; i + kLanes <= n; i += kLanes)
        for (size_t j = 0; j < kLanes; ++j) {
            out[i + j] = fast_exp((x[i + j] - shift) * scale);
            lanes[j] += out[i + j];
        }
    for (size_t j = 0; i < n; ++i, ++j) {
        out[i] = fast_exp((x[i] - shift) * scale);
        lanes[j] += out[i];
    }
    return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
}

size_t next_block_above(const float* x, size_t from, size_t n, float threshold) {
    for (size_t i = from; i + kScanBlock <= n; i += kScanBlock)
        for (size_t j = 0; j < kScanBlock; ++j)
            if (x[i + j] > threshold) return i;
    return n;
}

#endif  // EDGEAI_VECTOR_TYPES

}  // namespace edgeai
