// Device-independent pieces of the residual-quantization kernels, shared by csrc/cpu and csrc/cuda.
#pragma once
#include <cstdint>

#include "common/macros.h"

namespace fastrec {

// Running argmin with deterministic tie-breaking: a strictly smaller distance wins; an equal distance
// wins only with a lower code index. Every backend merges partial minima with this rule, so the
// answer does not depend on how the K codes were split across lanes, tiles or threads.
FASTREC_HD bool better(float dist, int64_t idx, float best_dist, int64_t best_idx) {
  return dist < best_dist || (dist == best_dist && idx < best_idx);
}

// Rows with NaN: every distance is NaN, no code beats another, and every backend returns code 0 with a
// NaN distance (the start value of the running argmin below is code 0, never an out-of-range index).
// D = 0: every distance is 0, so code 0 (the lowest index) wins with distance 0.

// Exact squared distance of the chosen code, accumulated in fp32. The search itself ranks codes by
// ||c||^2 - 2 x.c (the ||x||^2 term is the same for every code); recomputing the winner directly avoids
// the cancellation that expanded form suffers when x is close to c.
template <typename XT, typename CT, typename Load>
FASTREC_HD float exact_sqdist(const XT* x, const CT* c, int64_t dim, Load load) {
  float acc = 0.f;
  for (int64_t d = 0; d < dim; ++d) {
    float diff = load(x[d]) - load(c[d]);
    acc += diff * diff;
  }
  return acc;
}

}  // namespace fastrec
