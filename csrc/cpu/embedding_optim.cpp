// CPU kernel of the fused sparse embedding optimizer: embedding_sparse_update.
//
// A dense optimizer step on an [I, d] table reads and writes every row (and its Adam state) although a
// batch touches a few thousand of them. Here, as in FBGEMM's table-batched embeddings:
//   1. one pass checks the ids and collects (id, lookup) pairs of the non-padding lookups; ids that are
//      already strictly increasing (the unique rows of a fused lookup) skip the sort;
//   2. the pairs are sorted (id, then lookup position) and cut into one segment per distinct row, so a
//      row's gradients are summed in lookup order whatever the thread count (deterministic);
//   3. an OpenMP pass over the segments sums each row's gradients in fp32 and applies torch's Adam or
//      Adagrad rule to that row and its state in place; segments own distinct rows, so no atomics.
// Nothing of size I is allocated or read beyond the touched rows.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

namespace fastrec {
namespace {

struct Rule {
  bool adam;
  float lr, beta1, beta2, eps, weight_decay;
  float step_size, bc2_sqrt;  // adam: lr / (1 - beta1^t), sqrt(1 - beta2^t)
};

template <typename scalar_t>
void update_row(scalar_t* w, float* m, float* v, float* g, int64_t d, const Rule& r) {
  for (int64_t j = 0; j < d; ++j) {
    const float p = static_cast<float>(w[j]);
    float gj = g[j];
    if (r.weight_decay != 0.f) gj += r.weight_decay * p;
    if (r.adam) {
      const float mj = m[j] + (1.f - r.beta1) * (gj - m[j]);  // torch's lerp
      const float vj = v[j] * r.beta2 + (1.f - r.beta2) * gj * gj;
      m[j] = mj;
      v[j] = vj;
      w[j] = static_cast<scalar_t>(p - r.step_size * mj / (std::sqrt(vj) / r.bc2_sqrt + r.eps));
    } else {
      const float vj = v[j] + gj * gj;
      v[j] = vj;
      w[j] = static_cast<scalar_t>(p - r.lr * gj / (std::sqrt(vj) + r.eps));
    }
  }
}

void embedding_sparse_update_cpu(const at::Tensor& weight, const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq,
                                 const at::Tensor& ids_in, const at::Tensor& grad_in, c10::string_view optimizer,
                                 double lr, double beta1, double beta2, double eps, double weight_decay, int64_t step,
                                 int64_t padding_idx) {
  const std::string opt(optimizer);
  TORCH_CHECK_VALUE(opt == "adam" || opt == "adagrad", "optimizer must be one of ('adam', 'adagrad'), got '", opt,
                    "'");
  const bool adam = opt == "adam";
  TORCH_CHECK_VALUE(weight.dim() == 2 && weight.is_contiguous(), "weight must be a contiguous 2-D tensor");
  const int64_t I = weight.size(0), d = weight.size(1);
  TORCH_CHECK_VALUE(exp_avg_sq.scalar_type() == at::kFloat && exp_avg_sq.is_contiguous() &&
                        exp_avg_sq.sizes() == weight.sizes(),
                    "exp_avg_sq must be a contiguous float32 tensor shaped like weight");
  TORCH_CHECK_VALUE(!adam || (exp_avg.scalar_type() == at::kFloat && exp_avg.is_contiguous() &&
                              exp_avg.sizes() == weight.sizes()),
                    "exp_avg must be a contiguous float32 tensor shaped like weight for adam");
  TORCH_CHECK_VALUE(step >= 1, "step must be >= 1, got ", step);
  auto ids = ids_in.to(at::kLong).contiguous().view(-1);
  const int64_t n = ids.numel();
  TORCH_CHECK_VALUE(grad_in.dim() >= 1 && grad_in.numel() == n * d,
                    "grad must hold one row of d = ", d, " values per id");
  auto grad = grad_in.to(at::kFloat).contiguous().view({n, d});
  const int64_t* id = ids.data_ptr<int64_t>();
  const float* gp = grad.data_ptr<float>();

  // 1. range check and the (id, position) pairs of the real lookups
  std::vector<std::pair<int64_t, int64_t>> order;
  order.reserve(n);
  bool increasing = true;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t k = id[i];
    TORCH_CHECK_INDEX(k >= 0 && k < I, "ids out of range: ids[", i, "] = ", k, " is not in [0, ", I, ")");
    if (k == padding_idx) continue;
    if (!order.empty() && order.back().first >= k) increasing = false;
    order.emplace_back(k, i);
  }
  // 2. segments of equal ids, lookups in position order
  if (!increasing) std::sort(order.begin(), order.end());
  std::vector<int64_t> seg;
  seg.reserve(order.size() + 1);
  for (size_t k = 0; k < order.size(); ++k)
    if (k == 0 || order[k].first != order[k - 1].first) seg.push_back(static_cast<int64_t>(k));
  seg.push_back(static_cast<int64_t>(order.size()));
  const int64_t segments = static_cast<int64_t>(seg.size()) - 1;
  if (segments <= 0) return;

  Rule r{adam, float(lr), float(beta1), float(beta2), float(eps), float(weight_decay), 0.f, 1.f};
  if (adam) {
    r.step_size = float(lr / (1.0 - std::pow(beta1, double(step))));
    r.bc2_sqrt = float(std::sqrt(1.0 - std::pow(beta2, double(step))));
  }
  float* mp = adam ? exp_avg.data_ptr<float>() : nullptr;
  float* vp = exp_avg_sq.data_ptr<float>();
  // 3. one segment = one row: sum its gradients, update it in place
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "embedding_sparse_update", [&] {
    scalar_t* wp = weight.data_ptr<scalar_t>();
    at::parallel_for(0, segments, 16, [&](int64_t b, int64_t e) {
      std::vector<float> g(d);
      for (int64_t s = b; s < e; ++s) {
        std::fill(g.begin(), g.end(), 0.f);
        for (int64_t k = seg[s]; k < seg[s + 1]; ++k) {
          const float* src = gp + order[k].second * d;
          for (int64_t j = 0; j < d; ++j) g[j] += src[j];
        }
        const int64_t row = order[seg[s]].first;
        update_row(wp + row * d, adam ? mp + row * d : nullptr, vp + row * d, g.data(), d, r);
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrec, CPU, m) { m.impl("embedding_sparse_update", &embedding_sparse_update_cpu); }

}  // namespace fastrec
