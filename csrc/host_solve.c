/*
 * The host fast path's solves for one small Gram, in C: conflict_opt._native.solve_host, and
 * host_solve() for conflict_opt._native.step (csrc/multi_tensor_cpu.c).
 *
 * conflict_opt/solvers/_host.py has the same algorithms in scalar Python and numpy/LAPACK (its
 * module docstring derives them), and every branch here mirrors a line there, so that the two
 * accept and return the same answers up to round-off (tests/test_host_native.py checks that):
 *
 *   closed form (K <= 3, any method but the trivial one; _host._closed_form): symmetric within
 *     tol, trace-normalise, no eigenvalue below -roundoff, then the best of the edge
 *     minimisers and, for K = 3, the smooth interior KKT point;
 *   active set (backend "iterative"; _host._active_set): trace-normalise, accept only if
 *     Cholesky succeeds and the 1-norm condition number is at most max_condition, then, for
 *     "cagrad" and "cagrad_clip", follow the piecewise-linear KKT path q(nu) of the dual (the
 *     LARS-style walk of _host._homotopy) to the root of q'Hq = sigma^2, and for "mgda" solve
 *     the nonnegative QP min q'Hq/2 - 1'q by Lawson-Hanson's active set (_host._nnqp);
 *
 * and both end in _finish: Frank-Wolfe certificate, snap, clip, coefficients. Why C: one solve
 * is some hundred operations on 2 to 32 numbers, which scalar Python (the closed form, ~35 us)
 * or small numpy calls (the active set, ~0.1 ms) pay for in interpreter and call overhead, and
 * inside a training step, with cold caches after the backward passes, several times that. Here
 * either takes a few microseconds.
 *
 * Differences from the Python path, all on the side of refusing: the active set's condition
 * number is computed exactly from the inverse (LAPACK's dpocon estimates a lower bound of the
 * inverse's norm), and non-finite intermediate values refuse. Refusing means returning None
 * (0 from host_solve): the caller then hands the problem to the batched torch path, as the
 * Python path does.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
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
    double *h, *l, *beta, *hv, *v, *u, *tmp, *kept, *lengths;
    int *support, *outside, *excluded;
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

/* _host._nnqp: argmin_{q >= 0} q'hq/2 - b'q for positive definite h by Lawson-Hanson's active
 * set (MGDA's dual with b = 1). Writes q (k values) and returns the pivots used (at least 1), or
 * 0 when a solve fails or the budget runs out. Uses s->l, v, tmp and the three int arrays;
 * s->support lists the support in increasing index order, as numpy's flatnonzero does. */
