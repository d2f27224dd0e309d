// hwlab: y = x @ dequant(W)^T for small batches (M <= 64) on tensor cores, the weights decoded straight into
// the registers of mma.sync's A operand (no shared-memory round trip for weights).
//
// Operands. x fp16 [M, K] (row-major); codes: B-bit integer codes (B = 2, 4, 8) in uint32 words [N, row_words],
// code k of a row at bits B (k % E) of word k / E (E = 32 / B codes a word, hwlab's "words" packing); a float
// scale per (row, group of G codes) (fp16 or fp32, row stride s_row_stride: 0 = one row for all); optional
// ZB-bit zero points (a little-endian stream of fields per row, zero_words words a row). A weight is
// ((code ^ FLIP) - FLIP - zero) * scale * scale_unit * value_scale (hwlab.kernels.dispatch.split_value_scale), or
// with TAB = 1, table[code] * scale * scale_unit * value_scale (the table's entries rounded to binary16).
//
// Product. y^T = W x^T: mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 (PTX ISA, "Warp-level matrix
// multiply-accumulate instructions", "Matrix Fragments for mma.m16n8k16 with floating point type") with A = 16
// weight rows x 16 of K and B = x^T (16 of K x 8 batch rows; NJ = 2, 4 or 8 such tiles for up to 16, 32 or 64
// rows). Lane l, g = l / 4, t = l % 4 holds a0 = A(g, 2t..2t+1), a1 = A(g+8, 2t..2t+1), a2 = A(g, 2t+8..2t+9),
// a3 = A(g+8, 2t+8..2t+9); b0 = B(2t..2t+1, g), b1 = B(2t+8..2t+9, g); c0, c1 = D(g, 2t..2t+1), c2, c3 =
// D(g+8, 2t..2t+1).
//
// Chunks and the K permutation. A warp owns MT tiles of 16 rows. Per chunk each lane loads V consecutive words
// (a 4V-byte vector) of row g and of row g+8 of each tile: the quad (t = 0..3) covers 4V consecutive words,
// CK = 4 V E codes (int4 with V = 4: 128 codes, one group of g128). Each word decodes into E/2 fp16x2 "pairs"
// (pair p = codes p and p + E/2 of the word, low and high half: the magic-number decode of
// hwlab.kernels.half_pairs.int_pair_constants). The lane's pairs P = q E/2 + p (word q of its V) are its A
// registers in order: mma s of the chunk takes P = 2s as a0/a1 and P = 2s+1 as a2/a3. So logical k
// 2t + h + 8r of mma s is physical code (V t + q) E + p + h E/2 of the chunk, P = 2s + r, q = P / (E/2),
// p = P % (E/2) (hwlab.kernels.cupy_kernels.mma_fragment_k, its Python mirror). A dot product may add its
// terms in any order, so x is staged in shared memory once per block already permuted into B-fragment order,
// only for the R = min(M, 8) batch rows a tile has (R = 8 for two tiles or more): word
// ((((i NJ + j) (S/2) + P / 4) 4 R + lane) 4 + P % 4) of the tile (chunk i of the block, batch tile j, S = V E / 4
// mmas a chunk, lane < 4 R) holds x[8j + g][chunk k (V t + q) E + p + (0, E/2)], and each lane of the 4 R that
// hold a staged row reads its b0, b1 of two mmas with one conflict-free LDS.128 (16 R contiguous words); the other
// lanes' B registers are zero (batch rows M..7 of the one tile). So a GEMV (M = 1) stages 2 K bytes.
//
// Table codes (TAB = 1: 4-bit codes of a table of at most 16 entries, one member: nf4, the FP4 splits, flint4,
// shift4, a user's table). Pair p of a word is its byte p, codes 2p and 2p + 1 (the K permutation above with
// p + h E/2 replaced by 2p + h). Each block expands the table's 16 binary16 entries into the 256 fp16x2 pairs of a
// byte, 32 copies side by side (32 KB of shared memory before the x tile): lane l reads pair e at word 32 e + l,
// in its own bank, so a pair costs a byte extract, an address and one conflict-free LDS.32 (no arithmetic).
//
// Numerics (as triton_kernels.half_dot_loop): codes decode exactly to fp16 integers, the tensor cores sum a
// chunk's products in fp32 into a zeroed accumulator, and acc += chunk_acc * (scale * scale_unit) (FFMA) per
// chunk (a chunk lies in one group); y = acc * value_scale, saturated at +-out_max (NaN stays NaN) and rounded
// to fp16 once.
//
// Parallelism. A block of `warps` warps owns a range of chunks_per_block chunks (split-K: `splits` blocks a row
// block, adjacent in blockIdx.x) and stages x for that range once (one barrier). It then loops over row blocks of
// 16 MT warps rows (persistent: about two blocks an SM, so x is staged once per block, not once per row block),
// each warp streaming its rows: the loads of the next D chunks are issued back to back (a burst of 4 D V
// contiguous words a row) and in flight while it decodes the current D (two register sets that swap roles each
// D chunks, so nothing is copied; the next row block's first D are issued before this one's stores). A lane's row
// pointers are set once per row block and a chunk's addresses are offsets from them. With A > 0 stages the code
// words travel by cp.async instead (CUTLASS's multistage pipeline, one warp's own ring): each lane copies its own
// words of chunk i + A - 1 into the ring slot chunk i - 1 left, commits, waits until chunk i has landed and reads
// it (A - 1 chunks in flight without their registers; scales and zero points still come through registers, A sets);
// the ring is A x MT x 2 x 32 x V words a warp, after the table and before the x tile; the group of chunk c is
// c / chunks_per_group by a multiply-high with group_magic = ceil(2^32 / chunks_per_group) (0: one chunk a group;
// exact for c chunks_per_group < 2^32, Granlund and Montgomery, "Division by invariant integers using
// multiplication", PLDI 1994). Split-K blocks add fp32 sums into
// `work` (zeroed) and count their arrivals per row block; the last one reads the sums back (leaving zeros), stores
// y and resets the count (the semaphore of CUTLASS's split-K serial reduction;
// hwlab.kernels.triton_kernels.finish does the same). No includes: compiles after prelude.cuh
// (cupy_kernels.kernel_source) with NVRTC (cupy.RawModule) and with nvcc -std=c++17.

