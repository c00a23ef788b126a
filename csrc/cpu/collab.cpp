// CPU kernel of the collaborative-token family: splice_collab_tokens.
//
// inputs_embeds[p] = slot_values[slot(p)] when input_ids[p] is a placeholder, else token_weight[input_ids[p]].
// One cheap sequential pass over the B*T ids (a running count per placeholder type = the prefix count of
// the placeholder mask) gives each position its slot row, checks ids and counts, and records where each
// slot row goes; then OpenMP over the B*T rows writes every output row exactly once with one memcpy
// (vectorised by libc). No B x T x H buffer other than the output, no per-sample loop.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstring>
#include <string>
#include <vector>

namespace fastrec {
namespace {

struct SlotMap {
  std::vector<int64_t> slot;  // [B*T], -1 for ordinary tokens
  std::vector<int64_t> per_type;  // occurrences per placeholder type
  int64_t total = 0;
  int64_t bad_id = -1;  // first position with an id outside [0, V)
  int64_t bad_value = 0;
};

// Slot row of every position. Row-major order, or grouped by type when `offsets` is given
// (type s owns rows [offsets[s], offsets[s] + type_counts[s])).
template <typename index_t>
SlotMap map_slots(const index_t* ids, int64_t n, int64_t vocab, const std::vector<int64_t>& ph,
                  const std::vector<int64_t>* offsets) {
  SlotMap m;
  m.slot.assign(n, -1);
  m.per_type.assign(ph.size(), 0);
  const int64_t S = (int64_t)ph.size();
  for (int64_t p = 0; p < n; ++p) {
    const int64_t id = (int64_t)ids[p];
    if ((id < 0 || id >= vocab) && m.bad_id < 0) {
      m.bad_id = p;
      m.bad_value = id;
    }
    for (int64_t s = 0; s < S; ++s) {
      if (id == ph[s]) {
        m.slot[p] = offsets ? (*offsets)[s] + m.per_type[s] : m.total;
        ++m.per_type[s];
        ++m.total;
        break;
      }
    }
  }
  return m;
}

std::string join(const std::vector<int64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

std::tuple<at::Tensor, at::Tensor> splice_collab_tokens_cpu(const at::Tensor& input_ids,
                                                            const at::Tensor& token_weight,
                                                            const at::Tensor& placeholder_ids,
                                                            const at::Tensor& slot_values,
                                                            at::OptionalIntArrayRef type_counts) {
  TORCH_CHECK_VALUE(input_ids.scalar_type() == at::kLong || input_ids.scalar_type() == at::kInt,
                    "input_ids must be int32 or int64");
  TORCH_CHECK_VALUE(token_weight.dim() == 2, "token_weight must be 2-D [V, H]");
  TORCH_CHECK_VALUE(slot_values.dim() == 2 && slot_values.size(1) == token_weight.size(1),
                    "slot_values must be [N, H] with the H of token_weight");
  TORCH_CHECK_VALUE(slot_values.scalar_type() == token_weight.scalar_type(),
                    "slot_values and token_weight must have the same dtype");
  const at::Tensor ids = input_ids.contiguous();
  const at::Tensor weight = token_weight.contiguous();
  const at::Tensor values = slot_values.contiguous();
  const at::Tensor ph_t = placeholder_ids.to(at::kLong).contiguous();
  const std::vector<int64_t> ph(ph_t.data_ptr<int64_t>(), ph_t.data_ptr<int64_t>() + ph_t.numel());
  const int64_t n = ids.numel(), V = weight.size(0), H = weight.size(1), N = values.size(0);

  std::vector<int64_t> offsets;
  if (type_counts.has_value()) {
    TORCH_CHECK_VALUE((int64_t)type_counts->size() == (int64_t)ph.size(),
                      "type_counts needs one entry per placeholder id");
    int64_t acc = 0;
    for (int64_t c : *type_counts) {
      offsets.push_back(acc);
      acc += c;
    }
    TORCH_CHECK_VALUE(acc == N, "type_counts sum to ", acc, " but slot_values has ", N, " rows");
  }
  SlotMap m;
  if (ids.scalar_type() == at::kLong)
    m = map_slots(ids.data_ptr<int64_t>(), n, V, ph, type_counts ? &offsets : nullptr);
  else
    m = map_slots(ids.data_ptr<int32_t>(), n, V, ph, type_counts ? &offsets : nullptr);
  TORCH_CHECK_INDEX(m.bad_id < 0, "input_ids holds id ", m.bad_value,
                   " at flat position ", m.bad_id, ", outside the vocabulary [0, ", V, ")");
  if (type_counts.has_value()) {
    const std::vector<int64_t> want(type_counts->begin(), type_counts->end());
    TORCH_CHECK_VALUE(m.per_type == want, "input_ids holds ", join(m.per_type),
                      " placeholder occurrences per type but ", join(want), " slot rows were given per type");
  }
  TORCH_CHECK_VALUE(m.total == N, "slot_values has ", N, " rows but input_ids holds ", m.total,
                    " placeholder occurrences (one row per occurrence, row-major)");

  std::vector<int64_t> out_shape(ids.sizes().begin(), ids.sizes().end());
  out_shape.push_back(H);
  at::Tensor out = at::empty(out_shape, weight.options());
  at::Tensor slot_pos = at::empty({N}, ids.options().dtype(at::kLong));
  int64_t* pos = slot_pos.data_ptr<int64_t>();
  for (int64_t p = 0; p < n; ++p)
    if (m.slot[p] >= 0) pos[m.slot[p]] = p;
  if (n == 0 || H == 0) return {out, slot_pos};

  const size_t row_bytes = (size_t)H * weight.element_size();
  const char* w = static_cast<const char*>(weight.data_ptr());
  const char* v = static_cast<const char*>(values.data_ptr());
  char* o = static_cast<char*>(out.data_ptr());
  const bool wide = ids.scalar_type() == at::kLong;
  const int64_t* ids64 = wide ? ids.data_ptr<int64_t>() : nullptr;
  const int32_t* ids32 = wide ? nullptr : ids.data_ptr<int32_t>();
  const int64_t* slot = m.slot.data();
  // grain: enough rows per task that a task moves ~64 KiB
  const int64_t grain = std::max<int64_t>(1, (int64_t)(65536 / std::max<size_t>(row_bytes, 1)));
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t s = slot[p];
      const char* src = s >= 0 ? v + s * row_bytes : w + (wide ? ids64[p] : (int64_t)ids32[p]) * row_bytes;
      std::memcpy(o + p * row_bytes, src, row_bytes);
    }
  });
  return {out, slot_pos};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrec, CPU, m) { m.impl("splice_collab_tokens", &splice_collab_tokens_cpu); }

}  // namespace fastrec