static int nnqp(const double *h, int k, const double *b, int budget, scratch_t *s, double *q) {
    int *in = s->outside, *excluded = s->excluded, *idx = s->support;
    int pivots = 0;
    for (int i = 0; i < k; i++) q[i] = 0.0, in[i] = 0, excluded[i] = 0;
    for (;;) {
        /* The entering index: the largest gradient b - hq beyond the round-off of its terms
         * among those neither in the support nor excluded (numpy argmax: the first maximum;
         * a NaN wins and then stops the walk, as not NaN > 0). */
        int j = -1;
        double best = -INFINITY;
        for (int i = 0; i < k; i++) {
            double grad = b[i], mag = fabs(b[i]);
            for (int m = 0; m < k; m++) {
                grad -= h[i * k + m] * q[m];
                mag += fabs(h[i * k + m]) * q[m];
            }
            double cand = in[i] || excluded[i] ? -INFINITY : grad - 1e-13 * mag;
            if (isnan(cand)) {
                j = i;
                best = cand;
                break;
            }
            if (j < 0 || cand > best) {
                j = i;
                best = cand;
            }
        }
        if (!(best > 0.0)) return pivots; /* 0 (refuse) only if nothing ever entered */
        in[j] = 1;
        pivots++;
        int entering = 1;
        for (;;) {
            if (pivots > budget) return 0;
            int n = 0;
            for (int i = 0; i < k; i++)
                if (in[i]) idx[n++] = i;
            if (cholesky(h, k, idx, n, s->l) < 0) return 0;
            for (int a = 0; a < n; a++) s->v[a] = b[idx[a]];
            chol_solve(s->l, n, s->v); /* z */
            int all_positive = 1;
            for (int a = 0; a < n; a++) all_positive &= s->v[a] > 0.0;
            if (all_positive) {
                for (int i = 0; i < k; i++) q[i] = 0.0, excluded[i] = 0;
                for (int a = 0; a < n; a++) q[idx[a]] = s->v[a];
                break;
            }
            if (entering) {
                int blocked_j = 0;
                for (int a = 0; a < n; a++) blocked_j |= idx[a] == j && s->v[a] <= 0.0;
                if (blocked_j) {
                    /* Round-off: an index with a positive gradient enters with z_j > 0 in exact
                     * arithmetic; letting it leave again would cycle. */
                    in[j] = 0;
                    excluded[j] = 1;
                    break;
                }
            }
            entering = 0;
            /* The longest step from q towards z keeping q >= 0 (current >= 0 >= z if blocked). */
            double step = INFINITY;
            for (int a = 0; a < n; a++) {
                double cur = q[idx[a]], z = s->v[a], ratio = INFINITY;
                if (z <= 0.0) {
                    double denom = cur - z;
                    ratio = denom > 0.0 ? cur / denom : 0.0;
                }
                s->tmp[a] = ratio;
                if (ratio < step) step = ratio;
            }
            for (int a = 0; a < n; a++) {
                double cur = q[idx[a]];
                cur = cur + step * (s->v[a] - cur);
                if (s->tmp[a] <= step || cur <= 0.0) cur = 0.0;
                q[idx[a]] = cur;
                if (cur <= 0.0) in[idx[a]] = 0;
            }
            pivots++;
        }
    }
}

/* Squared norm test of _finish: x'Hx > floor * (x . lengths)^2, with x'Hx returned. */
static int trusted(const double *h, int k, const double *x, const double *lengths, double floor,
                   double *tmp, double *sq) {
    matvec(h, k, x, tmp);
    *sq = dot(x, tmp, k);
    double yard = dot(x, lengths, k);
    return *sq > floor * yard * yard;
}

/* _host._finish: certificate, snap and coefficients of p (modified in place by the snap) on the
 * trace-normalised h. Writes coeffs and clipped and returns 1, or returns 0 (refuse). */