namespace hwmma {

constexpr int MAX_THREADS = 256;  // warps <= 8 a block (hwlab.kernels.cupy_kernels.MMA_WARPS_MAX)
constexpr unsigned HALF_1024X2 = 0x64006400u;  // binary16 1024.0 in both halves: ulp 1 (the magic number)

// ---- binary16 bits (IEEE 754) --------------------------------------------------------------------------------

// Bits of the integer v, 0 < |v| < 2048 (exact in binary16: 11 significant bits).
HW_DEV constexpr unsigned half_of_int(int v) {
  const unsigned sign = v < 0 ? 0x8000u : 0u;
  const int a = v < 0 ? -v : v;
  int e = 0;
  while ((2 << e) <= a) ++e;  // 2^e <= a < 2^(e+1)
  return sign | unsigned((e + 15) << 10) | unsigned((a - (1 << e)) << (10 - e));
}
HW_DEV constexpr unsigned pair_of(unsigned half) { return half | (half << 16); }
// Bits of 2^-p, 0 <= p <= 14 (a normal number: exponent field 15 - p).
HW_DEV constexpr unsigned half_of_pow2_neg(int p) { return unsigned(15 - p) << 10; }

HW_DEV unsigned half_of_int_rt(int v) {  // half_of_int at run time (zero points): cvt.rn.f16.s32, exact here
  unsigned short h;
  asm("cvt.rn.f16.s32 %0, %1;" : "=h"(h) : "r"(v));
  return h;
}
HW_DEV float scale_value(unsigned short s) { return half_to_float(s); }
HW_DEV float scale_value(float s) { return s; }

// ---- PTX wrappers --------------------------------------------------------------------------------------------

HW_DEV unsigned lop3_and_xor(unsigned a, unsigned b, unsigned c) {  // (a & b) ^ c
  unsigned d;
  asm("lop3.b32 %0, %1, %2, %3, 0x6a;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}
HW_DEV unsigned hadd2(unsigned a, unsigned b) {
  unsigned d;
  asm("add.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  return d;
}
HW_DEV unsigned hfma2(unsigned a, unsigned b, unsigned c) {
  unsigned d;
  asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}
// D += A B for one m16n8k16 tile (fp16 inputs, fp32 accumulators).
HW_DEV void mma16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// V consecutive code words from global memory, streamed (ld.global.cs: evict first); zeros where !ok.
template <int V>
HW_DEV void load_words(unsigned (&w)[V], const unsigned* p, bool ok) {
#pragma unroll
  for (int i = 0; i < V; ++i) w[i] = 0u;
  if (!ok) return;
  if constexpr (V == 4) {
    asm("ld.global.cs.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(w[0]), "=r"(w[1]), "=r"(w[2]), "=r"(w[3]) : "l"(p));
  } else if constexpr (V == 2) {
    asm("ld.global.cs.v2.u32 {%0, %1}, [%2];" : "=r"(w[0]), "=r"(w[1]) : "l"(p));
  } else {
    asm("ld.global.cs.u32 %0, [%1];" : "=r"(w[0]) : "l"(p));
  }
}

// ---- the decode: hwlab.kernels.half_pairs.int_pair_constants --------------------------------------------------

// Pair p (codes p and p + E/2 of `word`) as exact fp16 values minus `zero`: the codes (shifted into the low bits
// of each half once the window of 10 / B codes is used up) in the mantissa of binary16 1024 with the sign bit
// flipped (one LOP3), times 2^-p0 and offset by -(2^(10 - p0) + FLIP + zero) (one HFMA2, or one HADD2 at p0 = 0).
template <int B, int FLIP, int ZB>
HW_DEV unsigned int_pair(unsigned word, int p, int zero) {
  constexpr int WINDOW = 10 / B;
  constexpr unsigned MASK = (1u << B) - 1u;
  const int p0 = (p % WINDOW) * B;
  const unsigned src = p < WINDOW ? word : word >> (WINDOW * B);
  const unsigned fields = (MASK << p0) | (MASK << (16 + p0));
  const unsigned magic = HALF_1024X2 | (unsigned(FLIP) << p0) | (unsigned(FLIP) << (16 + p0));
  const unsigned h = lop3_and_xor(src, fields, magic);
  const int offset = -((1 << (10 - p0)) + FLIP);
  unsigned c;
  if constexpr (ZB > 0) c = pair_of(half_of_int_rt(offset - zero));
  else c = pair_of(half_of_int(offset));
  return p0 ? hfma2(h, pair_of(half_of_pow2_neg(p0)), c) : hadd2(h, c);
}

// Physical code (within the lane's E codes of a word) of half h of pair p: the decode's pairing.
template <int E, int TAB>
HW_DEV constexpr int pair_code(int p, int h) {
  return TAB ? 2 * p + h : p + h * (E / 2);
}

// Pair p (byte p: codes 2p, 2p + 1) of `word` from the lane's copy of the expanded table: entry pair e at shared
// byte address lane_table + 128 e. One PRMT (byte p zero-extended: selector nibbles p, then 4, bytes of the zero
// operand), one address (LEA) and one LDS.32.
HW_DEV unsigned table_pair(unsigned word, int p, unsigned lane_table) {
  unsigned byte, pair;
  asm("prmt.b32 %0, %1, 0, %2;" : "=r"(byte) : "r"(word), "r"(0x4440u | unsigned(p)));
  asm volatile("ld.shared.u32 %0, [%1];" : "=r"(pair) : "r"(lane_table + (byte << 7)));
  return pair;
}

// Every thread of the block: the 256 pairs of the table (binary16 entries 2j and 2j + 1 in word j of `table`),
// 32 copies, pair e at words 32 e .. 32 e + 31 of `expanded`.
HW_DEV void expand_table(unsigned* expanded, const unsigned* table) {
  for (int i = threadIdx.x; i < 256 * 32; i += blockDim.x) {
    const int lo = (i >> 5) & 15, hi = i >> 9;
    const unsigned a = (__ldg(table + (lo >> 1)) >> (16 * (lo & 1))) & 0xFFFFu;
    const unsigned b = (__ldg(table + (hi >> 1)) >> (16 * (hi & 1))) & 0xFFFFu;
    expanded[i] = a | (b << 16);
  }
}

// ---- one chunk of one warp: codes, scales, zero points of its rows ----------------------------------------------

template <int V, int MT, int ZB, typename S>
struct Chunk {
  unsigned w[MT][2][V];  // code words of rows g and g + 8 of each tile
  S s[MT][2];            // raw scales (converted when used, so that a load is waited for only then)
  unsigned z[MT][2];     // the word holding the zero point (ZB > 0)
  int zshift;            // its bit offset
};

struct Rows {  // where a lane's rows are
  int N;
  int n0;  // first row of the warp
  int g, t;
};

template <int MT, typename S>
struct RowPointers {  // a lane's rows g and g + 8 of each tile: their first code word (of its quad), scale, zeros
  const unsigned* w[MT][2];
  const S* s[MT][2];
  const unsigned* z[MT][2];
  bool in[MT][2];  // the row lies in [0, N)
};

template <int V, int MT, typename S>
HW_DEV RowPointers<MT, S> row_pointers(const Rows& r, const unsigned* codes, const S* scales, const unsigned* zeros,
                                       int row_words, int s_row_stride, int zero_words) {
  RowPointers<MT, S> p;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = r.n0 + 16 * mt + r.g + 8 * h;
      p.in[mt][h] = row < r.N;
      p.w[mt][h] = codes + (long long)row * row_words + V * r.t;
      p.s[mt][h] = scales + (long long)row * s_row_stride;
      p.z[mt][h] = zeros + (long long)row * zero_words;
    }
  }
  return p;
}

// The group of chunk c by multiply-high (module comment).
HW_DEV int chunk_group(unsigned group_magic, int c) {
  return group_magic ? int(__umulhi(unsigned(c), group_magic)) : c;
}

// The scale and zero-point word of row g + 8 h of tile mt for `group` into ch (zeros where !in).
template <int V, int MT, int ZB, typename S>
HW_DEV void load_row_scale(Chunk<V, MT, ZB, S>& ch, const RowPointers<MT, S>& p, int group, int mt, int h, bool in) {
  ch.s[mt][h] = in ? __ldg(p.s[mt][h] + group) : S(0);
  if constexpr (ZB > 0) ch.z[mt][h] = in ? __ldg(p.z[mt][h] + group * ZB / 32) : 0u;
}

// Chunk c of the lane's rows (zeros where !ok or outside [0, N)): its scales and zero points into ch, its code
// words of row g + 8 h of tile mt, which start at `src`, moved by words(mt, h, src, in) (into ch.w's registers, or
// by cp.async into the warp's ring).
template <int V, int MT, int ZB, int E, typename S, typename Words>
HW_DEV void fetch_chunk(Chunk<V, MT, ZB, S>& ch, const RowPointers<MT, S>& p, unsigned group_magic, int c, bool ok,
                        Words&& words) {
  constexpr int CK = 4 * V * E;
  const int group = chunk_group(group_magic, c);
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const bool in = ok && p.in[mt][h];
      words(mt, h, p.w[mt][h] + c * (CK / E), in);
      load_row_scale<V, MT, ZB, S>(ch, p, group, mt, h, in);
    }
  }
  ch.zshift = (group * ZB) & 31;
}

// Chunk c of the lane's rows into ch, code words included (the register bursts).
template <int V, int MT, int ZB, int E, typename S>
HW_DEV void load_chunk(Chunk<V, MT, ZB, S>& ch, const RowPointers<MT, S>& p, unsigned group_magic, int c, bool ok) {
  fetch_chunk<V, MT, ZB, E, S>(ch, p, group_magic, c, ok, [&](int mt, int h, const unsigned* src, bool in) {
    load_words<V>(ch.w[mt][h], src, in);
  });
}

// ---- the asynchronous copies of code words (A > 0) -----------------------------------------------------------

// V consecutive code words from global into shared memory, asynchronously (PTX ISA, "cp.async": 16 bytes bypass L1
// (.cg), 4 or 8 go through it (.ca)); nothing where !ok (the slot keeps what it held; such words are never decoded
// into a row that is stored).
template <int V>
HW_DEV void copy_words_async(unsigned* dst, const unsigned* src, bool ok) {
  if (!ok) return;
  const unsigned d = unsigned(__cvta_generic_to_shared(dst));
  if constexpr (V == 4) asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(d), "l"(src) : "memory");
  else asm volatile("cp.async.ca.shared.global [%0], [%1], %2;" ::"r"(d), "l"(src), "n"(4 * V) : "memory");
}
HW_DEV void commit_copies() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int PENDING>
HW_DEV void wait_copies() {  // all but the newest PENDING groups of this thread's copies have landed
  asm volatile("cp.async.wait_group %0;" ::"n"(PENDING) : "memory");
}

