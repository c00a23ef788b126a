// AMX detection, permission and tile configuration (see amx.h).
#include "cpu/amx.h"

#include <cstdlib>
#include <cstring>

#if FASTREC_HAVE_AMX
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace fastrec::amx {

#if FASTREC_HAVE_AMX
namespace {

constexpr long kArchReqXcompPerm = 0x1023;  // arch_prctl: ask for an extended state component
constexpr long kXfeatureTileData = 18;

// CPUID says AMX-TILE, AMX-BF16 and AVX-512 F/DQ/BW/VL; XCR0 says the OS saves their state; the kernel grants
// this process tile data (Linux 5.16+; a kernel that cannot grant it never sets the XCR0 bits either).
bool supported() {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const unsigned avx512 = (1u << 16) | (1u << 17) | (1u << 30) | (1u << 31);  // F, DQ, BW, VL
  if ((b & avx512) != avx512 || !((d >> 24) & 1u) || !((d >> 22) & 1u)) return false;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !((c >> 27) & 1u)) return false;  // OSXSAVE
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  if ((lo & 0x600e6u) != 0x600e6u) return false;  // SSE/AVX/AVX-512 and XTILECFG/XTILEDATA state
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureTileData) == 0;
}

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

}  // namespace

bool enabled() {
  static const bool ok = supported();  // thread-safe, once per process
  const char* env = std::getenv("FASTREC_CPU_AMX");
  return ok && !(env != nullptr && std::strcmp(env, "0") == 0);
}

FASTREC_AMX_TARGET void configure_tiles() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  // GCC 12 does not tell the optimizer that ldtilecfg reads cfg, and drops the stores above without this
  __asm__ volatile("" : : "r"(&cfg) : "memory");
  _tile_loadconfig(&cfg);
}

FASTREC_AMX_TARGET void release_tiles() { _tile_release(); }

#else

bool enabled() { return false; }
void configure_tiles() {}
void release_tiles() {}

#endif

}  // namespace fastrec::amx
