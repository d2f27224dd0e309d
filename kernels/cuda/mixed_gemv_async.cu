// hwlab: M = 1 GEMV for mixed_2_4 (formats/mixed.py) with asynchronous dequantization.
//
// y[n] = row_scale[n] * sum_g code[n,g] * (sum_{k in g} q[n,k] x[k] - zero[n,g] * sum_{k in g} x[k])
// (the algebra of triton_kernels.gemv_mixed_kernel; fp32 throughout, output saturated to fp16).
//
// Mapping: one warp per row (grid-stride over rows); the block's warps share x.
//  * x is staged once per block in shared memory as float, pre-scaled per element parity
//    (even k: x * 256, odd k: x * 16), with each group padded by 4 floats so that the lanes of a
//    warp (lane = group) read it without bank conflicts; the per-group sums of the scaled and the
//    plain x (for the placement offsets and the zero points) are computed once per block in double.
//  * A row's packed arrays (codes4, codes2 as 16-byte pieces; group_bits, zeros4, zeros2 and, when
//    G % 4 == 0, the scale codes as 4-byte words) are copied with cp.async into one of STAGES
//    per-warp shared buffers while the warp decodes the row before it (STAGES = 2: double
//    buffering). The copy is coalesced (consecutive lanes take consecutive 16-byte pieces of a
//    stream) and transposes the pieces so that piece q of the r-th 4-bit (2-bit) group lands in slot
//    q * n4 + r (q * n2 + r): the reading lanes then hit consecutive slots.
//  * Decode: lane = group within a chunk of 32 groups (the group_bits word of the chunk gives the
//    lane its width and, by popcount, its rank in the 4-bit or 2-bit stream). Both widths run one
//    instruction stream (no divergence): per pair of elements one funnel-shift rotation (per-lane
//    amount) brings the two codes to mantissa bits 15 and 19 (4-bit) or 15 and 17 (2-bit); each code
//    is then a LOP3 ((r & mask) | 1.0f) giving f = 1 + q 2^(t-23), and an FFMA f * xh accumulates
//    xh + q x (exact product: f has <= 9 significant bits, xh 11). The offsets sum_k xh are
//    subtracted once per group.
// No includes: compiles after prelude.cuh (cupy_kernels.kernel_source) with NVRTC (cupy.RawModule) and
// with nvcc -std=c++17.

namespace hw {

constexpr unsigned FULL_MASK = 0xffffffffu;
constexpr unsigned FP32_ONE = 0x3F800000u;
constexpr float FP16_MAX = 65504.0f;
constexpr float EVEN_SCALE = 256.0f;  // 2^(23-15): even elements sit at mantissa bit 15
constexpr float ODD_SCALE = 16.0f;    // 2^(23-19): odd 4-bit elements at bit 19 (2-bit: bit 17, x4 after)
constexpr int X_PAD = 4;              // floats of padding after each group of x in shared memory

HW_DEV unsigned smem_u32(const void* p) {
  unsigned r;
  asm volatile("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(r) : "l"(p));
  return r;
}
HW_DEV void cp_async16(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smem_u32(dst)), "l"(src) : "memory");
}
HW_DEV void cp_async4(void* dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(smem_u32(dst)), "l"(src) : "memory");
}
HW_DEV void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
HW_DEV void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }

HW_DEV unsigned rotl(unsigned v, unsigned s) {
  unsigned r;
  asm("shf.l.wrap.b32 %0, %1, %1, %2;" : "=r"(r) : "r"(v), "r"(s));
  return r;
}
HW_DEV unsigned umulhi64(unsigned i, unsigned long long magic) {  // floor(i / d), magic = ceil(2^32 / d)
  return (unsigned)(((unsigned long long)i * magic) >> 32);
}

struct Shape {
  int N, K, G, gs, n4, n2, FW, Z4W, Z2W, SCW, P4, P2, Q4, Q2, stage_bytes;
  unsigned long long magic4, magic2;
};