// The V words at `slot` (the lane's own copy: no other thread writes it) into w.
template <int V>
HW_DEV void read_words(unsigned (&w)[V], const unsigned* slot) {
  if constexpr (V == 4) {
    const uint4 v = *reinterpret_cast<const uint4*>(slot);
    w[0] = v.x, w[1] = v.y, w[2] = v.z, w[3] = v.w;
  } else if constexpr (V == 2) {
    const uint2 v = *reinterpret_cast<const uint2*>(slot);
    w[0] = v.x, w[1] = v.y;
  } else {
    w[0] = *slot;
  }
}

// ---- x staged in B-fragment order ----------------------------------------------------------------------------

// Word of the staged tile holding pair P of lane `lane` (< 4 R) for chunk i (of the block) and batch tile j.
template <int S_, int NJ>
HW_DEV int x_word(int i, int j, int P, int lane, int R) {
  return (((i * NJ + j) * (S_ / 2) + P / 4) * 4 * R + lane) * 4 + P % 4;
}

// The E halves x[m][k .. k + E) as raw bits (0 outside [0, M) x [0, K)).
template <int E>
HW_DEV void load_halves(unsigned (&h)[E], const unsigned short* x, int m, int M, int k, int K, bool vec) {
  const unsigned short* p = x + (long long)m * K + k;
  if (vec && m < M && k + E <= K) {  // E * 2 bytes from a 2E-byte aligned address
    if constexpr (E == 4) {
      const uint2 v = __ldg(reinterpret_cast<const uint2*>(p));
      const unsigned u[2] = {v.x, v.y};
#pragma unroll
      for (int j = 0; j < E; ++j) h[j] = (u[j / 2] >> (16 * (j % 2))) & 0xffffu;
    } else {
#pragma unroll
      for (int q = 0; q < E / 8; ++q) {
        const uint4 v = __ldg(reinterpret_cast<const uint4*>(p) + q);
        const unsigned u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int j = 0; j < 8; ++j) h[8 * q + j] = (u[j / 2] >> (16 * (j % 2))) & 0xffffu;
      }
    }
  } else {
#pragma unroll
    for (int j = 0; j < E; ++j) h[j] = (m < M && k + j < K) ? unsigned(p[j]) : 0u;
  }
}

