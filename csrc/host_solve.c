/*
 * conflict_opt._native.cagrad_host: the host fast path's CAGrad solve (backend "iterative",
 * methods "cagrad" and "cagrad_clip") for one small Gram, in C.
 *
 * conflict_opt/solvers/_host.py has the same algorithm in numpy and LAPACK (its module docstring
 * derives it): trace-normalise the symmetrised Gram, accept it only if Cholesky succeeds and its
 * 1-norm condition number is at most max_condition, follow the piecewise-linear KKT path q(nu)
 * of the dual (the LARS-style homotopy of _homotopy) to the root of q'Hq = sigma^2, then
 * certify, snap and form the coefficients exactly as _finish does. Why C: with K = 4 the numpy
 * version spends about 0.1 ms on call overhead of small-array operations, and inside a training
 * step, with cold caches after the backward passes, three times that; here the whole solve is a
 * few microseconds. Every branch mirrors the Python one line for line, so that the two accept and
 * return the same answers up to round-off (tests/test_host.py checks both on the same problems).
 *
 * Differences from the Python path, both on the side of refusing: the condition number is
 * computed exactly from the inverse (LAPACK's dpocon estimates a lower bound of the inverse's
 * norm), and non-finite intermediate values refuse. Refusing means returning None: the caller
 * then hands the problem to the batched torch path, as the Python path does.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "host_solve.h"

/* Cholesky factor L (lower, row-major n x n, stride ld) of the n x n block of h picked by idx;
 * returns 0, or -1 if a pivot is not positive (LAPACK dpotrf's test: ajj <= 0 or NaN). */
