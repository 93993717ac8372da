// densecorr._C as a Python module: an empty module of the Python limited API (abi3), so that
// `import densecorr._C` loads the library, whose static initialisers register the kernel ops
// with the dispatcher (densecorr.cpp, cpu/, cuda/). Build information is an op
// (densecorr_ext::build_flags), not a Python function: nothing here depends on torch.
#include <Python.h>

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // name
      "densecorr's compiled kernels (registered as torch.ops.densecorr_ext.*)",
      -1,    // per-interpreter state: none
      nullptr,
  };
  return PyModule_Create(&module_def);
}
}