static int finish(const double *h, int k, const double *lengths, const double *w,
                  const double *beta, double sigma, double anchor, double *p,
                  const host_opts_t *o, scratch_t *s, double *coeffs, double *clipped,
                  double *gap_out) {
    int mgda = o->method == HOST_MGDA;
    double floor_ = mgda ? o->zero : o->floor;
    double size = 0.0;
    for (int i = 0; i < k; i++)
        if (lengths[i] > size) size = lengths[i];
    if (size == 0.0) size = 1.0;
    double r_sq;
    if (!trusted(h, k, p, lengths, floor_, s->hv, &r_sq)) return 0;
    double r = sqrt(r_sq);
    double phi = dot(beta, p, k) + sigma * r;
    /* The Frank-Wolfe bound of _problem.certificate: u = 0 and u = sigma G_p / |G_p|. */
    double ratio = sigma / r;
    double min_beta = beta[0], min_lin = beta[0] + ratio * s->hv[0];
    for (int i = 1; i < k; i++) {
        if (beta[i] < min_beta) min_beta = beta[i];
        double x = beta[i] + ratio * s->hv[i];
        if (x < min_lin) min_lin = x;
    }
    double psi = min_beta > min_lin ? min_beta : min_lin;
    if (!isfinite(phi) || !isfinite(psi)) return 0;
    double gap = phi - psi > 0.0 ? phi - psi : 0.0;
    gap = mgda ? gap * (phi + (psi > 0.0 ? psi : 0.0)) / (size * size) : gap / size;
    double pmax = p[0];
    for (int i = 1; i < k; i++)
        if (p[i] > pmax) pmax = p[i];
    double cut = o->snap * pmax;
    int small = 0;
    for (int i = 0; i < k; i++) small |= (p[i] > 0.0 && p[i] <= cut);
    if (small) {
        double total = 0.0;
        for (int i = 0; i < k; i++) {
            s->kept[i] = p[i] <= cut ? 0.0 : p[i];
            total += s->kept[i];
        }
        for (int i = 0; i < k; i++) s->kept[i] /= total;
        double kept_sq;
        if (trusted(h, k, s->kept, lengths, floor_, s->tmp, &kept_sq)) {
            double rise = dot(beta, s->kept, k) + sigma * sqrt(kept_sq) - phi;
            double increase = (rise > 0.0 ? rise : 0.0) / size;
            if (increase <= o->snap_cost) {
                if (mgda) increase *= 2.0 * phi / size + increase;
                memcpy(p, s->kept, (size_t)k * sizeof(double));
                gap += increase;
            }
        }
    }
    if (!(gap <= o->tol_optimal)) return 0;
    *gap_out = gap;
    if (mgda) {
        memcpy(coeffs, p, (size_t)k * sizeof(double));
        memcpy(clipped, p, (size_t)k * sizeof(double));
        return 1;
    }
    int clip = o->method == HOST_CAGRAD_CLIP, any = 0;
    for (int i = 0; i < k; i++) {
        clipped[i] = clip && w[i] < p[i] ? w[i] : p[i]; /* the clipped dual min(p, w) */
        any |= clipped[i] != 0.0;
    }
    if (!any) {
        /* supp(p) and supp(w) disjoint: G~_p = 0 and RACO takes G_0 = g_0, a = w. */
        memcpy(coeffs, w, (size_t)k * sizeof(double));
        return 1;
    }
    double clipped_sq;
    if (!trusted(h, k, clipped, lengths, floor_, s->tmp, &clipped_sq)) return 0;
    double factor = o->c * anchor / sqrt(clipped_sq);
    for (int i = 0; i < k; i++) coeffs[i] = w[i] + factor * clipped[i];
    return 1;
}

/* --- closed form (K <= 3), _host._closed_form ------------------------------------------- */

/* _host._psd_within: no eigenvalue of the symmetric h below -margin, i.e. the Cholesky
 * factorisation of h + margin I succeeds (every pivot positive; backward stable, so right for
 * singular Grams too). l: k * k scratch. */
static int psd_within(const double *h, int k, double margin, double *l) {
    for (int i = 0; i < k; i++)
        for (int j = 0; j <= i; j++) {
            double s = h[i * k + j] + (i == j ? margin : 0.0);
            for (int m = 0; m < j; m++) s -= l[i * k + m] * l[j * k + m];
            if (i == j) {
                if (!(s > 0.0)) return 0;
                l[i * k + i] = sqrt(s);
            } else {
                l[i * k + j] = s / l[j * k + j];
            }
        }
    return 1;
}

/* Phi's minimum on the edge lambda e_i + (1 - lambda) e_j and its minimiser (_host._edge). */
static double edge(const double *h, int k, const double *beta, double sigma, int i, int j,
                   double *point) {
    double hii = h[i * k + i], hjj = h[j * k + j], hij = h[i * k + j];
    double bi = beta[i], bj = beta[j];
    double q2 = hii + hjj - 2.0 * hij;
    double lam, value;
    if (q2 > 0.0) {
        double lam0 = (hjj - hij) / q2;
        double m = fmax((hii * hjj - hij * hij) / q2, 0.0);
        lam = 0.0;
        value = bj + sigma * sqrt(fmax(q2 * lam0 * lam0 + m, 0.0));
        double one = bi + sigma * sqrt(fmax(q2 * (1.0 - lam0) * (1.0 - lam0) + m, 0.0));
        if (one < value) {
            lam = 1.0;
            value = one;
        }
        double kappa = (bj - bi) / sigma;
        double room = q2 - kappa * kappa;
        if (room > 0.0) {
            double x = fmin(fmax(lam0 + kappa * sqrt(m / (q2 * room)), 0.0), 1.0);
            double inner =
                bj + (bi - bj) * x + sigma * sqrt(fmax(q2 * (x - lam0) * (x - lam0) + m, 0.0));
            if (inner < value) {
                lam = x;
                value = inner;
            }
        }
    } else {
        /* g_i = g_j: |G_p| is constant on the edge and Phi is linear. */
        lam = bi < bj ? 1.0 : 0.0;
        value = bj + (bi - bj) * lam + sigma * sqrt(fmax(hjj, 0.0));
    }
    for (int m = 0; m < k; m++) point[m] = 0.0;
    point[i] = lam;
    point[j] = 1.0 - lam;
    return value;
}