static int cholesky(const double *h, int ld, const int *idx, int n, double *l) {
    for (int i = 0; i < n; i++) {
        for (int j = 0; j <= i; j++) {
            double s = h[idx[i] * ld + idx[j]];
            for (int m = 0; m < j; m++) s -= l[i * n + m] * l[j * n + m];
            if (i == j) {
                if (!(s > 0.0)) return -1;
                l[i * n + i] = sqrt(s);
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    return 0;
}

/* Solve L L' x = b in place (b has n values). */
static void chol_solve(const double *l, int n, double *b) {
    for (int i = 0; i < n; i++) {
        double s = b[i];
        for (int m = 0; m < i; m++) s -= l[i * n + m] * b[m];
        b[i] = s / l[i * n + i];
    }
    for (int i = n - 1; i >= 0; i--) {
        double s = b[i];
        for (int m = i + 1; m < n; m++) s -= l[m * n + i] * b[m];
        b[i] = s / l[i * n + i];
    }
}

static double dot(const double *u, const double *v, int k) {
    double s = 0.0;
    for (int i = 0; i < k; i++) s += u[i] * v[i];
    return s;
}

static void matvec(const double *h, int k, const double *v, double *out) {
    for (int i = 0; i < k; i++) out[i] = dot(h + (size_t)i * k, v, k);
}

/* Scratch for one solve: K x K matrices and K-vectors, carved from one allocation. */
typedef struct {
    double *h, *l, *beta, *hv, *v, *u, *q, *tmp, *kept, *lengths;
    int *support, *outside;
} scratch_t;

/* The homotopy of _host._homotopy: writes p (k values) and returns the pieces walked, or 0. */
static int homotopy(const double *h, int k, const double *beta, double sigma, int budget,
                    scratch_t *s, double *p) {
    int first = 0;
    for (int i = 1; i < k; i++)
        if (beta[i] < beta[first]) first = i; /* numpy argmin: the first minimum */
    int n = 1;
    s->support[0] = first;
    for (int i = 0; i < k; i++) s->outside[i] = 1;
    s->outside[first] = 0;
    double nu = beta[first];
    int moved = first;
    for (int step = 1; step <= budget; step++) {
        if (cholesky(h, k, s->support, n, s->l) < 0) return 0;
        for (int a = 0; a < n; a++) {
            s->v[a] = 1.0;
            s->u[a] = beta[s->support[a]];
        }
        chol_solve(s->l, n, s->v);
        chol_solve(s->l, n, s->u);
        double sa = 0.0, sb = 0.0, sc = 0.0;
        for (int a = 0; a < n; a++) {
            sa += s->v[a];
            sb += s->u[a];
            sc += beta[s->support[a]] * s->u[a];
        }
        double disc = sb * sb - sa * (sc - sigma * sigma);
        if (!(sa > 0.0 && disc >= 0.0)) return 0;
        double root = (sb + sqrt(disc)) / sa;
        /* Entering: the first index outside the support whose slack reaches 0 first. */
        double nu_enter = INFINITY;
        int j = 0;
        int have_j = 0;
        for (int i = 0; i < k; i++) {
            double hv = 0.0, hu = 0.0;
            for (int a = 0; a < n; a++) {
                double x = h[i * k + s->support[a]];
                hv += x * s->v[a];
                hu += x * s->u[a];
            }
            double slope = hv - 1.0;
            if (s->outside[i] && slope < 0.0 && i != moved) {
                double at = (beta[i] - hu) / -slope;
                if (!have_j || at < nu_enter) {
                    nu_enter = at;
                    j = i;
                    have_j = 1;
                }
            }
        }
        /* Leaving: the first support position whose q reaches 0 first. */
        double nu_leave = INFINITY;
        int i_leave = 0;
        int have_i = 0;
        for (int a = 0; a < n; a++) {
            if (!(s->v[a] < 0.0)) continue;
            if (a == n - 1 && s->support[a] == moved) continue;
            double at = s->u[a] / s->v[a];
            if (!have_i || at < nu_leave) {
                nu_leave = at;
                i_leave = a;
                have_i = 1;
            }
        }
        if (!isfinite(nu_enter) && have_j) return 0;
        if (!isfinite(nu_leave) && have_i) return 0;
        if (nu_enter < nu) nu_enter = nu;
        if (nu_leave < nu) nu_leave = nu;
        if (root <= (nu_enter < nu_leave ? nu_enter : nu_leave)) {
            double total = 0.0;
            for (int i = 0; i < k; i++) p[i] = 0.0;
            for (int a = 0; a < n; a++) {
                double x = root * s->v[a] - s->u[a];
                p[s->support[a]] = x > 0.0 ? x : 0.0;
            }
            for (int i = 0; i < k; i++) total += p[i];
            if (!(total > 0.0) || !isfinite(total)) return 0;
            for (int i = 0; i < k; i++) p[i] /= total;
            return step;
        }
        if (!isfinite(root)) return 0;
        if (nu_leave <= nu_enter) {
            moved = s->support[i_leave];
            for (int a = i_leave; a < n - 1; a++) s->support[a] = s->support[a + 1];
            n--;
            s->outside[moved] = 1;
            nu = nu_leave;
        } else {
            s->support[n++] = j;
            s->outside[j] = 0;
            moved = j;
            nu = nu_enter;
        }
        if (n == 0) return 0;
    }
    return 0;
}

/* Squared norm test of _finish: x'Hx > floor * (x . lengths)^2, with x'Hx returned. */
static int trusted(const double *h, int k, const double *x, const double *lengths, double floor,
                   double *tmp, double *sq) {
    matvec(h, k, x, tmp);
    *sq = dot(x, tmp, k);
    double yard = dot(x, lengths, k);
    return *sq > floor * yard * yard;
}

PyObject *py_cagrad_host(PyObject *self, PyObject *args) {
    unsigned long long ptr;
    int k, clip, budget;
    Py_ssize_t s0, s1;
    PyObject *w_obj;
    double c, floor_, tol, max_condition, snap, snap_cost, tol_optimal;
    if (!PyArg_ParseTuple(args, "KinnOpdddidddd", &ptr, &k, &s0, &s1, &w_obj, &clip, &c, &floor_,
                          &tol, &budget, &max_condition, &snap, &snap_cost, &tol_optimal))
        return NULL;
    if (k < 1 || k > HOST_MAX_K) {
        PyErr_Format(PyExc_ValueError, "k = %d is outside 1..%d", k, HOST_MAX_K);
        return NULL;
    }
    if (ptr == 0) {
        PyErr_SetString(PyExc_ValueError, "the Gram's data pointer is 0");
        return NULL;
    }
    PyObject *wf = PySequence_Fast(w_obj, "weights must be a sequence of floats");
    if (wf == NULL) return NULL;
    if (PySequence_Fast_GET_SIZE(wf) != k) {
        PyErr_Format(PyExc_ValueError, "got %zd weights for k = %d", PySequence_Fast_GET_SIZE(wf),
                     k);
        Py_DECREF(wf);
        return NULL;
    }
    size_t kk = (size_t)k * k;
    double *mem = PyMem_Malloc((2 * kk + 10 * (size_t)k) * sizeof(double));
    int *imem = PyMem_Malloc(2 * (size_t)k * sizeof(int));
    if (mem == NULL || imem == NULL) {
        PyMem_Free(mem);
        PyMem_Free(imem);
        Py_DECREF(wf);
        return PyErr_NoMemory();
    }
    double *vec = mem + 2 * kk; /* ten k-vectors */
    scratch_t s = {
        .h = mem, .l = mem + kk, .beta = vec, .hv = vec + k, .v = vec + 2 * k, .u = vec + 3 * k,
        .q = vec + 4 * k, .tmp = vec + 5 * k, .kept = vec + 6 * k, .lengths = vec + 7 * k,
        .support = imem, .outside = imem + k,
    };
    double *w = vec + 8 * k, *p = vec + 9 * k;
    PyObject *result = NULL;
    for (int i = 0; i < k; i++) {
        w[i] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(wf, i));
        if (w[i] == -1.0 && PyErr_Occurred()) goto done;
    }

    /* _symmetrised: finite entries, (with validation) symmetric within tol, then (H + H')/2. */
    const double *raw = (const double *)(uintptr_t)ptr;
    double magnitude = 0.0, asym = 0.0;
    for (int i = 0; i < k; i++)
        for (int j = 0; j < k; j++) {
            double x = raw[i * s0 + j * s1];
            if (!isfinite(x)) goto refuse;
            double ax = fabs(x);
            if (ax > magnitude) magnitude = ax;
            double d = fabs(x - raw[j * s0 + i * s1]);
            if (d > asym) asym = d;
        }
    if (isfinite(tol) && !(asym <= tol * magnitude)) goto refuse; /* tol = inf: not validated */
    double trace = 0.0;
    for (int i = 0; i < k; i++) trace += raw[i * s0 + i * s1];
    if (!(trace > 0.0)) goto refuse;
    double scale = 1.0 / trace;
    for (int i = 0; i < k; i++)
        for (int j = 0; j < k; j++)
            s.h[i * k + j] = 0.5 * (raw[i * s0 + j * s1] + raw[j * s0 + i * s1]) * scale;

    /* Positive definite, with 1-norm condition number <= max_condition (exact, via H^-1). */
    for (int i = 0; i < k; i++) s.support[i] = i;
    if (cholesky(s.h, k, s.support, k, s.l) < 0) goto refuse;
    double norm = 0.0, inv_norm = 0.0;
    for (int j = 0; j < k; j++) {
        double col = 0.0;
        for (int i = 0; i < k; i++) {
            col += fabs(s.h[i * k + j]);
            s.tmp[i] = i == j ? 1.0 : 0.0;
        }
        if (col > norm) norm = col;
        chol_solve(s.l, k, s.tmp);
        double icol = 0.0;
        for (int i = 0; i < k; i++) icol += fabs(s.tmp[i]);
        if (!(icol <= inv_norm)) inv_norm = icol; /* NaN propagates into the test below */
    }
    if (!(norm * inv_norm <= max_condition)) goto refuse;

    /* The anchor g_0 = sum w_i g_i and the dual's linear term (_active_set). */
    for (int i = 0; i < k; i++) s.lengths[i] = sqrt(s.h[i * k + i]);
    matvec(s.h, k, w, s.hv);
    double g0_sq = dot(w, s.hv, k);
    double yard = dot(w, s.lengths, k);
    if (!(g0_sq > floor_ * yard * yard)) goto refuse;
    double anchor = sqrt(g0_sq);
    for (int i = 0; i < k; i++) s.beta[i] = s.hv[i] / anchor;
    int pieces = homotopy(s.h, k, s.beta, c, budget, &s, p);
    if (pieces == 0) goto refuse;

    /* _finish: Frank-Wolfe certificate, snap, clip, coefficients. */
    double size = 0.0;
    for (int i = 0; i < k; i++)
        if (s.lengths[i] > size) size = s.lengths[i];
    if (size == 0.0) size = 1.0;
    double r_sq;
    if (!trusted(s.h, k, p, s.lengths, floor_, s.hv, &r_sq)) goto refuse;
    double r = sqrt(r_sq);
    double phi = dot(s.beta, p, k) + c * r;
    double ratio = c / r;
    double min_beta = s.beta[0], min_lin = s.beta[0] + ratio * s.hv[0];
    for (int i = 1; i < k; i++) {
        if (s.beta[i] < min_beta) min_beta = s.beta[i];
        double x = s.beta[i] + ratio * s.hv[i];
        if (x < min_lin) min_lin = x;
    }
    double psi = min_beta > min_lin ? min_beta : min_lin;
    if (!isfinite(phi) || !isfinite(psi)) goto refuse;
    double gap = phi - psi > 0.0 ? (phi - psi) / size : 0.0;
    double pmax = p[0];
    for (int i = 1; i < k; i++)
        if (p[i] > pmax) pmax = p[i];
    double cut = snap * pmax;
    int small = 0;
    for (int i = 0; i < k; i++) small |= (p[i] > 0.0 && p[i] <= cut);
    if (small) {
        double total = 0.0;
        for (int i = 0; i < k; i++) {
            s.kept[i] = p[i] <= cut ? 0.0 : p[i];
            total += s.kept[i];
        }
        for (int i = 0; i < k; i++) s.kept[i] /= total;
        double kept_sq;
        if (trusted(s.h, k, s.kept, s.lengths, floor_, s.tmp, &kept_sq)) {
            double rise = dot(s.beta, s.kept, k) + c * sqrt(kept_sq) - phi;
            double increase = (rise > 0.0 ? rise : 0.0) / size;
            if (increase <= snap_cost) {
                memcpy(p, s.kept, (size_t)k * sizeof(double));
                gap += increase;
            }
        }
    }
    if (!(gap <= tol_optimal)) goto refuse;
    int any = 0;
    for (int i = 0; i < k; i++) {
        s.q[i] = clip && w[i] < p[i] ? w[i] : p[i]; /* the clipped dual min(p, w) */
        any |= s.q[i] != 0.0;
    }
    double *coeffs = s.kept;
    if (!any) {
        /* supp(p) and supp(w) disjoint: G~_p = 0 and RACO takes G_0 = g_0, a = w. */
        memcpy(coeffs, w, (size_t)k * sizeof(double));
    } else {
        double clipped_sq;
        if (!trusted(s.h, k, s.q, s.lengths, floor_, s.tmp, &clipped_sq)) goto refuse;
        double factor = c * anchor / sqrt(clipped_sq);
        for (int i = 0; i < k; i++) coeffs[i] = w[i] + factor * s.q[i];
    }
    /* (coeffs, dual, clipped dual, gap, pieces), as _host._active_set returns them. */
    const double *rows[3] = {coeffs, p, s.q};
    PyObject *lists[3] = {NULL, NULL, NULL};
    for (int m = 0; m < 3; m++) {
        lists[m] = PyList_New(k);
        for (int i = 0; lists[m] != NULL && i < k; i++) {
            PyObject *x = PyFloat_FromDouble(rows[m][i]);
            if (x == NULL) Py_CLEAR(lists[m]);
            else PyList_SET_ITEM(lists[m], i, x);
        }
        if (lists[m] == NULL) {
            for (int n = 0; n < m; n++) Py_DECREF(lists[n]);
            goto done;
        }
    }
    result = Py_BuildValue("(NNNdi)", lists[0], lists[1], lists[2], gap, pieces);
    goto done;
refuse:
    result = Py_NewRef(Py_None);
done:
    PyMem_Free(mem);
    PyMem_Free(imem);
    Py_DECREF(wf);
    return result;
}
