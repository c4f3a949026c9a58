// The Python module tpt_ops._C: importing it runs the op registrations of
// every csrc/torch/<family>.cpp linked into it. It has no Python methods, so
// a minimal CPython C-API init (limited API, no C++ binding library) is all it needs.
#include <Python.h>

static struct PyModuleDef tpt_module = {PyModuleDef_HEAD_INIT, "_C",
                                        "tpt_ops kernels, registered as torch.ops.tpt.*", -1,
                                        nullptr};

extern "C" PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&tpt_module); }