/* The smooth interior KKT point for K = 3 and Phi there (= nu), by the adjugate
 * (_host._interior); returns 0 where there is none. */
static int interior(const double *h, const double *beta, double sigma, double min_det,
                    double *value, double *point) {
    double a = h[0], b = h[1], c = h[2], d = h[4], e = h[5], f = h[8];
    double a00 = d * f - e * e, a01 = c * e - b * f, a02 = b * e - c * d;
    double a11 = a * f - c * c, a12 = b * c - a * e, a22 = a * d - b * b;
    double det = a * a00 + b * a01 + c * a02;
    if (!(det > min_det)) return 0;
    double b0 = beta[0], b1 = beta[1], b2 = beta[2];
    double inv_one[3] = {(a00 + a01 + a02) / det, (a01 + a11 + a12) / det,
                         (a02 + a12 + a22) / det};
    double inv_beta[3] = {(a00 * b0 + a01 * b1 + a02 * b2) / det,
                          (a01 * b0 + a11 * b1 + a12 * b2) / det,
                          (a02 * b0 + a12 * b1 + a22 * b2) / det};
    double big_a = inv_one[0] + inv_one[1] + inv_one[2];
    double big_b = inv_beta[0] + inv_beta[1] + inv_beta[2];
    double big_c = dot(beta, inv_beta, 3);
    double disc = big_b * big_b - big_a * (big_c - sigma * sigma);
    if (!(big_a > 0.0 && disc >= 0.0)) return 0;
    double nu = (big_b + sqrt(disc)) / big_a;
    double q[3], total = 0.0, low = INFINITY;
    for (int i = 0; i < 3; i++) {
        q[i] = nu * inv_one[i] - inv_beta[i];
        total += q[i];
        if (q[i] < low) low = q[i];
    }
    if (!(total > 0.0) || low < 0.0) return 0;
    for (int i = 0; i < 3; i++) point[i] = q[i] / total;
    *value = nu;
    return 1;
}

/* --- entry ------------------------------------------------------------------------------- */