// Every thread of the block: x for chunks c0 .. c0 + cn into `xs`, permuted (module comment), R rows a tile. Item
// order (chunk, batch tile, word q, g, t), t fastest: 4 R consecutive items fill the 4 R lanes of one 16-byte slot,
// so a warp's stores are contiguous (conflict-free STS.128, or STS.64 for int8's two pairs a word).
template <int B, int TAB, int V, int NJ>
HW_DEV void stage_x(unsigned* xs, const unsigned short* x, int M, int K, int c0, int cn, int R) {
  constexpr int E = 32 / B, CK = 4 * V * E, S_ = V * E / 4, HALF = E / 2;
  const bool vec = ((reinterpret_cast<unsigned long long>(x) | (unsigned long long)K * 2u) & 15u) == 0;
  const int lanes = 4 * R, items = cn * NJ * V * lanes;
  for (int item = threadIdx.x; item < items; item += blockDim.x) {
    const int lane = item % lanes, g = lane >> 2, t = lane & 3, rest = item / lanes;
    const int q = rest % V, j = rest / V % NJ, i = rest / V / NJ;
    unsigned h[E];
    load_halves<E>(h, x, 8 * j + g, M, (c0 + i) * CK + (V * t + q) * E, K, vec);
    auto pair = [&](int p) { return h[pair_code<E, TAB>(p, 0)] | (h[pair_code<E, TAB>(p, 1)] << 16); };
    if constexpr (HALF == 2) {  // pairs 2q, 2q + 1: half a slot
      *reinterpret_cast<uint2*>(xs + x_word<S_, NJ>(i, j, q * HALF, lane, R)) = make_uint2(pair(0), pair(1));
    } else {
#pragma unroll
      for (int p = 0; p < HALF; p += 4) {  // pairs P = q HALF + p .. + 3 (P a multiple of 4): one slot
        *reinterpret_cast<uint4*>(xs + x_word<S_, NJ>(i, j, q * HALF + p, lane, R)) =
            make_uint4(pair(p), pair(p + 1), pair(p + 2), pair(p + 3));
      }
    }
  }
}

