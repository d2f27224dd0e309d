// hwlab: TRIP integer matmul with exact int32 accumulation through dp4a (sim/trip.py integer_matmul).
//
// acc[m, n] = sum_k x[m, k] * w[n, k], x int8 [M, K] (row-major, read as int32 words of 4 codes),
// w int4 two's complement nibbles [N, K / 8] uint32 words (element k at bits 4 (k % 8) of word k / 8).
// Unpacking a weight word: (w ^ 0x08080808) & 0x0F0F0F0F gives the even nibbles as bytes n + 8 (0..15),
// the same of (w >> 4) the odd ones; two PRMTs put them back in element order, so each word gives
// two unsigned byte quadruples for dp4a.s32.u32 against the activation words. The +8 offset adds
// 8 * sum_k x[m, k], computed once per block (dp4a against 0x01010101) and subtracted at the end:
// every step is an exact integer operation (|acc| <= 1905 K < 2^31 is checked by the caller).
// Mapping: one warp per weight row (grid-stride), lanes split K in 32-element (16-byte) steps,
// MB activation rows per pass (the row's weights are re-read from L1 for the next MB rows), warp
// shuffle reduction. No includes: compiles after prelude.cuh (cupy_kernels.kernel_source) with NVRTC
// (cupy.RawModule) and with nvcc -std=c++17.

namespace hwtrip {

constexpr unsigned FULL_MASK = 0xffffffffu;
constexpr int MAX_M = 64;

HW_DEV int dp4a_su(int a, unsigned b, int c) {  // signed bytes of a times unsigned bytes of b, plus c
  int d;
  asm("dp4a.s32.u32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}
HW_DEV int dp4a_ss(int a, int b, int c) {
  int d;
  asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}
HW_DEV unsigned prmt(unsigned a, unsigned b, unsigned sel) {
  unsigned d;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(sel));
  return d;
}
// Word w of 8 nibbles -> lo = bytes (n0..n3) + 8, hi = bytes (n4..n7) + 8.
HW_DEV void unpack(unsigned w, unsigned& lo, unsigned& hi) {
  const unsigned even = (w ^ 0x08080808u) & 0x0F0F0F0Fu;         // n0, n2, n4, n6
  const unsigned odd = ((w >> 4) ^ 0x08080808u) & 0x0F0F0F0Fu;   // n1, n3, n5, n7
  lo = prmt(even, odd, 0x5140u);  // even.b0, odd.b0, even.b1, odd.b1
  hi = prmt(even, odd, 0x7362u);  // even.b2, odd.b2, even.b3, odd.b3
}

}  // namespace hwtrip

template <int MB>
__global__ void __launch_bounds__(256) trip_dp4a(const int* __restrict__ x, const unsigned* __restrict__ w,
                                                int* __restrict__ out, int M, int N, int K) {
  __shared__ int xsum[hwtrip::MAX_M];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  const int xwords = K / 4;
  for (int m = warp; m < M; m += warps) {
    int s = 0;
    for (int i = lane; i < xwords; i += 32) s = hwtrip::dp4a_ss(__ldg(x + (long long)m * xwords + i), 0x01010101, s);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(hwtrip::FULL_MASK, s, o);
    if (lane == 0) xsum[m] = s;
  }
  __syncthreads();
  const int steps = K / 32;  // 16-byte weight vectors per row
  for (int n = blockIdx.x * warps + warp; n < N; n += gridDim.x * warps) {
    const uint4* wr = reinterpret_cast<const uint4*>(w + (long long)n * (K / 8));
    for (int m0 = 0; m0 < M; m0 += MB) {
      int acc[MB];
#pragma unroll
      for (int mm = 0; mm < MB; ++mm) acc[mm] = 0;
#pragma unroll 2
      for (int i = lane; i < steps; i += 32) {
        const uint4 wv = __ldg(wr + i);
        unsigned b[8];
        hwtrip::unpack(wv.x, b[0], b[1]);
        hwtrip::unpack(wv.y, b[2], b[3]);
        hwtrip::unpack(wv.z, b[4], b[5]);
        hwtrip::unpack(wv.w, b[6], b[7]);
#pragma unroll
        for (int mm = 0; mm < MB; ++mm) {
          const int m = min(m0 + mm, M - 1);  // rows past M repeat the last one; never stored
          const int4* xr = reinterpret_cast<const int4*>(x + (long long)m * xwords) + 2 * i;
          const int4 x0 = __ldg(xr), x1 = __ldg(xr + 1);
          int a = acc[mm];
          a = hwtrip::dp4a_su(x0.x, b[0], a);
          a = hwtrip::dp4a_su(x0.y, b[1], a);
          a = hwtrip::dp4a_su(x0.z, b[2], a);
          a = hwtrip::dp4a_su(x0.w, b[3], a);
          a = hwtrip::dp4a_su(x1.x, b[4], a);
          a = hwtrip::dp4a_su(x1.y, b[5], a);
          a = hwtrip::dp4a_su(x1.z, b[6], a);
          a = hwtrip::dp4a_su(x1.w, b[7], a);
          acc[mm] = a;
        }
      }
#pragma unroll
      for (int mm = 0; mm < MB; ++mm) {
        int a = acc[mm];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) a += __shfl_xor_sync(hwtrip::FULL_MASK, a, o);
        if (lane == 0 && m0 + mm < M) out[(long long)(m0 + mm) * N + n] = a - 8 * xsum[m0 + mm];
      }
    }
  }
}

template __global__ void trip_dp4a<1>(const int*, const unsigned*, int*, int, int, int);
template __global__ void trip_dp4a<2>(const int*, const unsigned*, int*, int, int, int);
template __global__ void trip_dp4a<4>(const int*, const unsigned*, int*, int, int, int);
template __global__ void trip_dp4a<8>(const int*, const unsigned*, int*, int, int, int);
