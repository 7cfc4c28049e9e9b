/* conflict_opt._native.cagrad_host (csrc/host_solve.c), registered by csrc/multi_tensor_cpu.c. */
#ifndef CONFLICT_OPT_HOST_SOLVE_H
#define CONFLICT_OPT_HOST_SOLVE_H

#include <Python.h>

/* Largest K solved here; conflict_opt/solvers/_host.py's MAX_K is the same. */
#define HOST_MAX_K 128

PyObject *py_cagrad_host(PyObject *self, PyObject *args);

#endif
