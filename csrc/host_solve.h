/* The host fast path's solves (csrc/host_solve.c): conflict_opt._native.solve_host, and the C
 * entry host_solve() that conflict_opt._native.step (csrc/multi_tensor_cpu.c) calls. */
#ifndef CONFLICT_OPT_HOST_SOLVE_H
#define CONFLICT_OPT_HOST_SOLVE_H

#include <Python.h>
#include <stddef.h>

/* Largest K solved here; conflict_opt/solvers/_host.py's MAX_K is the same. */
#define HOST_MAX_K 128

/* Methods, as conflict_opt/solvers/_host.py's _NATIVE_METHOD numbers them. HOST_TRIVIAL is
 * "linear" (or CAGrad with c = 0): a = w, nothing to solve. */
enum { HOST_CAGRAD = 0, HOST_CAGRAD_CLIP = 1, HOST_MGDA = 2, HOST_TRIVIAL = 3 };

/* Options of one solve, parsed from the Python tuple
 * (method, closed_form, c, floor, zero, tol, budget, max_condition, snap, snap_cost,
 *  tol_optimal, min_det, roundoff); _host._native_options builds it. */
typedef struct {
    int method;
    int closed_form; /* 1: the closed form (K <= 3); 0: the homotopy (CAGrad methods) */
    double c;
    double floor;    /* trusted squared norms: above floor * yardstick^2 (CAGrad) */
    double zero;     /* the same for MGDA's squared objective */
    double tol;      /* symmetry tolerance relative to max |H|; inf: not checked */
    int budget;      /* homotopy pieces */
    double max_condition, snap, snap_cost, tol_optimal;
    double min_det;  /* closed form, K = 3: interior candidate needs det(H) above this */
    double roundoff; /* closed form: no eigenvalue of the normalised H below -roundoff */
} host_opts_t;

int host_parse_opts(PyObject *tuple, host_opts_t *o);

/* Solve the k x k Gram at raw (strides s0, s1 in elements) for weights w. Returns 1 and fills
 * coeffs, dual, clipped (k values each), *gap and *pieces; 0 where the Python host path would
 * hand the problem to the torch path; -1 when out of memory. Needs no GIL. */
int host_solve(const double *raw, int k, ptrdiff_t s0, ptrdiff_t s1, const double *w,
               const host_opts_t *o, double *coeffs, double *dual, double *clipped, double *gap,
               int *pieces);

/* (coeffs, dual, clipped, gap, pieces) as Python lists and numbers. */
PyObject *host_answer(int k, const double *coeffs, const double *dual, const double *clipped,
                      double gap, int pieces);

/* Weights from a Python sequence of k floats; 0, or -1 with an exception set. */
int host_weights(PyObject *obj, int k, double *w);

PyObject *py_solve_host(PyObject *self, PyObject *args);

#endif
