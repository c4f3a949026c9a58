#define PY_SSIZE_T_CLEAN
#include <Python.h>
static struct PyModuleDef np_module = {PyModuleDef_HEAD_INIT, "_np", NULL, -1, NULL};
PyMODINIT_FUNC PyInit__np(void) { return PyModule_Create(&np_module); }