// Every fp32 accumulator of a warp's MT x NJ mma tiles set to 0.
template <int MT, int NJ>
HW_DEV void zero_tiles(float (&a)[MT][NJ][4]) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int j = 0; j < NJ; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) a[mt][j][e] = 0.f;
}

// ---- one chunk's mmas ----------------------------------------------------------------------------------------

// acc[mt][j] += (sum over the chunk of W x^T) * scale of each row, W decoded from ch, x from the staged tile: the
// lane's slot k of the chunk at xt[k slot_stride] (a lane that holds no staged row reads one zero slot, stride 0).
template <int B, int FLIP, int ZB, int TAB, int V, int NJ, int MT, typename S>
HW_DEV void mma_chunk(float (&acc)[MT][NJ][4], const Chunk<V, MT, ZB, S>& ch, const uint4* xt, int slot_stride,
                      unsigned lane_table, float scale_unit) {
  constexpr int E = 32 / B, S_ = V * E / 4, HALF = E / 2;
  int zero[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) zero[mt][h] = ZB ? int((ch.z[mt][h] >> ch.zshift) & ((1u << ZB) - 1u)) : 0;
  float part[MT][NJ][4];
  zero_tiles(part);
#pragma unroll
  for (int s2 = 0; s2 < S_ / 2; ++s2) {  // two mmas a slot: b0, b1 of mma 2 s2, then of mma 2 s2 + 1
    uint4 b[NJ];
#pragma unroll
    for (int j = 0; j < NJ; ++j) b[j] = xt[(j * (S_ / 2) + s2) * slot_stride];
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      const int P = 4 * s2 + 2 * u;  // pairs P (a0, a1) and P + 1 (a2, a3)
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        auto value = [&](int h, int pair) {  // pair `pair` of the lane's row g + 8 h
          const unsigned word = ch.w[mt][h][pair / HALF];
          if constexpr (TAB) return table_pair(word, pair % HALF, lane_table);
          else return int_pair<B, FLIP, ZB>(word, pair % HALF, zero[mt][h]);
        };
        const unsigned a[4] = {value(0, P), value(1, P), value(0, P + 1), value(1, P + 1)};
#pragma unroll
        for (int j = 0; j < NJ; ++j) mma16816(part[mt][j], a, u ? b[j].z : b[j].x, u ? b[j].w : b[j].y);
      }
    }
  }
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    const float s0 = scale_value(ch.s[mt][0]) * scale_unit, s1 = scale_value(ch.s[mt][1]) * scale_unit;
#pragma unroll
    for (int j = 0; j < NJ; ++j) {
      acc[mt][j][0] = fmaf(part[mt][j][0], s0, acc[mt][j][0]);
      acc[mt][j][1] = fmaf(part[mt][j][1], s0, acc[mt][j][1]);
      acc[mt][j][2] = fmaf(part[mt][j][2], s1, acc[mt][j][2]);
      acc[mt][j][3] = fmaf(part[mt][j][3], s1, acc[mt][j][3]);
    }
  }
}

