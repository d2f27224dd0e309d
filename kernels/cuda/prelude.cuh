// hwlab: what every CUDA source in kernels/cuda shares. cupy_kernels.kernel_source puts it in front of each
// source (NVRTC sees one text, so CuPy's cache key covers it; no include directive is needed).

#define HW_DEV __device__ __forceinline__

// binary16 bits <-> float32 (PTX ISA, "cvt": exact widening; narrowing rounds to nearest even)
HW_DEV float half_to_float(unsigned short h) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
}
HW_DEV unsigned short float_to_half(float f) {
  unsigned short h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
}
