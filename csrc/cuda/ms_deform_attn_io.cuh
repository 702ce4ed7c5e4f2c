// Device-side memory helpers of the MSDA CUDA kernels: loads and stores of single elements and of
// 16-byte "packs" of channels, converting to and from the accumulation type (float for
// float16/bfloat16/float32, double for float64), and the atomic scatter of grad_value.
//
// Reduced-precision elements are moved as raw 16-bit words and converted with intrinsics, so the
// code does not depend on the half/bfloat16 operators that torch builds disable
// (__CUDA_NO_HALF_OPERATORS__ and friends).
#pragma once

#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

namespace detr_ext {
namespace msda_cuda {

// kPack elements make one 16-byte vector; acc is the type all arithmetic is done in.
template <typename T>
struct ScalarIO;

template <>
struct ScalarIO<double> {
  using acc = double;
  static constexpr int kPack = 2;
  static __device__ __forceinline__ double load(const double* p) { return __ldg(p); }
  static __device__ __forceinline__ void store(double* p, double v) { *p = v; }
  static __device__ __forceinline__ void load_pack(const double* p, double (&out)[kPack]) {
    const double2 raw = __ldg(reinterpret_cast<const double2*>(p));
    out[0] = raw.x;
    out[1] = raw.y;
  }
  static __device__ __forceinline__ void store_pack(double* p, const double (&in)[kPack]) {
    *reinterpret_cast<double2*>(p) = make_double2(in[0], in[1]);
  }
};

template <>
struct ScalarIO<float> {
  using acc = float;
  static constexpr int kPack = 4;
  static __device__ __forceinline__ float load(const float* p) { return __ldg(p); }
  static __device__ __forceinline__ void store(float* p, float v) { *p = v; }
  static __device__ __forceinline__ void load_pack(const float* p, float (&out)[kPack]) {
    const float4 raw = __ldg(reinterpret_cast<const float4*>(p));
    out[0] = raw.x;
    out[1] = raw.y;
    out[2] = raw.z;
    out[3] = raw.w;
  }
  // A pack from its 16 raw bytes (zero bytes give zeros).
  static __device__ __forceinline__ void from_raw(const uint4& raw, float (&out)[kPack]) {
    out[0] = __uint_as_float(raw.x);
    out[1] = __uint_as_float(raw.y);
    out[2] = __uint_as_float(raw.z);
    out[3] = __uint_as_float(raw.w);
  }
  static __device__ __forceinline__ void store_pack(float* p, const float (&in)[kPack]) {
    *reinterpret_cast<float4*>(p) = make_float4(in[0], in[1], in[2], in[3]);
  }
};

// Shared by float16 and bfloat16: 8 elements per 16 bytes, converted through 16-bit words.
template <typename T, typename Bits>
struct HalfWidthIO {
  using acc = float;
  static constexpr int kPack = 8;
  static __device__ __forceinline__ float load(const T* p) {
    return Bits::to_float(__ldg(reinterpret_cast<const unsigned short*>(p)));
  }
  static __device__ __forceinline__ void store(T* p, float v) {
    *reinterpret_cast<unsigned short*>(p) = Bits::from_float(v);
  }
  static __device__ __forceinline__ void load_pack(const T* p, float (&out)[kPack]) {
    from_raw(__ldg(reinterpret_cast<const uint4*>(p)), out);
  }
  // A pack from its 16 raw bytes (zero bytes give zeros).
  static __device__ __forceinline__ void from_raw(const uint4& raw, float (&out)[kPack]) {
    const unsigned int words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {  // little endian: element 2i sits in the low half-word
      out[2 * i] = Bits::to_float(static_cast<unsigned short>(words[i] & 0xffffu));
      out[2 * i + 1] = Bits::to_float(static_cast<unsigned short>(words[i] >> 16));
    }
  }
  // 4 elements as one aligned 8-byte load: the pack of the half-precision backward
  // (ms_deform_attn_cuda.cu).
  static __device__ __forceinline__ void load_pack4(const T* p, float (&out)[4]) {
    const uint2 raw = __ldg(reinterpret_cast<const uint2*>(p));
    const unsigned int words[2] = {raw.x, raw.y};
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      out[2 * i] = Bits::to_float(static_cast<unsigned short>(words[i] & 0xffffu));
      out[2 * i + 1] = Bits::to_float(static_cast<unsigned short>(words[i] >> 16));
    }
  }
  static __device__ __forceinline__ void store_pack(T* p, const float (&in)[kPack]) {
    unsigned int words[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      words[i] = static_cast<unsigned int>(Bits::from_float(in[2 * i])) |
                 (static_cast<unsigned int>(Bits::from_float(in[2 * i + 1])) << 16);
    }
    *reinterpret_cast<uint4*>(p) = make_uint4(words[0], words[1], words[2], words[3]);
  }
};

struct HalfBits {
  static __device__ __forceinline__ float to_float(unsigned short bits) {
    return __half2float(__ushort_as_half(bits));
  }
  static __device__ __forceinline__ unsigned short from_float(float v) {
    return __half_as_ushort(__float2half_rn(v));
  }
};

struct BFloat16Bits {
  static __device__ __forceinline__ float to_float(unsigned short bits) {
    return __uint_as_float(static_cast<unsigned int>(bits) << 16);  // exact
  }
  static __device__ __forceinline__ unsigned short from_float(float v) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(v));
  }
};

