// A small CUDA emulator for the kernels of csrc/cuda (no GPU needed): compiles their device code as host C++
// and runs each warp as 32 cooperative lanes (ucontext fibers) that switch at every shuffle, so __shfl_sync
// and __shfl_xor_sync exchange values exactly as a warp does (launch), or each block's threads as fibers
// that switch at every __syncthreads (launch_blocks). It also checks what a GPU would not report: a shuffle
// or barrier reached by only some threads (divergent control flow around a collective) is an error here.
// Warps (blocks) run one after another: the kernels never share data between the warps (blocks) of one
// launch. A device assert is counted, not fatal, so a test can check that bad input raises it.
// Memory: Guarded (and Buffer, a user buffer seen through it) places a copy against an inaccessible page
// (after its end or before its start), so a kernel's out-of-bounds read or write faults at once.
#pragma once

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>

#define __global__
#define __launch_bounds__(...)
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __syncthreads() ::emu::syncthreads()

namespace emu {

constexpr int kLanes = 32;
constexpr int kMaxThreads = 1024;
constexpr size_t kStackBytes = 128 * 1024;

struct Dim3 {
  unsigned x = 0, y = 1, z = 1;
};

struct float4_t {
  float x, y, z, w;
};

// The fibers that run together: one warp's 32 lanes (launch: kernels that shuffle) or one block's threads
// (launch_blocks: kernels that use __syncthreads and __shared__; no shuffles there).
struct Group {
  ucontext_t host;
  std::vector<ucontext_t> fiber;
  std::vector<char> done;
  uint64_t slot[kLanes] = {};
  int current = 0;
  unsigned first_thread = 0;  // threadIdx.x of fiber 0
  bool block = false;
  Dim3 block_idx, block_dim;
  std::function<void()> body;
};

inline Group* g_group = nullptr;
inline int64_t g_asserts = 0;     // device asserts that failed
inline int64_t g_divergent = 0;   // groups whose threads did not all reach a shuffle or a barrier

inline Dim3 thread_idx() {
  Dim3 t;
  t.x = g_group->first_thread + static_cast<unsigned>(g_group->current);
  return t;
}
inline Dim3 block_idx() { return g_group->block_idx; }
inline Dim3 block_dim() { return g_group->block_dim; }
inline int lane() { return static_cast<int>(thread_idx().x % kLanes); }

inline void yield_fiber() {
  Group& g = *g_group;
  swapcontext(&g.fiber[g.current], &g.host);
}

// Every lane writes its value, the warp switches lanes, every lane reads its source's value, and the warp
// switches again (so no lane overwrites a slot another has yet to read).
template <typename T>
T shfl(T v, int src) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "a shuffled value is at most 8 bytes");
  Group& g = *g_group;
  if (g.block) {
    std::fprintf(stderr, "cuda emulator: a shuffle in a kernel launched with launch_blocks\n");
    std::abort();
  }
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  g.slot[g.current] = bits;
  yield_fiber();
  const uint64_t got = g.slot[src & (kLanes - 1)];
  yield_fiber();
  T r;
  std::memcpy(&r, &got, sizeof(T));
  return r;
}

inline void syncthreads() {
  if (!g_group->block) {
    std::fprintf(stderr, "cuda emulator: __syncthreads in a kernel launched with launch (warps)\n");
    std::abort();
  }
  yield_fiber();
}

// The fibers' stacks: one mapping for the largest block, reserved once, touched only as used.
inline char* fiber_stack(int i) {
  static char* stacks = static_cast<char*>(mmap(nullptr, static_cast<size_t>(kMaxThreads) * kStackBytes,
                                                PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                                                -1, 0));
  return stacks + static_cast<size_t>(i) * kStackBytes;
}

inline void fiber_entry(int i) {
  g_group->body();
  g_group->done[i] = true;
}

// Runs `n` fibers to the end, each in turn up to its next shuffle or barrier: every round, either all live
// fibers stop at one (the next round resumes them) or all return; a mix is a divergent group.
inline void run_group(unsigned block, unsigned first_thread, int n, bool whole_block, unsigned threads,
                      const std::function<void()>& kernel) {
  auto g = std::make_unique<Group>();
  Group* saved = g_group;
  g_group = g.get();
  g->body = kernel;
  g->block = whole_block;
  g->block_idx.x = block;
  g->block_dim.x = threads;
  g->first_thread = first_thread;
  g->fiber.resize(n);
  g->done.assign(n, 0);
  for (int i = 0; i < n; ++i) {
    getcontext(&g->fiber[i]);
    g->fiber[i].uc_stack.ss_sp = fiber_stack(i);
    g->fiber[i].uc_stack.ss_size = kStackBytes;
    g->fiber[i].uc_link = &g->host;
    makecontext(&g->fiber[i], reinterpret_cast<void (*)()>(fiber_entry), 1, i);
  }
  for (;;) {
    int yielded = 0, finished = 0;
    for (int i = 0; i < n; ++i) {
      if (g->done[i]) continue;
      g->current = i;
      swapcontext(&g->host, &g->fiber[i]);
      (g->done[i] ? finished : yielded)++;
    }
    if (yielded > 0 && finished > 0) {  // threads still waiting at a shuffle or barrier the others never reach
      ++g_divergent;
      break;
    }
    if (yielded == 0) break;
  }
  g_group = saved;
}

// A launch of `grid` blocks of `threads` threads (a multiple of 32), warp after warp.
inline void launch(unsigned grid, unsigned threads, const std::function<void()>& kernel) {
  for (unsigned b = 0; b < grid; ++b) {
    for (unsigned w = 0; w < threads / kLanes; ++w) run_group(b, w * kLanes, kLanes, false, threads, kernel);
  }
}

// A launch whose kernel synchronises its block: all `threads` threads of a block run together, block after
// block (__shared__ variables are function statics: shared by the block, and blocks do not overlap).
inline void launch_blocks(unsigned grid, unsigned threads, const std::function<void()>& kernel) {
  if (threads > static_cast<unsigned>(kMaxThreads)) std::abort();
  for (unsigned b = 0; b < grid; ++b) run_group(b, 0, static_cast<int>(threads), true, threads, kernel);
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

// A user buffer as a kernel sees it: a guarded copy (none for a null pointer), written back on request.
class Buffer {
 public:
  Buffer(const void* p, size_t bytes, bool guard_after, size_t align) : user_(const_cast<void*>(p)), bytes_(bytes) {
    if (p != nullptr) copy_ = std::make_unique<Guarded>(p, bytes, guard_after, align);
  }
  template <typename T>
  T* get() const {
    return copy_ ? static_cast<T*>(copy_->data()) : nullptr;
  }
  void write_back() const {
    if (copy_) std::memcpy(user_, copy_->data(), bytes_);
  }

 private:
  std::unique_ptr<Guarded> copy_;
  void* user_;
  size_t bytes_;
};

}  // namespace emu

// The counters a test reads through ctypes (each emulated library includes this header once).
extern "C" {
int64_t emu_asserts() { return emu::g_asserts; }
int64_t emu_divergent() { return emu::g_divergent; }
void emu_reset() { emu::g_asserts = emu::g_divergent = 0; }
}

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
