// Prints the bits of every fast_math kernel's result on deterministic pseudo-random inputs of many lengths
// (tools/check_portable.sh diffs a vector-type build against the portable build).
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <limits>
#include <vector>

#include "fast_math.h"
#include "rng.h"

int main() {
    edgeai::Rng rng(42);
    for (size_t n : {0, 1, 7, 8, 9, 31, 32, 33, 100, 1000, 49152}) {
        std::vector<float> x(n), out(n);
        for (auto& v : x) v = static_cast<float>((rng.uniform() - 0.5) * 60.0);
        if (n > 3) x[n / 2] = -std::numeric_limits<float>::infinity();
        bool bad = false;
        const float mx = edgeai::scan_logits(x.data(), n, bad);
        const double z = edgeai::exp_shifted_sum(x.data(), n, mx, 0.7f, out.data());
        uint32_t mx_bits;
        uint64_t z_bits, sum = 0;
        std::memcpy(&mx_bits, &mx, 4);
        std::memcpy(&z_bits, &z, 8);
        for (float o : out) {
            uint32_t b;
            std::memcpy(&b, &o, 4);
            sum = sum * 1000003u + b;
        }
        const size_t blocks = n - n % edgeai::kScanBlock;
        std::printf("%zu %d %08" PRIx32 " %016" PRIx64 " %016" PRIx64 " %zu %08" PRIx32 "\n", n, bad, mx_bits, z_bits,
                    sum, edgeai::next_block_above(x.data(), 0, blocks, 25.0f),
                    static_cast<uint32_t>(edgeai::max_value(x.data(), n) == mx));
    }
    return 0;
}
