// Intel AMX (tile matrix multiply) support for the CPU kernels: detection, the per-process permission and
// the per-thread tile configuration. The kernels that use AMX compile their tile code with a function target
// attribute (FASTREC_AMX_TARGET), so the rest of the library builds and runs on any x86-64 or other CPU.
#pragma once
#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__) && (defined(__clang__) || __GNUC__ >= 11)
#define FASTREC_HAVE_AMX 1
#define FASTREC_AMX_TARGET __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512dq")))
#else
#define FASTREC_HAVE_AMX 0
#define FASTREC_AMX_TARGET
#endif

namespace fastrec::amx {

// True when this CPU has AMX-TILE and AMX-BF16 (and AVX-512), the OS lets this process use tile data
// (Linux: arch_prctl ARCH_REQ_XCOMP_PERM, requested once) and FASTREC_CPU_AMX is not "0".
bool enabled();

// Every tile register as 16 rows x 64 bytes (16 fp32 or 32 bf16 per row). Load once per thread before any
// tile instruction, release after.
void configure_tiles();
void release_tiles();

// fp32 -> bf16, round to nearest even (inputs are finite).
inline uint16_t to_bf16(float v) {
  uint32_t bits;
  __builtin_memcpy(&bits, &v, sizeof bits);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

}  // namespace fastrec::amx