// Issue the cp.async copies of row n into stage buffer st (all lanes of the warp).
HW_DEV void issue_row(unsigned char* st, int n, const Shape& s, const unsigned char* __restrict__ codes4,
                      const unsigned char* __restrict__ codes2, const unsigned* __restrict__ flags,
                      const unsigned* __restrict__ zeros4, const unsigned* __restrict__ zeros2,
                      const unsigned char* __restrict__ scales, int lane) {
  const int pieces = s.P4 + s.P2;
  const int words = s.FW + s.Z4W + s.Z2W + s.SCW;
  const unsigned char* c4 = codes4 + (long long)n * s.P4 * 16;
  const unsigned char* c2 = codes2 + (long long)n * s.P2 * 16;
  unsigned char* meta = st + pieces * 16;
  for (int i = lane; i < s.P4; i += 32) {  // 4-bit stream: piece i = (rank r, part q) -> slot q * n4 + r
    const unsigned r = umulhi64((unsigned)i, s.magic4);
    const unsigned q = (unsigned)i - r * (unsigned)s.Q4;
    cp_async16(st + (q * (unsigned)s.n4 + r) * 16u, c4 + i * 16);
  }
  unsigned char* st2 = st + s.P4 * 16;
  for (int i = lane; i < s.P2; i += 32) {  // 2-bit stream: slot q * n2 + r
    const unsigned r = umulhi64((unsigned)i, s.magic2);
    const unsigned q = (unsigned)i - r * (unsigned)s.Q2;
    cp_async16(st2 + (q * (unsigned)s.n2 + r) * 16u, c2 + i * 16);
  }
  for (int j = lane; j < words; j += 32) {  // group_bits, zeros4, zeros2, scale codes: 4-byte words
    const unsigned* src;
    if (j < s.FW) {
      src = flags + (long long)n * s.FW + j;
    } else if (j < s.FW + s.Z4W) {
      src = zeros4 + (long long)n * s.Z4W + (j - s.FW);
    } else if (j < s.FW + s.Z4W + s.Z2W) {
      src = zeros2 + (long long)n * s.Z2W + (j - s.FW - s.Z4W);
    } else {
      src = reinterpret_cast<const unsigned*>(scales) + (long long)n * s.SCW + (j - s.FW - s.Z4W - s.Z2W);
    }
    cp_async4(meta + 4 * j, src);
  }
}