int host_solve(const double *raw, int k, ptrdiff_t s0, ptrdiff_t s1, const double *w,
               const host_opts_t *o, double *coeffs, double *dual, double *clipped, double *gap,
               int *pieces) {
    if (k < 1 || k > HOST_MAX_K) return 0;
    if (o->method == HOST_TRIVIAL) {
        /* a = w: nothing to solve; a non-finite Gram is the torch path's (status NONFINITE). */
        for (int i = 0; i < k; i++)
            for (int j = 0; j < k; j++)
                if (!isfinite(raw[i * s0 + j * s1])) return 0;
        memcpy(coeffs, w, (size_t)k * sizeof(double));
        memcpy(dual, w, (size_t)k * sizeof(double));
        memcpy(clipped, w, (size_t)k * sizeof(double));
        *gap = 0.0;
        *pieces = 0;
        return 1;
    }
    if (o->closed_form && k > 3) return 0; /* the Python path's */
    size_t kk = (size_t)k * k;
    double *mem = malloc((2 * kk + 7 * (size_t)k) * sizeof(double));
    int *imem = malloc(3 * (size_t)k * sizeof(int));
    if (mem == NULL || imem == NULL) {
        free(mem);
        free(imem);
        return -1;
    }
    double *vec = mem + 2 * kk; /* seven k-vectors */
    scratch_t s = {
        .h = mem, .l = mem + kk, .beta = vec, .hv = vec + k, .v = vec + 2 * k, .u = vec + 3 * k,
        .tmp = vec + 4 * k, .kept = vec + 5 * k, .lengths = vec + 6 * k,
        .support = imem, .outside = imem + k, .excluded = imem + 2 * k,
    };
    int ok = 0, walked = 0;

    /* Finite entries and (with validation, tol < inf) max |H - H'| <= tol max |H|. */
    double magnitude = 0.0, asym = 0.0, trace = 0.0;
    for (int i = 0; i < k; i++) {
        trace += raw[i * s0 + i * s1];
        for (int j = 0; j < k; j++) {
            double x = raw[i * s0 + j * s1];
            if (!isfinite(x)) goto out;
            if (fabs(x) > magnitude) magnitude = fabs(x);
            double d = fabs(x - raw[j * s0 + i * s1]);
            if (d > asym) asym = d;
        }
    }
    if (isfinite(o->tol) && !(asym <= o->tol * magnitude)) goto out;
    if (!(trace > 0.0)) goto out;

    if (o->closed_form) {
        /* solve_host's closed-form branch: (H + H')/2 / trace, numerically PSD in float64. */
        for (int i = 0; i < k; i++)
            for (int j = 0; j < k; j++)
                s.h[i * k + j] = 0.5 * (raw[i * s0 + j * s1] + raw[j * s0 + i * s1]) / trace;
        if (!psd_within(s.h, k, o->roundoff, s.l)) goto out;
        for (int i = 0; i < k; i++) s.lengths[i] = sqrt(fmax(s.h[i * k + i], 0.0));
    } else {
        /* _active_set: positive definite, 1-norm condition number <= max_condition (exact). */
        double scale = 1.0 / trace;
        for (int i = 0; i < k; i++)
            for (int j = 0; j < k; j++)
                s.h[i * k + j] = 0.5 * (raw[i * s0 + j * s1] + raw[j * s0 + i * s1]) * scale;
        for (int i = 0; i < k; i++) s.support[i] = i;
        if (cholesky(s.h, k, s.support, k, s.l) < 0) goto out;
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
        if (!(norm * inv_norm <= o->max_condition)) goto out;
        for (int i = 0; i < k; i++) s.lengths[i] = sqrt(s.h[i * k + i]);
    }

    /* The anchor g_0 = sum w_i g_i and the dual's linear term; MGDA has neither. */
    double sigma = 1.0, anchor = 0.0;
    if (o->method == HOST_MGDA) {
        for (int i = 0; i < k; i++) s.beta[i] = 0.0;
    } else {
        matvec(s.h, k, w, s.hv);
        double g0_sq = dot(w, s.hv, k);
        double yard = dot(w, s.lengths, k);
        if (!(g0_sq > o->floor * yard * yard)) goto out;
        anchor = sqrt(g0_sq);
        for (int i = 0; i < k; i++) s.beta[i] = s.hv[i] / anchor;
        sigma = o->c;
    }

    if (!o->closed_form && o->method == HOST_MGDA) {
        /* MGDA's dual min_{p in simplex} p'Hp is a single NNQP: p = q / sum(q) for
         * q = argmin_{q >= 0} q'Hq/2 - 1'q (_host._active_set). */
        for (int i = 0; i < k; i++) s.kept[i] = 1.0; /* b */
        walked = nnqp(s.h, k, s.kept, o->budget, &s, dual);
        if (walked == 0) goto out;
        double total = 0.0;
        for (int i = 0; i < k; i++) total += dual[i];
        if (!(total > 0.0) || !isfinite(total)) goto out;
        for (int i = 0; i < k; i++) dual[i] /= total;
    } else if (!o->closed_form) {
        walked = homotopy(s.h, k, s.beta, sigma, o->budget, &s, dual);
        if (walked == 0) goto out;
    } else if (k == 1) {
        dual[0] = 1.0;
    } else {
        /* The best of the edge minimisers and (K = 3) the interior point, in _closed_form's
         * order; a later candidate replaces the best only if strictly smaller. */
        double best = edge(s.h, k, s.beta, sigma, 0, 1, dual), value;
        if (k == 3) {
            double point[3];
            static const int ends[2][2] = {{0, 2}, {1, 2}};
            for (int e = 0; e < 2; e++) {
                value = edge(s.h, k, s.beta, sigma, ends[e][0], ends[e][1], point);
                if (value < best) {
                    best = value;
                    memcpy(dual, point, sizeof(point));
                }
            }
            if (interior(s.h, s.beta, sigma, o->min_det, &value, point) && value < best)
                memcpy(dual, point, sizeof(point));
        }
    }
    ok = finish(s.h, k, s.lengths, w, s.beta, sigma, anchor, dual, o, &s, coeffs, clipped, gap);
    *pieces = walked;
out:
    free(mem);
    free(imem);
    return ok;
}