HW_DEV float saturate(float y, float out_max) {  // comparisons are false for NaN: it passes through
  return y > out_max ? out_max : (y < -out_max ? -out_max : y);
}

// f(value, m N + n) for every element of a warp's tiles that lies in y: element e of acc[mt][j] is batch row
// m = 8j + 2t + e % 2, weight row n = n0 + 16 mt + g + 8 (e / 2) (the C fragment of m16n8k16).
template <int NJ, int MT, typename F>
HW_DEV void each_output(const float (&acc)[MT][NJ][4], const Rows& r, int M, F&& f) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int j = 0; j < NJ; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int m = 8 * j + 2 * r.t + (e & 1), n = r.n0 + 16 * mt + r.g + 8 * (e >> 1);
        if (m < M && n < r.N) f(acc[mt][j][e], (long long)m * r.N + n);
      }
}

// y of a finished row block `rb`. One split: stored. Split-K: fp32 sums added into `work` (zeroed), the blocks'
// arrivals counted per row block; the last one reads the sums back (leaving zeros), stores y and resets the count
// (the semaphore of CUTLASS's split-K serial reduction). Every thread of the block calls it (barriers inside).
template <int NJ, int MT>
HW_DEV void store_rows(const float (&acc)[MT][NJ][4], const Rows& r, int rb, unsigned short* out, float* work,
                       int* count, int M, int splits, float value_scale, float out_max, int& last) {
  if (splits == 1) {
    each_output(acc, r, M, [&](float v, long long i) { out[i] = float_to_half(saturate(v * value_scale, out_max)); });
    return;
  }
  each_output(acc, r, M, [&](float v, long long i) { atomicAdd(work + i, v * value_scale); });
  __threadfence();  // this block's adds before its arrival (release)
  __syncthreads();  // (also: every thread has read `last` of the block's previous row block)
  if (threadIdx.x == 0) last = atomicAdd(count + rb, 1) == splits - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();  // every block's adds before the reads (acquire)
  each_output(acc, r, M, [&](float, long long i) {  // read the sum, leave zero
    out[i] = float_to_half(saturate(atomicExch(work + i, 0.f), out_max));
  });
  if (threadIdx.x == 0) atomicExch(count + rb, 0);
}

}  // namespace hwmma