// Decode and multiply the row staged in st; returns the warp's sum (valid in every lane).
HW_DEV float row_dot(const unsigned char* st, int n, const Shape& s, const float* xh, const float* ohe,
                     const float* oho, const float* xsum, const unsigned char* __restrict__ scales, int lane) {
  const unsigned* fl = reinterpret_cast<const unsigned*>(st + (s.P4 + s.P2) * 16);
  const unsigned* z4 = fl + s.FW;
  const unsigned* z2 = z4 + s.Z4W;
  const unsigned char* sc8 = reinterpret_cast<const unsigned char*>(z2 + s.Z2W);
  const unsigned below = (1u << lane) - 1u;
  const int blocks = s.gs / 64;
  float acc = 0.0f;
  int base4 = 0;
  for (int c = 0; c * 32 < s.G; ++c) {
    const unsigned fw = fl[c];
    const int g = c * 32 + lane;
    const bool is4 = (fw >> lane) & 1u;
    const int r4 = base4 + __popc(fw & below);
    const int r2 = g - r4;
    base4 += __popc(fw);
    if (g < s.G) {
      float zero, code;
      if (is4) {
        zero = (float)((z4[r4 >> 3] >> ((r4 & 7) * 4)) & 15u);
      } else {
        zero = (float)((z2[r2 >> 4] >> ((r2 & 15) * 2)) & 3u);
      }
      if (s.SCW) {
        code = (float)sc8[g];
      } else {
        code = (float)__ldg(scales + (long long)n * s.G + g);
      }
      const unsigned char* cb = is4 ? st + r4 * 16 : st + s.P4 * 16 + r2 * 16;
      const int cstride = (is4 ? s.n4 : s.n2) * 16;
      unsigned rot[8];
#pragma unroll
      for (int p = 0; p < 8; ++p) rot[p] = is4 ? (unsigned)(15 - 8 * (p & 3)) & 31u : (unsigned)(15 - 4 * p) & 31u;
      const unsigned mask_even = is4 ? (15u << 15) : (3u << 15);
      const unsigned mask_odd = is4 ? (15u << 19) : (3u << 17);
      const unsigned one = FP32_ONE;
      const float* xg = xh + g * (s.gs + X_PAD);
      float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
      for (int b = 0; b < blocks; ++b) {
        const uint4 p0 = *reinterpret_cast<const uint4*>(cb + (is4 ? 2 * b : b) * cstride);
        const uint4 p1 = *reinterpret_cast<const uint4*>(cb + (is4 ? 2 * b + 1 : b) * cstride);
        unsigned lo[4], hi[4];
        lo[0] = p0.x;
        hi[0] = is4 ? p0.y : p0.x;
        lo[1] = is4 ? p0.z : p0.y;
        hi[1] = is4 ? p0.w : p0.y;
        lo[2] = is4 ? p1.x : p0.z;
        hi[2] = is4 ? p1.y : p0.z;
        lo[3] = is4 ? p1.z : p0.w;
        hi[3] = is4 ? p1.w : p0.w;
#pragma unroll
        for (int it = 0; it < 4; ++it) {
          const float4* xv = reinterpret_cast<const float4*>(xg + b * 64 + it * 16);
          float xr[16];
#pragma unroll
          for (int v = 0; v < 4; ++v) {
            const float4 t = xv[v];
            xr[4 * v] = t.x;
            xr[4 * v + 1] = t.y;
            xr[4 * v + 2] = t.z;
            xr[4 * v + 3] = t.w;
          }
#pragma unroll
          for (int p = 0; p < 8; ++p) {
            const unsigned r = rotl(p < 4 ? lo[it] : hi[it], rot[p]);
            const float fe = __uint_as_float((r & mask_even) | one);
            const float fo = __uint_as_float((r & mask_odd) | one);
            if (it & 1) {
              a2 = fmaf(fe, xr[2 * p], a2);
              a3 = fmaf(fo, xr[2 * p + 1], a3);
            } else {
              a0 = fmaf(fe, xr[2 * p], a0);
              a1 = fmaf(fo, xr[2 * p + 1], a1);
            }
          }
        }
      }
      const float lam = is4 ? 1.0f : 4.0f;  // 2-bit odd codes sit at bit 17: q x / 4
      float dot = ((a0 + a2) - ohe[g]) + lam * ((a1 + a3) - oho[g]);
      dot = fmaf(-zero, xsum[g], dot);
      acc = fmaf(dot, code, acc);
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(FULL_MASK, acc, o);
  return acc;
}

}  // namespace hw

// Dynamic shared memory: x table (G * (gs + 4) floats), ohe, oho, xsum (G floats each), rounded up to
// 16 bytes, then warps * STAGES stage buffers of stage_bytes (a multiple of 16).
template <int STAGES>
__global__ void __launch_bounds__(256, 2) mixed_gemv_async(
    const unsigned short* __restrict__ x, const unsigned char* __restrict__ codes4,
    const unsigned char* __restrict__ codes2, const unsigned* __restrict__ flags,
    const unsigned* __restrict__ zeros4, const unsigned* __restrict__ zeros2,
    const unsigned char* __restrict__ scales, const unsigned short* __restrict__ row_scales,
    unsigned short* __restrict__ out, int N, int K, int G, int gs, int n4, int FW, int Z4W, int Z2W, int SCW,
    unsigned long long magic4, unsigned long long magic2, int stage_bytes, float value_scale) {
  extern __shared__ __align__(16) unsigned char smem[];
  hw::Shape s;
  s.N = N; s.K = K; s.G = G; s.gs = gs; s.n4 = n4; s.n2 = G - n4;
  s.FW = FW; s.Z4W = Z4W; s.Z2W = Z2W; s.SCW = SCW;
  s.Q4 = gs / 32; s.Q2 = gs / 64; s.P4 = n4 * s.Q4; s.P2 = s.n2 * s.Q2;
  s.stage_bytes = stage_bytes; s.magic4 = magic4; s.magic2 = magic2;

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  float* xh = reinterpret_cast<float*>(smem);
  float* ohe = xh + G * (gs + hw::X_PAD);
  float* oho = ohe + G;
  float* xsum = oho + G;
  const int table_bytes = ((G * (gs + hw::X_PAD) + 3 * G) * 4 + 15) & ~15;
  unsigned char* mine = smem + table_bytes + (long long)warp * STAGES * stage_bytes;

  const int gw = blockIdx.x * warps + warp;
  const int tw = gridDim.x * warps;
  const int rows = gw < N ? (N - 1 - gw) / tw + 1 : 0;

  // Prologue: the first STAGES - 1 rows are in flight while x is staged.
#pragma unroll
  for (int j = 0; j < STAGES - 1; ++j) {
    if (j < rows) hw::issue_row(mine + j * stage_bytes, gw + j * tw, s, codes4, codes2, flags, zeros4, zeros2, scales, lane);
    hw::cp_async_commit();
  }

  const int Kp = G * gs;
  for (int k = threadIdx.x; k < Kp; k += blockDim.x) {
    const float v = k < K ? half_to_float(x[k]) : 0.0f;
    const int g = k / gs;
    xh[g * (gs + hw::X_PAD) + (k - g * gs)] = v * ((k & 1) ? hw::ODD_SCALE : hw::EVEN_SCALE);
  }
  for (int g = warp; g < G; g += warps) {
    double se = 0.0, so = 0.0;
    for (int j = lane; j < gs; j += 32) {
      const int k = g * gs + j;
      const double v = k < K ? (double)half_to_float(x[k]) : 0.0;
      if (j & 1) so += v; else se += v;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      se += __shfl_xor_sync(hw::FULL_MASK, se, o);
      so += __shfl_xor_sync(hw::FULL_MASK, so, o);
    }
    if (lane == 0) {
      ohe[g] = (float)(se * (double)hw::EVEN_SCALE);
      oho[g] = (float)(so * (double)hw::ODD_SCALE);
      xsum[g] = (float)(se + so);
    }
  }
  __syncthreads();

  for (int j = 0; j < rows; ++j) {
    const int ahead = j + STAGES - 1;
    if (ahead < rows)
      hw::issue_row(mine + (ahead % STAGES) * stage_bytes, gw + ahead * tw, s, codes4, codes2, flags, zeros4, zeros2,
                    scales, lane);
    hw::cp_async_commit();
    const int n = gw + j * tw;
    const float rs = half_to_float(__ldg(row_scales + n));  // used after the row: its latency is hidden
    hw::cp_async_wait<STAGES - 1>();
    __syncwarp();
    const float acc = hw::row_dot(mine + (j % STAGES) * stage_bytes, n, s, xh, ohe, oho, xsum, scales, lane);
    if (lane == 0) {
      const float y = fminf(fmaxf(acc * rs * value_scale, -hw::FP16_MAX), hw::FP16_MAX);
      out[n] = float_to_half(y);
    }
    __syncwarp();
  }
}

template __global__ void mixed_gemv_async<2>(const unsigned short*, const unsigned char*, const unsigned char*,
                                             const unsigned*, const unsigned*, const unsigned*, const unsigned char*,
                                             const unsigned short*, unsigned short*, int, int, int, int, int, int,
                                             int, int, int, unsigned long long, unsigned long long, int, float);
template __global__ void mixed_gemv_async<3>(const unsigned short*, const unsigned char*, const unsigned char*,
                                             const unsigned*, const unsigned*, const unsigned*, const unsigned char*,
                                             const unsigned short*, unsigned short*, int, int, int, int, int, int,
                                             int, int, int, unsigned long long, unsigned long long, int, float);
