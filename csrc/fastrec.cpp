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
  // LC-Rec trie constraint and uniform mapping (fastrec/ops/trie.py, fastrec/ops/sinkhorn.py)
  m.def("trie_mask(Tensor scores, Tensor generated, Tensor indptr, Tensor tokens, Tensor children, float fill) -> Tensor");
  m.def("sinkhorn_assign(Tensor distances, float epsilon, int iters) -> Tensor");
}