int host_parse_opts(PyObject *tuple, host_opts_t *o) {
    if (!PyTuple_Check(tuple)) {
        PyErr_Format(PyExc_TypeError, "options must be a tuple, got %s", Py_TYPE(tuple)->tp_name);
        return -1;
    }
    if (!PyArg_ParseTuple(tuple, "ipddddidddddd;options: (method, closed_form, c, floor, zero, "
                                 "tol, budget, max_condition, snap, snap_cost, tol_optimal, "
                                 "min_det, roundoff)",
                          &o->method, &o->closed_form, &o->c, &o->floor, &o->zero, &o->tol,
                          &o->budget, &o->max_condition, &o->snap, &o->snap_cost,
                          &o->tol_optimal, &o->min_det, &o->roundoff))
        return -1;
    if (o->method < HOST_CAGRAD || o->method > HOST_TRIVIAL) {
        PyErr_Format(PyExc_ValueError,
                     "method = %d is not 0 (cagrad), 1 (cagrad_clip), 2 (mgda) or 3 (trivial)",
                     o->method);
        return -1;
    }
    if (o->budget < 1) {
        PyErr_Format(PyExc_ValueError, "budget = %d is not positive", o->budget);
        return -1;
    }
    return 0;
}

PyObject *host_answer(int k, const double *coeffs, const double *dual, const double *clipped,
                      double gap, int pieces) {
    const double *rows[3] = {coeffs, dual, clipped};
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
            return NULL;
        }
    }
    return Py_BuildValue("(NNNdi)", lists[0], lists[1], lists[2], gap, pieces);
}

int host_weights(PyObject *obj, int k, double *w) {
    PyObject *wf = PySequence_Fast(obj, "weights must be a sequence of floats");
    if (wf == NULL) return -1;
    if (PySequence_Fast_GET_SIZE(wf) != k) {
        PyErr_Format(PyExc_ValueError, "got %zd weights for k = %d", PySequence_Fast_GET_SIZE(wf),
                     k);
        Py_DECREF(wf);
        return -1;
    }
    for (int i = 0; i < k; i++) {
        w[i] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(wf, i));
        if (w[i] == -1.0 && PyErr_Occurred()) {
            Py_DECREF(wf);
            return -1;
        }
    }
    Py_DECREF(wf);
    return 0;
}

PyObject *py_solve_host(PyObject *self, PyObject *args) {
    unsigned long long ptr;
    int k;
    Py_ssize_t s0, s1;
    PyObject *w_obj, *opts_obj;
    host_opts_t o;
    if (!PyArg_ParseTuple(args, "KinnOO", &ptr, &k, &s0, &s1, &w_obj, &opts_obj)) return NULL;
    if (k < 1 || k > HOST_MAX_K) {
        PyErr_Format(PyExc_ValueError, "k = %d is outside 1..%d", k, HOST_MAX_K);
        return NULL;
    }
    if (ptr == 0) {
        PyErr_SetString(PyExc_ValueError, "the Gram's data pointer is 0");
        return NULL;
    }
    if (host_parse_opts(opts_obj, &o) < 0) return NULL;
    double w[HOST_MAX_K], coeffs[HOST_MAX_K], dual[HOST_MAX_K], clipped[HOST_MAX_K], gap;
    int pieces;
    if (host_weights(w_obj, k, w) < 0) return NULL;
    int ok = host_solve((const double *)(uintptr_t)ptr, k, s0, s1, w, &o, coeffs, dual, clipped,
                        &gap, &pieces);
    if (ok < 0) return PyErr_NoMemory();
    if (ok == 0) Py_RETURN_NONE;
    return host_answer(k, coeffs, dual, clipped, gap, pieces);
}
