// The one place where fastrec's op schemas are declared. Backends register kernels in
// csrc/cpu/*.cpp (TORCH_LIBRARY_IMPL(fastrec, CPU)) and csrc/cuda/*.cu (TORCH_LIBRARY_IMPL(fastrec, CUDA));
// fake kernels and autograd are registered from Python (fastrec/ops/).
#include <Python.h>
#include <torch/library.h>

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
  // semantic fusion lookup, KIRec (fastrec/ops/fusion.py)
  m.def(
      "semantic_fusion_lookup(Tensor item_ids, Tensor id_table, Tensor semantic_table, Tensor weight, "
      "Tensor? bias, Tensor? fuse_weight, Tensor? fuse_bias, str mode, int padding_idx, int strategy) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("semantic_fusion_weight_grad(Tensor rows, Tensor grad_reduced, Tensor semantic_table) -> Tensor");
}