// Template parameters: B code bits, FLIP sign flip (0 or 2^(B-1)), ZB zero-point bits (0: none), TAB the table
// decode (1) or the integer one (0), V words a lane loads per row and chunk, NJ batch tiles of 8, MT row tiles of
// 16 a warp, D chunks in flight by register bursts (A = 0), A cp.async stages (0: none), S scale type (unsigned
// short: fp16 bits; float). Grid: x splits x blocks_per_split (split fastest), each block looping over row
// blocks rb = blockIdx.x / splits, + gridDim.x / splits, ... < row_blocks (persistent: x is staged once for all of
// them); y the M-blocks, batch rows 8 NJ y .. 8 NJ y + 8 NJ - 1 (each its own x tile, outputs and counts of the
// split-K workspace); block: `warps` x 32 threads. Dynamic shared memory, in this order: the 32 KB expanded table
// where TAB = 1 (`table`: its 16 binary16 entries, 2j and 2j + 1 in word j; not read where TAB = 0), `warps` rings of
// A x MT x 256 V bytes, and the x tile, chunks_per_block x NJ x x_rows x CK x 2 bytes (x_rows = R, the batch rows
// staged a tile: min(M, 8)).
template <int B, int FLIP, int ZB, int TAB, int V, int NJ, int MT, int D, int A, typename S>
__global__ void __launch_bounds__(hwmma::MAX_THREADS)
    int_mma(const unsigned short* __restrict__ x, const unsigned* __restrict__ codes, const S* __restrict__ scales,
            const unsigned* __restrict__ zeros, const unsigned* __restrict__ table, unsigned short* __restrict__ out,
            float* __restrict__ work, int* __restrict__ count, int M, int N, int K, int row_words, int s_row_stride,
            int zero_words,
            int chunks, int chunks_per_block, unsigned group_magic, int splits, int row_blocks, int x_rows,
            float scale_unit, float value_scale, float out_max) {
  using namespace hwmma;
  constexpr int E = 32 / B, S_ = V * E / 4;
  const int m0 = int(blockIdx.y) * 8 * NJ;  // this M-block's first batch row
  x += (long long)m0 * K;
  out += (long long)m0 * N;
  work += (long long)m0 * N;
  count += blockIdx.y * row_blocks;
  M = min(M - m0, 8 * NJ);
  static_assert(32 % B == 0 && B >= 2 && B <= 8 && S_ % 2 == 0, "B in {2, 4, 8}; an even number of mmas a chunk");
  static_assert(!TAB || (B == 4 && FLIP == 0 && ZB == 0), "the table decode reads 4-bit codes without zero points");
  static_assert(A == 0 || (A >= 2 && A <= 4), "asynchronous stages: 0 (register bursts) or 2 to 4 (more spill)");
  constexpr int TABLE_SLOTS = TAB ? 256 * 32 / 4 : 0;  // uint4 slots of the expanded table
  constexpr int RING_WORDS = A * MT * 2 * 32 * V;       // a warp's ring of code words (A > 0)
  extern __shared__ uint4 smem[];
  unsigned* const ring = reinterpret_cast<unsigned*>(smem + TABLE_SLOTS) + (threadIdx.x >> 5) * RING_WORDS +
                         (threadIdx.x & 31) * V;  // the lane's words of slot 0, tile 0, row g (A > 0)
  uint4* const xs = smem + TABLE_SLOTS + (A > 0 ? int(blockDim.x >> 5) * (RING_WORDS / 4) : 0);
  // shared byte address of the lane's copy of the expanded table (TAB)
  const unsigned lane_table = unsigned(__cvta_generic_to_shared(smem)) + 4u * (threadIdx.x & 31);
  __shared__ uint4 zero_slot;  // the B registers of lanes that hold no staged batch row (M < 8)
  __shared__ int last;
  const int lane = threadIdx.x & 31, warps = blockDim.x >> 5, warp = int(threadIdx.x >> 5);
  const int split = blockIdx.x % splits, rb_step = gridDim.x / splits;
  const int c0 = split * chunks_per_block, cn = min(chunks_per_block, chunks - c0);  // cn > 0 (launch plan)
  const bool staged = lane < 4 * x_rows;  // the lane's batch rows g (and 8 + g) are staged
  const uint4* x_lane = staged ? xs + lane : &zero_slot;
  const int slot_stride = staged ? 4 * x_rows : 0, chunk_stride = staged ? NJ * (S_ / 2) * 4 * x_rows : 0;
  int rb = blockIdx.x / splits;  // < row_blocks (launch plan)
  Rows r{N, (rb * warps + warp) * 16 * MT, lane >> 2, lane & 3};
  auto pointers = [&] { return row_pointers<V, MT, S>(r, codes, scales, zeros, row_words, s_row_stride, zero_words); };
  RowPointers<MT, S> p = pointers();

  // A > 0: chunk i's scales (registers) and code words (the warp's ring, `ring_slot`) at slot i % A
  Chunk<V, MT, ZB, S> meta[A > 0 ? A : 1];
  auto ring_slot = [&](int slot, int mt, int h) { return ring + ((slot * MT + mt) * 2 + h) * 32 * V; };
  auto issue = [&](int i, int slot) {  // chunk i of the block's range into `slot`, one commit group
    fetch_chunk<V, MT, ZB, E, S>(meta[slot], p, group_magic, c0 + i, i < cn,
                                 [&](int mt, int h, const unsigned* src, bool in) {
                                   copy_words_async<V>(ring_slot(slot, mt, h), src, in);
                                 });
    commit_copies();
  };
  auto prologue = [&] {  // chunks 0 .. A - 2 of a row block into slots 0 .. A - 2
#pragma unroll
    for (int slot = 0; slot + 1 < A; ++slot) issue(slot, slot);
  };
  Chunk<V, MT, ZB, S> one[D], two[D];
  // chunks base .. base + D of the row block into `set` (nothing where they lie past the block's range)
  auto load = [&](Chunk<V, MT, ZB, S>(&set)[D], int base) {
#pragma unroll
    for (int d = 0; d < D; ++d) load_chunk<V, MT, ZB, E, S>(set[d], p, group_magic, c0 + base + d, base + d < cn);
  };
  auto decode = [&](float(&acc)[MT][NJ][4], const Chunk<V, MT, ZB, S>(&set)[D], int base) {
#pragma unroll
    for (int d = 0; d < D; ++d)
      if (base + d < cn)  // uniform over the block
        mma_chunk<B, FLIP, ZB, TAB, V, NJ, MT, S>(acc, set[d], x_lane + (base + d) * chunk_stride, slot_stride,
                                                  lane_table, scale_unit);
  };
  if constexpr (A > 0) prologue();
  else load(one, 0);
  stage_x<B, TAB, V, NJ>(reinterpret_cast<unsigned*>(xs), x, M, K, c0, cn, x_rows);
  if constexpr (TAB) expand_table(reinterpret_cast<unsigned*>(smem), table);
  if (threadIdx.x == 0) zero_slot = make_uint4(0u, 0u, 0u, 0u);
  __syncthreads();

  while (true) {
    float acc[MT][NJ][4];
    zero_tiles(acc);
    if constexpr (A > 0) {
      for (int base = 0; base < cn; base += A) {
#pragma unroll
        for (int a = 0; a < A; ++a) {  // chunk i = base + a at slot a; chunk i + A - 1 into the slot chunk i - 1 left
          const int i = base + a;
          issue(i + A - 1, (a + A - 1) % A);
          wait_copies<A - 1>();
          if (i < cn) {  // uniform over the block
            Chunk<V, MT, ZB, S> ch = meta[a];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
              for (int h = 0; h < 2; ++h) read_words<V>(ch.w[mt][h], ring_slot(a, mt, h));
            mma_chunk<B, FLIP, ZB, TAB, V, NJ, MT, S>(acc, ch, x_lane + i * chunk_stride, slot_stride, lane_table,
                                                      scale_unit);
          }
        }
      }
    } else {
      // `one` holds chunks base .. base + D (in flight); each half step issues the next D into the other set (a
      // burst of 4 D V contiguous words a row) before decoding these, and the sets swap roles
      for (int base = 0; base < cn; base += 2 * D) {
        load(two, base + D);
        decode(acc, one, base);
        load(one, base + 2 * D);
        decode(acc, two, base + D);
      }
    }
    const int done = rb;
    const Rows rows = r;
    rb += rb_step;
    if (rb < row_blocks) {  // the next row block's first chunks in flight during this one's stores
      r.n0 = (rb * warps + warp) * 16 * MT;
      p = pointers();
      if constexpr (A > 0) prologue();
      else load(one, 0);
    }
    store_rows<NJ, MT>(acc, rows, done, out, work, count, M, splits, value_scale, out_max, last);
    if (rb >= row_blocks) return;
  }
}
