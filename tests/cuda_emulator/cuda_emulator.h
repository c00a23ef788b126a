// A small CUDA emulator for the warp-synchronous kernels of csrc/cuda (no GPU needed): compiles their device
// code as host C++ and runs each warp as 32 cooperative lanes (ucontext fibers) that switch at every
// shuffle, so __shfl_sync and __shfl_xor_sync exchange values exactly as a warp does. It also checks what
// a GPU would not report: a shuffle reached by only some lanes of a warp (divergent control flow around a
// warp collective) is an error here. Warps run one after another (the kernels never share data between the
// warps of one launch); a device assert is counted, not fatal, so a test can check that bad input raises it.
// Memory: guarded_copy() places a buffer against an inaccessible page (after its end or before its start),
// so a kernel's out-of-bounds read or write faults at once.
#pragma once

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline

namespace emu {

constexpr int kLanes = 32;
constexpr size_t kStackBytes = 128 * 1024;

struct Dim3 {
  unsigned x = 0, y = 1, z = 1;
};

struct float4_t {
  float x, y, z, w;
};

struct Warp {
  ucontext_t host;
  ucontext_t lane[kLanes];
  bool done[kLanes] = {};
  uint64_t slot[kLanes] = {};
  int current = 0;
  Dim3 block_idx, block_dim, thread_idx[kLanes];
  std::function<void()> body;
};

inline Warp* g_warp = nullptr;
inline int64_t g_asserts = 0;     // device asserts that failed
inline int64_t g_divergent = 0;   // warps whose lanes did not all reach a shuffle

inline Dim3 thread_idx() { return g_warp->thread_idx[g_warp->current]; }
inline Dim3 block_idx() { return g_warp->block_idx; }
inline Dim3 block_dim() { return g_warp->block_dim; }
inline int lane() { return g_warp->current; }

inline void yield_lane() {
  Warp& w = *g_warp;
  swapcontext(&w.lane[w.current], &w.host);
}

// Every lane writes its value, the warp switches lanes, every lane reads its source's value, and the warp
// switches again (so no lane overwrites a slot another has yet to read).
template <typename T>
T shfl(T v, int src) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "a shuffled value is at most 8 bytes");
  Warp& w = *g_warp;
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  w.slot[w.current] = bits;
  yield_lane();
  const uint64_t got = w.slot[src & (kLanes - 1)];
  yield_lane();
  T r;
  std::memcpy(&r, &got, sizeof(T));
  return r;
}

// The lanes' stacks, allocated once and reused by every warp (warps run one at a time).
inline char* lane_stack(int i) {
  static std::vector<char> stacks(static_cast<size_t>(kLanes) * kStackBytes);
  return stacks.data() + static_cast<size_t>(i) * kStackBytes;
}

inline void lane_entry(int i) {
  g_warp->body();
  g_warp->done[i] = true;
}

// Runs one warp of a launch: lanes in turn, each up to its next shuffle, until all have returned.
inline void run_warp(unsigned block, unsigned warp, unsigned threads, const std::function<void()>& kernel) {
  auto w = std::make_unique<Warp>();
  Warp* saved = g_warp;
  g_warp = w.get();
  w->body = kernel;
  w->block_idx.x = block;
  w->block_dim.x = threads;
  for (int i = 0; i < kLanes; ++i) {
    w->thread_idx[i].x = warp * kLanes + i;
    getcontext(&w->lane[i]);
    w->lane[i].uc_stack.ss_sp = lane_stack(i);
    w->lane[i].uc_stack.ss_size = kStackBytes;
    w->lane[i].uc_link = &w->host;
    makecontext(&w->lane[i], reinterpret_cast<void (*)()>(lane_entry), 1, i);
  }
  for (;;) {
    int yielded = 0, finished = 0;
    for (int i = 0; i < kLanes; ++i) {
      if (w->done[i]) continue;
      w->current = i;
      swapcontext(&w->host, &w->lane[i]);
      (w->done[i] ? finished : yielded)++;
    }
    if (yielded > 0 && finished > 0) {  // lanes still waiting in a shuffle that the others never reach
      ++g_divergent;
      break;
    }
    if (yielded == 0) break;
  }
  g_warp = saved;
}

// A launch of `grid` blocks of `threads` threads (a multiple of 32), warp after warp.
inline void launch(unsigned grid, unsigned threads, const std::function<void()>& kernel) {
  for (unsigned b = 0; b < grid; ++b) {
    for (unsigned wp = 0; wp < threads / kLanes; ++wp) run_warp(b, wp, threads, kernel);
  }
}

// A copy of `bytes` bytes that sits against a PROT_NONE page: after its end (guard_after) or before its
// start (the start is then page-aligned). `align` is the alignment kept for the end-guarded copy.
class Guarded {
 public:
  Guarded(const void* src, size_t bytes, bool guard_after, size_t align) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    const size_t padded = (bytes + align - 1) / align * align;
    const size_t body = (padded + page - 1) / page * page + page;
    size_ = body + page;
    base_ = static_cast<char*>(mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (guard_after) {
      mprotect(base_ + body, page, PROT_NONE);
      data_ = base_ + body - padded;
    } else {
      mprotect(base_, page, PROT_NONE);
      data_ = base_ + page;
    }
    if (bytes > 0 && src != nullptr) std::memcpy(data_, src, bytes);
  }
  ~Guarded() { munmap(base_, size_); }
  Guarded(const Guarded&) = delete;
  Guarded& operator=(const Guarded&) = delete;
  void* data() const { return data_; }

 private:
  char* base_;
  char* data_;
  size_t size_;
};

}  // namespace emu

using float4 = emu::float4_t;
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

#define threadIdx (::emu::thread_idx())
#define blockIdx (::emu::block_idx())
#define blockDim (::emu::block_dim())
#define __shfl_sync(mask, v, src) ::emu::shfl((v), (src))
#define __shfl_xor_sync(mask, v, off) ::emu::shfl((v), ::emu::lane() ^ (off))
#define CUDA_KERNEL_ASSERT(cond) \
  do {                           \
    if (!(cond)) ++::emu::g_asserts; \
  } while (0)

template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
template <typename T>
inline T __ldcs(const T* p) {
  return *p;
}
template <typename T>
inline void __stcs(T* p, T v) {
  *p = v;
}
