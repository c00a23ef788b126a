// csrc/cuda/trie_kernels.cuh (the CUDA trie_mask kernel) compiled for the emulator, with a C entry point
// that tests/test_trie_cuda_emulated.py calls through ctypes. Every buffer is copied against a PROT_NONE
// page (after its end, or before its start: `guard_after`), so any out-of-bounds access by the kernel
// faults.
#include "cuda_emulator.h"
// the emulator's definitions first: the kernel's header sees them as CUDA's
#include "cuda/trie_kernels.cuh"

namespace {

using emu::Buffer;

template <typename id_t>
void trie_mask(const float* scores, const void* generated, const int64_t* indptr, const int64_t* tokens,
               const int64_t* children, int64_t R, int64_t V, int64_t G, int64_t S, int64_t E, float fill,
               float* out, bool after) {
  const Buffer sc(scores, R * V * sizeof(float), after, sizeof(float));
  const Buffer gen(generated, R * G * sizeof(id_t), after, sizeof(id_t));
  const Buffer ip(indptr, (S + 1) * sizeof(int64_t), after, sizeof(int64_t));
  const Buffer tok(tokens, E * sizeof(int64_t), after, sizeof(int64_t));
  const Buffer ch(children, E * sizeof(int64_t), after, sizeof(int64_t));
  const Buffer o(out, R * V * sizeof(float), after, sizeof(float));
  emu::launch_blocks(static_cast<unsigned>(R), fastrec::trie_kernels::kThreads, [&] {
    fastrec::trie_kernels::trie_mask_kernel<float, id_t>(sc.get<float>(), gen.get<id_t>(), ip.get<int64_t>(),
                                                         tok.get<int64_t>(), ch.get<int64_t>(), V, G, S, E, fill,
                                                         o.get<float>());
  });
  o.write_back();
}

}  // namespace

extern "C" {

// trie_mask_cuda's launch: R blocks of kThreads threads; fp32 scores, int64 (id64) or int32 generated ids.
void emu_trie_mask(int id64, const float* scores, const void* generated, const int64_t* indptr,
                   const int64_t* tokens, const int64_t* children, int64_t R, int64_t V, int64_t G, int64_t S,
                   int64_t E, float fill, float* out, int guard_after) {
  if (id64) {
    trie_mask<int64_t>(scores, generated, indptr, tokens, children, R, V, G, S, E, fill, out, guard_after);
  } else {
    trie_mask<int32_t>(scores, generated, indptr, tokens, children, R, V, G, S, E, fill, out, guard_after);
  }
}

}  // extern "C"
