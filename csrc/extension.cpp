// The module stub that lets Python import the extension as sthfast._C. Each op's folder holds its
// schemas (schema.cpp), header and kernels per device; autograd and fake tensors are registered
// from Python (sthfast/backends/extension.py), so that the ops compose with torch.compile.
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "sthfast C++/CUDA ops", -1, nullptr};
  return PyModule_Create(&module);
}
