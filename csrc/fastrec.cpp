// The one place where fastrec's op schemas are declared. Backends register kernels in
// csrc/cpu/*.cpp (TORCH_LIBRARY_IMPL(fastrec, CPU)) and csrc/cuda/*.cu (TORCH_LIBRARY_IMPL(fastrec, CUDA));
// fake kernels and autograd are registered from Python (fastrec/ops/).
#include <Python.h>
#include <torch/library.h>

#include "cpu/amx.h"

extern "C" {
// A plain module so that `import fastrec._C` loads the library and runs the registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(fastrec, m) {
  // residual quantization (fastrec/ops/quantize.py)
  m.def("nearest_code(Tensor x, Tensor codebook) -> (Tensor, Tensor)");
  m.def("residual_encode(Tensor x, Tensor codebooks) -> (Tensor, Tensor)");
  // build information, so Python can report the active backends
  m.def("_built_with_cuda() -> bool", []() -> bool {
#ifdef FASTREC_WITH_CUDA
    return true;
#else
    return false;
#endif
  });
  // whether the CPU kernels of nearest_code / residual_encode use the AMX tile unit (cpu/amx.h)
  m.def("_cpu_amx() -> bool", []() -> bool { return fastrec::amx::enabled(); });
  // collaborative graph: CSR x dense, fused LightGCN propagation, full-ranking top-K (fastrec/ops/graph.py)
  m.def("spmm(Tensor indptr, Tensor indices, Tensor values, Tensor dense) -> Tensor");
  m.def(
      "lightgcn_propagate(Tensor indptr, Tensor indices, Tensor values, Tensor t_indptr, Tensor t_indices, "
      "Tensor t_values, Tensor emb, float[] layer_weights) -> Tensor");
  // the merge-path partition of the CUDA SpMM (csrc/common/graph.h), for tests and benchmarks only
  m.def("_graph_partition(Tensor indptr, int nnz, int items_per_worker) -> Tensor");
  m.def(
      "topk_scores(Tensor queries, Tensor items, int k, Tensor? exclude_indptr, Tensor? exclude_indices) "
      "-> (Tensor, Tensor)");
  // collaborative-token splicing, SeLLa-Rec (fastrec/ops/collab.py)
  m.def("splice_collab_tokens(Tensor input_ids, Tensor token_weight, Tensor placeholder_ids, Tensor slot_values, "
        "int[]? type_counts=None) -> (Tensor, Tensor)");
  // semantic fusion lookup, KIRec (fastrec/ops/fusion.py)
  m.def(
      "semantic_fusion_lookup(Tensor item_ids, Tensor id_table, Tensor semantic_table, Tensor weight, "
      "Tensor? bias, Tensor? fuse_weight, Tensor? fuse_bias, str mode, int padding_idx, int strategy) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("semantic_fusion_weight_grad(Tensor rows, Tensor grad_reduced, Tensor semantic_table) -> Tensor");
  // fused sparse optimizer step of an embedding table (fastrec/ops/embedding_optim.py)
  m.def(
      "embedding_sparse_update(Tensor(a!) weight, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, Tensor ids, "
      "Tensor grad, str optimizer, float lr, float beta1, float beta2, float eps, float weight_decay, int step, "
      "int padding_idx) -> ()");
  // LC-Rec trie constraint and uniform mapping (fastrec/ops/trie.py, fastrec/ops/sinkhorn.py)
  m.def("trie_mask(Tensor scores, Tensor generated, Tensor indptr, Tensor tokens, Tensor children, float fill) -> Tensor");
  m.def("sinkhorn_assign(Tensor distances, float epsilon, int iters) -> Tensor");
}