template <>
struct ScalarIO<at::Half> : HalfWidthIO<at::Half, HalfBits> {};
template <>
struct ScalarIO<at::BFloat16> : HalfWidthIO<at::BFloat16, BFloat16Bits> {};

template <typename T>
using acc_type = typename ScalarIO<T>::acc;

static_assert(std::is_same_v<acc_type<at::Half>, at::opmath_type<at::Half>>);
static_assert(std::is_same_v<acc_type<at::BFloat16>, at::opmath_type<at::BFloat16>>);
static_assert(std::is_same_v<acc_type<float>, at::opmath_type<float>>);
static_assert(std::is_same_v<acc_type<double>, at::opmath_type<double>>);

// Channels per thread: one 16-byte pack on the vectorized path; on the element-by-element path
// (C not a multiple of the pack, or unaligned data) at most 4, which keeps more threads busy for
// the odd channel counts that take it and keeps its predicated loads cheap in registers.
template <typename T, bool kVec>
constexpr int pack_size() {
  return kVec || ScalarIO<T>::kPack < 4 ? ScalarIO<T>::kPack : 4;
}

// Loads the kCount channels at p into out, as one 16-byte load when kVec (the caller guarantees
// alignment and that the whole pack is inside the row; 8 bytes for a pack of 4 float16/bfloat16)
// or element by element otherwise, where only the first `count` elements exist and the rest read
// as zero.
template <bool kVec, typename T, int kCount>
__device__ __forceinline__ void load_channels(const T* p, int count, acc_type<T> (&out)[kCount]) {
  if constexpr (kVec && kCount == ScalarIO<T>::kPack) {
    ScalarIO<T>::load_pack(p, out);
  } else if constexpr (kVec) {
    static_assert(sizeof(T) == 2 && kCount == 4, "a vector pack is 16 bytes, or 4 half elements");
    ScalarIO<T>::load_pack4(p, out);
  } else {
#pragma unroll
    for (int c = 0; c < kCount; ++c) {
      out[c] = c < count ? ScalarIO<T>::load(p + c) : acc_type<T>(0);
    }
  }
}

template <bool kVec, typename T, int kCount>
__device__ __forceinline__ void store_channels(T* p, int count, const acc_type<T> (&in)[kCount]) {
  if constexpr (kVec) {
    static_assert(kCount == ScalarIO<T>::kPack);
    ScalarIO<T>::store_pack(p, in);
  } else {
#pragma unroll
    for (int c = 0; c < kCount; ++c) {
      if (c < count) ScalarIO<T>::store(p + c, in[c]);
    }
  }
}

// grad_value += in over `count` channels. The buffer is float32 (or float64) even for
// float16/bfloat16 values; on sm_90 and newer an aligned float pack uses the vector atomics
// (red.global.v4.f32), a quarter of the atomic instructions of scalar adds.
template <bool kVec, typename acc_t, int kCount>
__device__ __forceinline__ void atomic_add_channels(acc_t* p, int count,
                                                    const acc_t (&in)[kCount]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr bool kVector4 = kVec && std::is_same_v<acc_t, float> && kCount % 4 == 0;
#else
  constexpr bool kVector4 = false;
#endif
  if constexpr (kVector4) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#pragma unroll
    for (int i = 0; i < kCount / 4; ++i) {
      atomicAdd(reinterpret_cast<float4*>(p) + i,
                make_float4(in[4 * i], in[4 * i + 1], in[4 * i + 2], in[4 * i + 3]));
    }
#endif
  } else {
#pragma unroll
    for (int c = 0; c < kCount; ++c) {
      if (kVec || c < count) atomicAdd(p + c, in[c]);
    }
  }
}

}  // namespace msda_cuda
}  // namespace detr_ext
