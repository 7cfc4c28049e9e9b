/*
 * conflict_opt._native: the CPU kernels of the "torch" primitives backend.
 *
 * Two multi-tensor operations over K per-objective gradients spread across T parameter tensors
 * (float32, float64 or bfloat16), reading every gradient value from memory once:
 *
 *   gram     H_ij = sum_t <g_i^t, g_j^t>, upper triangle i <= j, returned as K*K doubles;
 *   combine  out_t = sum_k a_k g_k^t   (or out_t += ..., "accumulate"), written in place.
 *
 * Why native code: a K x K Gram costs about K/2 multiply-adds per value read. Torch's own ops
 * either need the K x P concatenation (J @ J.T) or one call per pair and block, which re-reads
 * every block from cache K+1 times and pays a few microseconds of dispatch per call. Here one
 * loop walks the virtual concatenation of all tensors in chunks small enough for L2, computes
 * every pair of the chunk while it is in cache (register tiles of 4 x 4 rows), and splits the
 * range over threads. The combination sums up to 8 rows in registers (more through an L1
 * buffer), prefetches each row's next chunk while it works on the current one and writes big
 * outputs with non-temporal stores (no read of the output's old contents into cache). The Gram
 * does not prefetch in software: on the machine it was tuned on, the hardware prefetcher alone
 * was faster in 13 of 14 side-by-side cases, typically by 15-30%.
 *
 * Precision: float32 and bfloat16 values (widened exactly) are multiplied and summed in float32
 * within a chunk of at most GRAM_CHUNK values (at least 16 lanes per pair, so each lane sums at
 * most GRAM_CHUNK / 16 = 512 products), then each chunk sum is added in float64. float64 stays
 * float64 throughout. NaN and Inf propagate: the module is compiled with reassociation allowed
 * (so that reductions vectorise) but without -ffinite-math-only. A null row pointer stands for
 * a gradient of zeros (NaN * 0 stays NaN).
 *
 * The GIL is released while the kernels run. Threads are an OpenMP team from torch's own pool
 * where the module is built with OpenMP, POSIX threads created per call otherwise (run_split);
 * the caller decides how many (the Python side passes at most torch.get_num_threads()). They
 * share the work as blocks taken from a counter, and the Gram does not depend on the number of
 * threads.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "host_solve.h"

/* Values per row per chunk. The Gram's K rows of 32 KiB (float32) stay in L2 while all their
 * products are formed; the combination's chunk buffer of 8 KiB stays in L1. (Measured on a
 * Zen 4 VM, 10M-50M values, K = 2...8: Gram chunks of 8192 read 0-53% faster than chunks of
 * 2048, median 7%; the combination gains nothing from longer chunks.) */
#define GRAM_CHUNK 8192
#define COMBINE_CHUNK 2048
#define MAX_CHUNK GRAM_CHUNK
#define MAX_THREADS 256
#define MAX_K 256

/* Function multi-versioning: an AVX-512 and an AVX2+FMA clone next to the baseline, picked at
 * load time by the dynamic linker (GCC and Clang on x86-64 ELF). Elsewhere: one generic build. */
#if defined(__x86_64__) && defined(__ELF__) && defined(__GNUC__) && !defined(__INTEL_COMPILER)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

static const double zeros64[MAX_CHUNK];
static const float zeros32[MAX_CHUNK];
static const uint16_t zeros16[MAX_CHUNK];

/* ---------------------------------------------------------------------------------------- */
/* The work: T pieces, piece t has K row pointers and len[t] values.                          */

typedef struct {
    int k;
    Py_ssize_t npieces;
    const void **rows; /* npieces * k pointers, NULL for zeros */
    void **outs;       /* npieces output pointers (combine only) */
    const int64_t *len;
    int64_t chunk;        /* GRAM_CHUNK or COMBINE_CHUNK */
    const double *coeffs; /* k coefficients (combine only) */
    int kind;     /* of the rows: KIND_F32, KIND_F64 or KIND_BF16 */
    int out_kind; /* of the outputs (combine only): F64 with F64 rows, else F32 or BF16 */
    int accumulate;
    int stream; /* combine: write the output with non-temporal stores */
} work_t;

typedef struct {
    const work_t *w;
    int64_t begin, end; /* range of the virtual concatenation */
    double *partial;    /* k * k (gram only) */
} job_t;

/* ---------------------------------------------------------------------------------------- */
/* Gram.                                                                                      */

/* Vectors of 64 bytes through GCC's vector extensions: one AVX-512 register, two AVX2 ones,
 * or four SSE ones, whichever the clone compiles for. Loads go through memcpy (unaligned). */
typedef float vf32 __attribute__((vector_size(64)));
typedef double vf64 __attribute__((vector_size(64)));
#define L32 ((int)(sizeof(vf32) / sizeof(float)))
#define L64 ((int)(sizeof(vf64) / sizeof(double)))

static inline __attribute__((always_inline)) vf32 load32(const float *p) {
    vf32 v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline __attribute__((always_inline)) vf64 load64(const double *p) {
    vf64 v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* bfloat16: the upper half of a float32, so widening is a 16-bit shift (exact). */
typedef uint16_t vb16 __attribute__((vector_size(32)));
typedef uint32_t vu32 __attribute__((vector_size(64)));
static inline __attribute__((always_inline)) vf32 loadbf16(const uint16_t *p) {
    vb16 h;
    memcpy(&h, p, sizeof h);
    vu32 w = __builtin_convertvector(h, vu32) << 16;
    vf32 v;
    memcpy(&v, &w, sizeof v);
    return v;
}
static inline __attribute__((always_inline)) float bf16f(uint16_t h) {
    uint32_t w = (uint32_t)h << 16;
    float f;
    memcpy(&f, &w, sizeof f);
    return f;
}
/* float32 to bfloat16, rounded to nearest even; NaN stays a (quiet) NaN of the same sign. */
static inline __attribute__((always_inline)) uint16_t f2bf16(float f) {
    uint32_t w;
    memcpy(&w, &f, sizeof w);
    uint32_t nan = (w & 0x7fffffffu) > 0x7f800000u;
    uint32_t rounded = (w + 0x7fffu + ((w >> 16) & 1u)) >> 16;
    return (uint16_t)(nan ? (w >> 16) | 0x40u : rounded);
}
#define SAME(x) (x)

/* Element kinds, as the Python side passes them. */
enum { KIND_F32 = 0, KIND_F64 = 1, KIND_BF16 = 2 };
static const size_t kind_size[3] = {sizeof(float), sizeof(double), sizeof(uint16_t)};

/* A tile of the Gram: rows a[0..MA-1] against rows b[0..NB-1] over m values,
 * acc[i * NB + j] += sum_p a[i][p] * b[j][p]. MA * NB vector accumulators, unrolled U times so
 * that there are at least four independent chains (a multiply-add has a latency of about four
 * cycles); MA + NB loads per MA * NB multiply-adds; a scalar tail. */
#define DEFINE_TILE(NAME, E, T, V, LN, LOAD, CVT, MA, NB)                                       \
    static inline __attribute__((always_inline)) void tile_##NAME##_##MA##x##NB(               \
        const E *const *a, const E *const *b, int64_t m, double *acc) {                        \
        enum { U = MA * NB >= 4 ? 1 : MA * NB == 1 ? 4 : 2 };                                   \
        V s[U][MA][NB];                                                                         \
        for (int u = 0; u < U; u++)                                                             \
            for (int i = 0; i < MA; i++)                                                        \
                for (int j = 0; j < NB; j++) s[u][i][j] = (V){0};                               \
        int64_t p = 0;                                                                          \
        for (; p + U * LN <= m; p += U * LN) {                                                  \
            for (int u = 0; u < U; u++) {                                                       \
                V va[MA], vb[NB];                                                               \
                for (int i = 0; i < MA; i++) va[i] = LOAD(a[i] + p + u * LN);                   \
                for (int j = 0; j < NB; j++) vb[j] = LOAD(b[j] + p + u * LN);                   \
                for (int i = 0; i < MA; i++)                                                    \
                    for (int j = 0; j < NB; j++) s[u][i][j] += va[i] * vb[j];                   \
            }                                                                                   \
        }                                                                                       \
        for (; p + LN <= m; p += LN)                                                            \
            for (int i = 0; i < MA; i++)                                                        \
                for (int j = 0; j < NB; j++) s[0][i][j] += LOAD(a[i] + p) * LOAD(b[j] + p);     \
        for (int i = 0; i < MA; i++)                                                            \
            for (int j = 0; j < NB; j++) {                                                      \
                V v = s[0][i][j];                                                               \
                for (int u = 1; u < U; u++) v += s[u][i][j];                                    \
                T t = 0;                                                                        \
                for (int l = 0; l < LN; l++) t += v[l];                                         \
                for (int64_t r = p; r < m; r++) t += CVT(a[i][r]) * CVT(b[j][r]);               \
                acc[i * NB + j] += (double)t;                                                   \
            }                                                                                   \
    }

/* A diagonal tile: the upper triangle of rows a[0..N-1] against themselves over m values,
 * acc[i * N + j] += sum_p a[i][p] * a[j][p] for i <= j (N(N+1)/2 multiply-adds per N loads). */
#define DEFINE_SYM(NAME, E, T, V, LN, LOAD, CVT, N)                                             \
    static inline __attribute__((always_inline)) void sym_##NAME##_##N(                        \
        const E *const *a, int64_t m, double *acc) {                                           \
        enum { C = N * (N + 1) / 2, U = C >= 4 ? 1 : C == 1 ? 4 : 2 };                          \
        V s[U][C];                                                                              \
        for (int u = 0; u < U; u++)                                                             \
            for (int c = 0; c < C; c++) s[u][c] = (V){0};                                       \
        int64_t p = 0;                                                                          \
        for (; p + U * LN <= m; p += U * LN) {                                                  \
            for (int u = 0; u < U; u++) {                                                       \
                V va[N];                                                                        \
                for (int i = 0; i < N; i++) va[i] = LOAD(a[i] + p + u * LN);                    \
                int c = 0;                                                                      \
                for (int i = 0; i < N; i++)                                                     \
                    for (int j = i; j < N; j++, c++) s[u][c] += va[i] * va[j];                  \
            }                                                                                   \
        }                                                                                       \
        for (; p + LN <= m; p += LN) {                                                          \
            int c = 0;                                                                          \
            for (int i = 0; i < N; i++)                                                         \
                for (int j = i; j < N; j++, c++) s[0][c] += LOAD(a[i] + p) * LOAD(a[j] + p);    \
        }                                                                                       \
        int c = 0;                                                                              \
        for (int i = 0; i < N; i++)                                                             \
            for (int j = i; j < N; j++, c++) {                                                  \
                V v = s[0][c];                                                                  \
                for (int u = 1; u < U; u++) v += s[u][c];                                       \
                T t = 0;                                                                        \
                for (int l = 0; l < LN; l++) t += v[l];                                         \
                for (int64_t r = p; r < m; r++) t += CVT(a[i][r]) * CVT(a[j][r]);               \
                acc[i * N + j] += (double)t;                                                    \
            }                                                                                   \
    }

#define DEFINE_SYMS(...)                                                                        \
    DEFINE_SYM(__VA_ARGS__, 1) DEFINE_SYM(__VA_ARGS__, 2) DEFINE_SYM(__VA_ARGS__, 3)            \
    DEFINE_SYM(__VA_ARGS__, 4)

DEFINE_SYMS(float, float, float, vf32, L32, load32, SAME)
DEFINE_SYMS(double, double, double, vf64, L64, load64, SAME)
DEFINE_SYMS(bf16, uint16_t, float, vf32, L32, loadbf16, bf16f)

#define DEFINE_TILES_A(...)                                                                     \
    DEFINE_TILE(__VA_ARGS__, 1) DEFINE_TILE(__VA_ARGS__, 2) DEFINE_TILE(__VA_ARGS__, 3)         \
    DEFINE_TILE(__VA_ARGS__, 4)
#define DEFINE_TILES(...)                                                                       \
    DEFINE_TILES_A(__VA_ARGS__, 1) DEFINE_TILES_A(__VA_ARGS__, 2)                               \
    DEFINE_TILES_A(__VA_ARGS__, 3) DEFINE_TILES_A(__VA_ARGS__, 4)

DEFINE_TILES(float, float, float, vf32, L32, load32, SAME)
DEFINE_TILES(double, double, double, vf64, L64, load64, SAME)
DEFINE_TILES(bf16, uint16_t, float, vf32, L32, loadbf16, bf16f)

#define TILE 4 /* rows per tile side */
#define TILE_CASE(T, MA, NB)                                                                    \
    case (MA) * 8 + (NB):                                                                       \
        tile_##T##_##MA##x##NB(a, b, m, part);                                                  \
        break;
#define TILE_CASES_A(T, MA)                                                                     \
    TILE_CASE(T, MA, 1) TILE_CASE(T, MA, 2) TILE_CASE(T, MA, 3) TILE_CASE(T, MA, 4)

#define SYM_CASE(T, N)                                                                          \
    case N:                                                                                     \
        sym_##T##_##N(a, m, part);                                                              \
        break;

/* All pairs i <= j of the k rows x[0..k-1] over m values, added into acc[i*k + j]: the upper
 * triangle of TILE x TILE blocks, each one pass over the cache-resident chunk. */
#define DEFINE_CHUNK(T, E)                                                                      \
    static inline __attribute__((always_inline)) void chunk_##T(                               \
        int k, const E *const *x, int64_t m, double *acc) {                                    \
        double part[TILE * TILE];                                                               \
        for (int i0 = 0; i0 < k; i0 += TILE) {                                                  \
            int ma = k - i0 < TILE ? k - i0 : TILE;                                             \
            const E *const *a = x + i0;                                                         \
            for (int q = 0; q < ma * ma; q++) part[q] = 0.0;                                    \
            switch (ma) { SYM_CASE(T, 1) SYM_CASE(T, 2) SYM_CASE(T, 3) SYM_CASE(T, 4) }         \
            for (int i = 0; i < ma; i++)                                                        \
                for (int j = i; j < ma; j++) acc[(i0 + i) * k + i0 + j] += part[i * ma + j];    \
            for (int j0 = i0 + TILE; j0 < k; j0 += TILE) {                                      \
                int nb = k - j0 < TILE ? k - j0 : TILE;                                         \
                const E *const *b = x + j0;                                                     \
                for (int q = 0; q < ma * nb; q++) part[q] = 0.0;                                \
                switch (ma * 8 + nb) {                                                          \
                    TILE_CASES_A(T, 1)                                                          \
                    TILE_CASES_A(T, 2)                                                          \
                    TILE_CASES_A(T, 3)                                                          \
                    TILE_CASES_A(T, 4)                                                          \
                }                                                                               \
                for (int i = 0; i < ma; i++)                                                    \
                    for (int j = 0; j < nb; j++) acc[(i0 + i) * k + j0 + j] += part[i * nb + j]; \
            }                                                                                   \
        }                                                                                       \
    }

DEFINE_CHUNK(float, float)
DEFINE_CHUNK(double, double)
DEFINE_CHUNK(bf16, uint16_t)

/* A chunk of the work: piece t (which starts at `offset` in the virtual concatenation),
 * values [s, s + m). */
typedef struct {
    Py_ssize_t t;
    int64_t offset, s, m;
} pos_t;

/* Move p to the first non-empty chunk at or after it within the job's range (t = npieces when
 * there is none). */
static inline void seek(const job_t *job, pos_t *p) {
    const work_t *w = job->w;
    while (p->t < w->npieces && p->offset < job->end) {
        int64_t lo = job->begin > p->offset ? job->begin - p->offset : 0;
        int64_t hi = job->end - p->offset < w->len[p->t] ? job->end - p->offset : w->len[p->t];
        if (p->s < lo) p->s = lo;
        if (p->s < hi) {
            p->m = hi - p->s < w->chunk ? hi - p->s : w->chunk;
            return;
        }
        p->offset += w->len[p->t];
        p->t++;
        p->s = 0;
    }
    p->t = w->npieces;
    p->m = 0;
}

/* The k row pointers of chunk p (zeros for absent rows). */
static inline void row_ptrs(const work_t *w, const pos_t *p, const void **x) {
    const size_t esize = kind_size[w->kind];
    const void *zeros = w->kind == KIND_F64    ? (const void *)zeros64
                        : w->kind == KIND_BF16 ? (const void *)zeros16
                                               : (const void *)zeros32;
    for (int r = 0; r < w->k; r++) {
        const char *base = w->rows[p->t * w->k + r];
        x[r] = base ? base + (size_t)p->s * esize : zeros;
    }
}

/* Walk the job's chunks in order: for each, its rows x, the next chunk's rows nx (the current
 * ones after the last chunk), and the chunk itself. BODY must not `continue` or `break`. */
#define FOR_EACH_CHUNK(job, cur, x, nx, BODY)                                                   \
    do {                                                                                        \
        pos_t cur = {0, 0, 0, 0}, next_;                                                        \
        seek(job, &cur);                                                                        \
        if (cur.t < (job)->w->npieces) row_ptrs((job)->w, &cur, x);                             \
        while (cur.t < (job)->w->npieces) {                                                     \
            next_ = cur;                                                                        \
            next_.s += cur.m;                                                                   \
            seek(job, &next_);                                                                  \
            if (next_.t < (job)->w->npieces)                                                    \
                row_ptrs((job)->w, &next_, nx);                                                 \
            else                                                                                \
                memcpy(nx, x, sizeof(void *) * (size_t)(job)->w->k);                            \
            BODY;                                                                               \
            memcpy(x, nx, sizeof(void *) * (size_t)(job)->w->k);                                \
            cur = next_;                                                                        \
        }                                                                                       \
    } while (0)

CLONES static void gram_range(const job_t *job) {
    const work_t *w = job->w;
    const int k = w->k;
    const void *x[MAX_K];
    pos_t cur = {0, 0, 0, 0};
    for (seek(job, &cur); cur.t < w->npieces; cur.s += cur.m, seek(job, &cur)) {
        row_ptrs(w, &cur, x);
        if (w->kind == KIND_F64)
            chunk_double(k, (const double *const *)x, cur.m, job->partial);
        else if (w->kind == KIND_BF16)
            chunk_bf16(k, (const uint16_t *const *)x, cur.m, job->partial);
        else
            chunk_float(k, (const float *const *)x, cur.m, job->partial);
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Combination.                                                                               */

/* Copy n floats (16-byte aligned destination) with non-temporal stores: a big output that will
 * not be read again soon is written without first being read into cache (one memory pass less).
 * SSE only, so the baseline clone has it too. */
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define HAVE_STREAM 1
static inline __attribute__((always_inline)) void stream_copy(float *dst, const float *src,
                                                              int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) _mm_stream_ps(dst + i, _mm_loadu_ps(src + i));
    for (; i < n; i++) dst[i] = src[i];
}
#else
#define HAVE_STREAM 0
static inline void stream_copy(float *dst, const float *src, int64_t n) {
    memcpy(dst, src, (size_t)n * sizeof(float));
}
#endif

/* buf = sum_r c[r] * x[r] over m <= COMBINE_CHUNK values, in the compute type T: one pass per
 * row over a chunk buffer in L1. Each row's pass prefetches the row's next chunk (nx[r]) into L2.
 * The output is written afterwards (store_*), so it may be one of the x[r] (an exact alias). */
#define DEFINE_COMBINE(NAME, E, T, V, LN, LOAD, CVT)                                            \
    static inline __attribute__((always_inline)) void combine_##NAME(                          \
        int k, const E *const *x, const E *const *nx, const T *c, int64_t m, V *buf) {         \
        T *tail = (T *)buf;                                                                     \
        int64_t nv = m / LN, p0 = nv * LN;                                                      \
        for (int r = 0; r < k; r++) {                                                           \
            const V cr = (V){0} + c[r];                                                         \
            const E *xr = x[r], *nxr = nx[r];                                                   \
            if (r == 0) {                                                                       \
                for (int64_t v = 0; v < nv; v++) {                                              \
                    __builtin_prefetch(nxr + v * LN, 0, 2);                                     \
                    buf[v] = cr * LOAD(xr + v * LN);                                            \
                }                                                                               \
                for (int64_t p = p0; p < m; p++) tail[p] = c[r] * CVT(xr[p]);                   \
            } else {                                                                            \
                for (int64_t v = 0; v < nv; v++) {                                              \
                    __builtin_prefetch(nxr + v * LN, 0, 2);                                     \
                    buf[v] += cr * LOAD(xr + v * LN);                                           \
                }                                                                               \
                for (int64_t p = p0; p < m; p++) tail[p] += c[r] * CVT(xr[p]);                  \
            }                                                                                   \
        }                                                                                       \
    }

DEFINE_COMBINE(float, float, float, vf32, L32, load32, SAME)
DEFINE_COMBINE(double, double, double, vf64, L64, load64, SAME)
DEFINE_COMBINE(bf16, uint16_t, float, vf32, L32, loadbf16, bf16f)

/* out = sum_r c[r] * x[r] (or out += ...) over m values for N rows, N fixed at compile time,
 * each vector's sum held in a register: N loads and one store per vector, where combine_*
 * above passes over an L1 buffer once per row and then copies it out. Measured on the optimizer
 * benchmark's MLP (K = 4, 0.6M values per objective, the output one of the rows, right after
 * the backward passes): 110-390 us after the Gram, where the buffered form took 170-560 us,
 * and 225-245 us against 320-385 us alone; in a loop over warm separate buffers both take about
 * 110 us. With stream (out 16-byte aligned, not accumulating) each vector is written with
 * non-temporal stores, as store_* writes a big output. On 10M values per row, in the VM's
 * high-bandwidth phases, this reached 0.74, 0.86 and 0.92 of the read limit at K = 2, 4, 8,
 * where the buffer with streaming reached 0.66 to 0.69 (its passes over the buffer, not
 * memory, were then the bottleneck); in the low phases 1.06 to 1.20 against 0.95 to 1.08.
 * The source adds in the same order as combine_* (row 0 first, then each other row) and adds
 * to out as store_* does; since reassociation is allowed, the compiled forms may still differ
 * in the last bit. Every row of a vector is read before that vector of out is written, so out
 * may be one of the x[r] (an exact alias). */
#define DEFINE_DIRECT(NAME, E, T, V, LN, LOAD, OLOAD, CVT, N)                                   \
    static inline __attribute__((always_inline)) void direct_##NAME##_##N(                     \
        const E *const *x, const E *const *nx, const T *c, int64_t m, T *out,                  \
        int accumulate, int stream) {                                                           \
        V cv[N] = {(V){0}};                                                                     \
        for (int r = 0; r < N; r++) cv[r] += c[r];                                              \
        int64_t nv = m / LN, p0 = nv * LN;                                                      \
        for (int64_t v = 0; v < nv; v++) {                                                      \
            __builtin_prefetch(nx[0] + v * LN, 0, 2);                                           \
            V acc = cv[0] * LOAD(x[0] + v * LN);                                                \
            for (int r = 1; r < N; r++) {                                                       \
                __builtin_prefetch(nx[r] + v * LN, 0, 2);                                       \
                acc += cv[r] * LOAD(x[r] + v * LN);                                             \
            }                                                                                   \
            if (accumulate) acc = OLOAD(out + v * LN) + acc;                                    \
            if (stream)                                                                         \
                stream_copy((float *)(out + v * LN), (const float *)&acc, sizeof acc / 4);      \
            else                                                                                \
                memcpy(out + v * LN, &acc, sizeof acc);                                         \
        }                                                                                       \
        for (int64_t p = p0; p < m; p++) {                                                      \
            T t = c[0] * CVT(x[0][p]);                                                          \
            for (int r = 1; r < N; r++) t += c[r] * CVT(x[r][p]);                               \
            out[p] = accumulate ? out[p] + t : t;                                               \
        }                                                                                       \
    }

/* Up to this many rows the combination is direct; beyond, it goes through the buffer. */
#define DIRECT_MAX_K 8
#define DEFINE_DIRECTS(...)                                                                     \
    DEFINE_DIRECT(__VA_ARGS__, 1) DEFINE_DIRECT(__VA_ARGS__, 2) DEFINE_DIRECT(__VA_ARGS__, 3)   \
    DEFINE_DIRECT(__VA_ARGS__, 4) DEFINE_DIRECT(__VA_ARGS__, 5) DEFINE_DIRECT(__VA_ARGS__, 6)   \
    DEFINE_DIRECT(__VA_ARGS__, 7) DEFINE_DIRECT(__VA_ARGS__, 8)

DEFINE_DIRECTS(float, float, float, vf32, L32, load32, load32, SAME)
DEFINE_DIRECTS(double, double, double, vf64, L64, load64, load64, SAME)
DEFINE_DIRECTS(bf16, uint16_t, float, vf32, L32, loadbf16, load32, bf16f)

#define DIRECT_CASE(NAME, E, T, N)                                                              \
    case N:                                                                                     \
        direct_##NAME##_##N((const E *const *)x, (const E *const *)nx, c, m, (T *)out,         \
                            accumulate, stream);                                                \
        break;
/* direct_NAME(k, ...): direct_NAME_k for k in 1..DIRECT_MAX_K. */
#define DEFINE_DIRECT_SWITCH(NAME, E, T)                                                        \
    static inline __attribute__((always_inline)) void direct_##NAME(                           \
        int k, const void **x, const void **nx, const T *c, int64_t m, void *out,              \
        int accumulate, int stream) {                                                           \
        switch (k) {                                                                            \
            DIRECT_CASE(NAME, E, T, 1)                                                          \
            DIRECT_CASE(NAME, E, T, 2)                                                          \
            DIRECT_CASE(NAME, E, T, 3)                                                          \
            DIRECT_CASE(NAME, E, T, 4)                                                          \
            DIRECT_CASE(NAME, E, T, 5)                                                          \
            DIRECT_CASE(NAME, E, T, 6)                                                          \
            DIRECT_CASE(NAME, E, T, 7)                                                          \
            DIRECT_CASE(NAME, E, T, 8)                                                          \
        }                                                                                       \
    }

DEFINE_DIRECT_SWITCH(float, float, float)
DEFINE_DIRECT_SWITCH(double, double, double)
DEFINE_DIRECT_SWITCH(bf16, uint16_t, float)

/* Write (or add) m values of buf into out, of out's own type: float32 and float64 with
 * non-temporal stores when asked (16-byte aligned output, not accumulating), bfloat16 rounded
 * to nearest even (an accumulation adds in float32 and rounds once). */
#define DEFINE_STORE(T, V, LN, LOAD)                                                            \
    static inline __attribute__((always_inline)) void store_##T(                               \
        T *out, const V *buf, int64_t m, int accumulate, int stream) {                          \
        const T *tail = (const T *)buf;                                                         \
        int64_t nv = m / LN, p0 = nv * LN;                                                      \
        if (accumulate) {                                                                       \
            for (int64_t v = 0; v < nv; v++) {                                                  \
                V o = LOAD(out + v * LN) + buf[v];                                              \
                memcpy(out + v * LN, &o, sizeof o);                                             \
            }                                                                                   \
            for (int64_t p = p0; p < m; p++) out[p] += tail[p];                                 \
        } else if (stream && ((uintptr_t)out & 15) == 0) {                                      \
            stream_copy((float *)out, (const float *)buf, (int64_t)(m * sizeof(T) / 4));        \
        } else {                                                                                \
            memcpy(out, buf, (size_t)m * sizeof(T));                                            \
        }                                                                                       \
    }

DEFINE_STORE(float, vf32, L32, load32)
DEFINE_STORE(double, vf64, L64, load64)

static inline __attribute__((always_inline)) void store_bf16(uint16_t *out, const float *buf,
                                                             int64_t m, int accumulate) {
    if (accumulate)
        for (int64_t p = 0; p < m; p++) out[p] = f2bf16(bf16f(out[p]) + buf[p]);
    else
        for (int64_t p = 0; p < m; p++) out[p] = f2bf16(buf[p]);
}

CLONES static void combine_range(const job_t *job) {
    const work_t *w = job->w;
    const int k = w->k;
    const void *x[MAX_K], *nx[MAX_K];
    float c32[MAX_K];
    double c64[MAX_K];
    for (int r = 0; r < k; r++) c64[r] = w->coeffs[r], c32[r] = (float)w->coeffs[r];
    const size_t osize = kind_size[w->out_kind];
    const int stream = w->stream;
    /* Direct (no buffer) for few rows and an output of the compute type, streaming or not. */
    const int direct = k <= DIRECT_MAX_K && w->out_kind != KIND_BF16;
    const int accumulate = w->accumulate;
    vf64 buf[COMBINE_CHUNK / L64 + 1]; /* values of the compute type (float32 or float64) */
    FOR_EACH_CHUNK(job, cur, x, nx, {
        if (w->outs[cur.t] != NULL) { /* NULL: a skipped piece (see py_combine) */
            char *out = (char *)w->outs[cur.t] + (size_t)cur.s * osize;
            if (direct) {
                const int st = stream && ((uintptr_t)out & 15) == 0;
                if (w->kind == KIND_F64)
                    direct_double(k, x, nx, c64, cur.m, out, accumulate, st);
                else if (w->kind == KIND_BF16)
                    direct_bf16(k, x, nx, c32, cur.m, out, accumulate, st);
                else
                    direct_float(k, x, nx, c32, cur.m, out, accumulate, st);
            } else if (w->kind == KIND_F64) {
                combine_double(k, (const double *const *)x, (const double *const *)nx, c64,
                               cur.m, buf);
                store_double((double *)out, buf, cur.m, w->accumulate, stream);
            } else {
                vf32 *b32 = (vf32 *)buf;
                if (w->kind == KIND_BF16)
                    combine_bf16(k, (const uint16_t *const *)x, (const uint16_t *const *)nx,
                                 c32, cur.m, b32);
                else
                    combine_float(k, (const float *const *)x, (const float *const *)nx, c32,
                                  cur.m, b32);
                if (w->out_kind == KIND_BF16)
                    store_bf16((uint16_t *)out, (const float *)b32, cur.m, w->accumulate);
                else
                    store_float((float *)out, b32, cur.m, w->accumulate, stream);
            }
        }
    });
#if HAVE_STREAM
    if (stream) _mm_sfence(); /* non-temporal stores are weakly ordered: fence before returning */
#endif
}

/* ---------------------------------------------------------------------------------------- */
/* Threads and the Python interface.                                                          */

typedef void (*range_fn)(const job_t *);

/* The work is cut into NBLOCKS-at-most blocks of whole chunks, a number that depends on the
 * size of the work only; threads take the next block from a shared counter until none is
 * left. So a thread that the OS delays (a shared machine) does not hold the others back, and
 * since each block sums into its own partial, added in block order, the Gram is the same bit
 * for bit whatever the number of threads. */
#define NBLOCKS 64

typedef struct {
    range_fn fn;
    const work_t *w;
    int64_t total, per; /* values, and values per block */
    int nblocks;
    int next; /* the next block to take (atomic) */
    double *partials; /* nblocks * k * k (gram only) */
} pool_t;

static void *worker(void *arg) {
    pool_t *pool = arg;
    for (;;) {
        int b = __atomic_fetch_add(&pool->next, 1, __ATOMIC_RELAXED);
        if (b >= pool->nblocks) break;
        job_t job;
        job.w = pool->w;
        job.begin = pool->per * b;
        job.end = pool->per * (b + 1) < pool->total ? pool->per * (b + 1) : pool->total;
        job.partial = pool->partials ? pool->partials + (size_t)b * pool->w->k * pool->w->k : NULL;
        pool->fn(&job);
    }
    return NULL;
}

/* Blocks of the work [0, total): returns their number and sets *per (values per block). */
static int plan_blocks(int64_t total, int64_t chunk, int64_t *per) {
    int64_t chunks = (total + chunk - 1) / chunk;
    int nblocks = chunks < NBLOCKS ? (int)chunks : NBLOCKS;
    if (nblocks < 1) nblocks = 1;
    int64_t chunks_per = (chunks + nblocks - 1) / nblocks;
    *per = chunks_per * chunk;
    if (*per < 1) *per = 1;
    int64_t n = (total + *per - 1) / *per;
    return n > 0 ? (int)n : 1;
}

/* Run fn over [0, total) on nthreads threads, the calling thread one of them.
 *
 * Built with OpenMP (setup.py: GCC on Linux), the threads are an OpenMP team. The extension
 * then links libgomp.so.1 by soname, and since torch is imported first (conflict_opt imports
 * it before this module), the dynamic loader binds it to torch's own copy: the team comes
 * from the pool whose workers torch's ops leave spinning for a while after each parallel
 * region. Separate POSIX threads would compete with those spinning workers for the cores:
 * right after a torch op, both kernels ran 30-40% slower on the 2-core benchmark VM.
 *
 * Like torch's own parallel ops, an OpenMP team must not be started in a process forked after
 * the pool was used (libgomp's threads do not survive fork); torch's DataLoader workers set one
 * thread, and with one thread no team is started.
 *
 * Otherwise (no OpenMP) they are POSIX threads created per call; a thread that cannot be
 * created costs speed, not correctness: the others take its blocks. */
static void run_split(range_fn fn, const work_t *w, int64_t total, int nthreads, int nblocks,
                      int64_t per, double *partials) {
    pool_t pool = {fn, w, total, per, nblocks, 0, partials};
    if (nthreads > nblocks) nthreads = nblocks;
#ifdef _OPENMP
    if (nthreads > 1) {
#pragma omp parallel num_threads(nthreads)
        worker(&pool);
        return;
    }
#endif
    pthread_t tids[MAX_THREADS];
    int started[MAX_THREADS];
    for (int i = 1; i < nthreads; i++)
        started[i] = pthread_create(&tids[i], NULL, worker, &pool) == 0;
    worker(&pool);
    for (int i = 1; i < nthreads; i++)
        if (started[i]) pthread_join(tids[i], NULL);
}

/* Parse the rows and lens arguments into w (rows and len allocated with PyMem_Malloc: the caller
 * frees them, also on failure). */
static int parse_work(int k, PyObject *rows_obj, PyObject *lens_obj, work_t *w, int64_t *total) {
    PyObject *rows = PySequence_Fast(rows_obj, "rows must be a sequence of ints");
    if (!rows) return -1;
    PyObject *lens = PySequence_Fast(lens_obj, "lens must be a sequence of ints");
    if (!lens) {
        Py_DECREF(rows);
        return -1;
    }
    Py_ssize_t t = PySequence_Fast_GET_SIZE(lens);
    if (PySequence_Fast_GET_SIZE(rows) != t * k) {
        PyErr_Format(PyExc_ValueError, "rows has %zd pointers, expected len(lens) * k = %zd",
                     PySequence_Fast_GET_SIZE(rows), t * k);
        goto fail;
    }
    w->k = k;
    w->npieces = t;
    w->rows = PyMem_Malloc(sizeof(void *) * (size_t)(t * k + 1));
    w->len = PyMem_Malloc(sizeof(int64_t) * (size_t)(t + 1));
    if (!w->rows || !w->len) {
        PyErr_NoMemory();
        goto fail;
    }
    *total = 0;
    for (Py_ssize_t i = 0; i < t; i++) {
        long long n = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(lens, i));
        if (n < 0) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_ValueError, "lens[%zd] = %lld is negative", i, n);
            goto fail;
        }
        ((int64_t *)w->len)[i] = n;
        *total += n;
    }
    for (Py_ssize_t i = 0; i < t * k; i++) {
        void *p = PyLong_AsVoidPtr(PySequence_Fast_GET_ITEM(rows, i));
        if (p == NULL && PyErr_Occurred()) goto fail;
        w->rows[i] = p;
    }
    Py_DECREF(rows);
    Py_DECREF(lens);
    return 0;
fail:
    Py_DECREF(rows);
    Py_DECREF(lens);
    return -1;
}

static int check_kind(const char *name, int kind) {
    if (kind < KIND_F32 || kind > KIND_BF16) {
        PyErr_Format(PyExc_ValueError, "%s = %d is not 0 (float32), 1 (float64) or 2 (bfloat16)",
                     name, kind);
        return -1;
    }
    return 0;
}

static int check_common(int k, int nthreads) {
    if (k < 1 || k > MAX_K) {
        PyErr_Format(PyExc_ValueError, "k = %d is outside 1..%d", k, MAX_K);
        return -1;
    }
    if (nthreads < 1 || nthreads > MAX_THREADS) {
        PyErr_Format(PyExc_ValueError, "nthreads = %d is outside 1..%d", nthreads, MAX_THREADS);
        return -1;
    }
    return 0;
}

/* The Gram of the parsed work (w->chunk = GRAM_CHUNK) into out (k * k values, symmetric, the
 * upper triangle's block partials summed in block order); 0, or -1 when out of memory. Needs no
 * GIL. */
static int gram_run(const work_t *w, int64_t total, int nthreads, double *out) {
    int k = w->k;
    int64_t per;
    int nblocks = plan_blocks(total, w->chunk, &per);
    double *partials = PyMem_RawCalloc((size_t)nblocks * k * k, sizeof(double));
    if (!partials) return -1;
    run_split(gram_range, w, total, nthreads, nblocks, per, partials);
    for (int i = 0; i < k; i++)
        for (int j = 0; j < k; j++) {
            double s = 0.0;
            int a = i < j ? i : j, b = i < j ? j : i;
            for (int bl = 0; bl < nblocks; bl++) s += partials[(size_t)bl * k * k + a * k + b];
            out[i * k + j] = s;
        }
    PyMem_RawFree(partials);
    return 0;
}

static PyObject *float_list(const double *x, Py_ssize_t n) {
    PyObject *list = PyList_New(n);
    for (Py_ssize_t i = 0; list && i < n; i++) {
        PyObject *item = PyFloat_FromDouble(x[i]);
        if (item == NULL) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, i, item);
    }
    return list;
}

static void free_work(work_t *w) {
    PyMem_Free(w->outs);
    PyMem_Free(w->rows);
    PyMem_Free((void *)w->len);
}

static PyObject *py_gram(PyObject *self, PyObject *args) {
    int k, kind, nthreads;
    PyObject *rows_obj, *lens_obj;
    if (!PyArg_ParseTuple(args, "iOOii", &k, &rows_obj, &lens_obj, &kind, &nthreads)) return NULL;
    if (check_common(k, nthreads) < 0 || check_kind("kind", kind) < 0) return NULL;
    work_t w = {0};
    w.kind = kind;
    w.chunk = GRAM_CHUNK;
    int64_t total = 0;
    double *values = PyMem_Malloc(sizeof(double) * (size_t)k * k);
    PyObject *result = NULL;
    if (!values) return PyErr_NoMemory();
    if (parse_work(k, rows_obj, lens_obj, &w, &total) < 0) goto done;
    int failed;
    Py_BEGIN_ALLOW_THREADS failed = gram_run(&w, total, nthreads, values);
    Py_END_ALLOW_THREADS
    result = failed ? PyErr_NoMemory() : float_list(values, (Py_ssize_t)k * k);
done:
    PyMem_Free(values);
    free_work(&w);
    return result;
}

/* The combination's arguments after the rows: outs into w->outs (npieces pointers, not null
 * where a piece has values) and the float64/other pairing of kinds; 0, or -1 with an exception
 * set. */
static int parse_outs(PyObject *outs_obj, int kind, int out_kind, work_t *w) {
    if (check_kind("out_kind", out_kind) < 0) return -1;
    if ((kind == KIND_F64) != (out_kind == KIND_F64)) {
        PyErr_Format(PyExc_ValueError,
                     "out_kind = %d with kind = %d: float64 (1) rows and outputs go together; "
                     "float32 (0) and bfloat16 (2) mix freely",
                     out_kind, kind);
        return -1;
    }
    w->out_kind = out_kind;
    PyObject *outs = PySequence_Fast(outs_obj, "outs must be a sequence of ints");
    if (!outs) return -1;
    int rc = -1;
    if (PySequence_Fast_GET_SIZE(outs) != w->npieces) {
        PyErr_Format(PyExc_ValueError, "outs has %zd pointers, expected %zd",
                     PySequence_Fast_GET_SIZE(outs), w->npieces);
        goto done;
    }
    w->outs = PyMem_Malloc(sizeof(void *) * (size_t)(w->npieces + 1));
    if (!w->outs) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < w->npieces; i++) {
        w->outs[i] = PyLong_AsVoidPtr(PySequence_Fast_GET_ITEM(outs, i));
        if (w->outs[i] == NULL && PyErr_Occurred()) goto done;
        if (w->outs[i] == NULL && w->len[i] > 0) {
            PyErr_Format(PyExc_ValueError, "outs[%zd] is a null pointer for %lld values", i,
                         (long long)w->len[i]);
            goto done;
        }
    }
    rc = 0;
done:
    Py_DECREF(outs);
    return rc;
}

/* An output that partially overlaps one of its piece's rows cannot be written chunk by chunk (a
 * later chunk could read what an earlier one wrote): such pieces are skipped (their output set
 * to NULL) and their indices returned, for the caller to do otherwise. The same range exactly
 * (the output is one of the rows) is fine: each chunk is read before it is written. */
static PyObject *combine_skips(work_t *w) {
    PyObject *ret = PyList_New(0);
    if (!ret) return NULL;
    for (Py_ssize_t i = 0; i < w->npieces; i++) {
        uintptr_t o = (uintptr_t)w->outs[i], no = (uintptr_t)w->len[i] * kind_size[w->out_kind];
        uintptr_t nx = (uintptr_t)w->len[i] * kind_size[w->kind];
        for (int r = 0; r < w->k && no > 0; r++) {
            uintptr_t x = (uintptr_t)w->rows[i * w->k + r];
            int alias = x == o && w->kind == w->out_kind;
            if (x != 0 && !alias && x < o + no && o < x + nx) {
                PyObject *index = PyLong_FromSsize_t(i);
                if (!index || PyList_Append(ret, index) < 0) {
                    Py_XDECREF(index);
                    Py_DECREF(ret);
                    return NULL;
                }
                Py_DECREF(index);
                w->outs[i] = NULL; /* skipped by combine_range */
                break;
            }
        }
    }
    return ret;
}

/* Whether every output overlaps no memory but rows of its own piece that are exactly it, of the
 * same kind (each chunk of such a row is read before it is written): 1 yes, 0 no, -1 out of
 * memory. Stricter than combine_skips, which looks at a piece's own rows only: an output must
 * not touch another piece's rows either, since that piece may be read after it is written, nor
 * another output. The spans are sorted by start, so each output meets only its neighbours. */
typedef struct {
    uintptr_t lo, hi;
    Py_ssize_t piece;
    int out;
} span_t;

static int span_order(const void *a, const void *b) {
    const span_t *x = a, *y = b;
    if (x->lo != y->lo) return x->lo < y->lo ? -1 : 1;
    if (x->hi != y->hi) return x->hi < y->hi ? -1 : 1;
    return x->out - y->out;
}

static int span_allowed(const work_t *w, const span_t *o, const span_t *s) {
    return !s->out && s->piece == o->piece && s->lo == o->lo && s->hi == o->hi &&
           w->kind == w->out_kind;
}

static int outputs_exclusive(const work_t *w) {
    Py_ssize_t cap = w->npieces * (w->k + 1), n = 0;
    span_t *spans = PyMem_Malloc(sizeof(span_t) * (size_t)(cap > 0 ? cap : 1));
    uintptr_t *reach = PyMem_Malloc(sizeof(uintptr_t) * (size_t)(cap > 0 ? cap : 1));
    if (!spans || !reach) {
        PyMem_Free(spans);
        PyMem_Free(reach);
        return -1;
    }
    for (Py_ssize_t i = 0; i < w->npieces; i++) {
        if (w->len[i] == 0) continue;
        uintptr_t nx = (uintptr_t)w->len[i] * kind_size[w->kind];
        uintptr_t no = (uintptr_t)w->len[i] * kind_size[w->out_kind];
        for (int r = 0; r < w->k; r++) {
            uintptr_t x = (uintptr_t)w->rows[i * w->k + r];
            if (x) spans[n++] = (span_t){x, x + nx, i, 0};
        }
        spans[n++] = (span_t){(uintptr_t)w->outs[i], (uintptr_t)w->outs[i] + no, i, 1};
    }
    qsort(spans, (size_t)n, sizeof(span_t), span_order);
    for (Py_ssize_t q = 0; q < n; q++)
        reach[q] = q > 0 && reach[q - 1] > spans[q].hi ? reach[q - 1] : spans[q].hi;
    int ok = 1;
    for (Py_ssize_t p = 0; p < n && ok; p++) {
        const span_t *o = &spans[p];
        if (!o->out) continue;
        /* Later spans start at or after o->lo: they overlap o if they start before its end. */
        for (Py_ssize_t q = p + 1; q < n && spans[q].lo < o->hi && ok; q++)
            ok = span_allowed(w, o, &spans[q]);
        /* Earlier spans start at or before o->lo: they overlap o if they end after its start. */
        for (Py_ssize_t q = p - 1; q >= 0 && reach[q] > o->lo && ok; q--)
            if (spans[q].hi > o->lo) ok = span_allowed(w, o, &spans[q]);
    }
    PyMem_Free(spans);
    PyMem_Free(reach);
    return ok;
}

/* The combination with w->coeffs set (w->chunk is set here). Needs no GIL. */
static void combine_run(work_t *w, int64_t total, int nthreads) {
    w->chunk = COMBINE_CHUNK;
    int64_t per;
    int nblocks = plan_blocks(total, w->chunk, &per);
    run_split(combine_range, w, total, nthreads, nblocks, per, NULL);
}

static PyObject *py_combine(PyObject *self, PyObject *args) {
    int k, kind, nthreads, out_kind, accumulate, stream;
    PyObject *rows_obj, *lens_obj, *outs_obj, *coeffs_obj;
    if (!PyArg_ParseTuple(args, "iOOiiOiOpp", &k, &rows_obj, &lens_obj, &kind, &nthreads, &outs_obj,
                          &out_kind, &coeffs_obj, &accumulate, &stream))
        return NULL;
    if (check_common(k, nthreads) < 0 || check_kind("kind", kind) < 0) return NULL;
    work_t w = {0};
    w.kind = kind;
    w.accumulate = accumulate;
    w.stream = stream && !accumulate;
    int64_t total = 0;
    double coeffs[MAX_K];
    PyObject *cs = NULL, *ret = NULL;
    if (parse_work(k, rows_obj, lens_obj, &w, &total) < 0) goto done;
    if (parse_outs(outs_obj, kind, out_kind, &w) < 0) goto done;
    cs = PySequence_Fast(coeffs_obj, "coeffs must be a sequence of floats");
    if (!cs) goto done;
    if (PySequence_Fast_GET_SIZE(cs) != k) {
        PyErr_Format(PyExc_ValueError, "coeffs has %zd values, expected k = %d",
                     PySequence_Fast_GET_SIZE(cs), k);
        goto done;
    }
    for (int i = 0; i < k; i++) {
        coeffs[i] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(cs, i));
        if (coeffs[i] == -1.0 && PyErr_Occurred()) goto done;
    }
    w.coeffs = coeffs;
    ret = combine_skips(&w);
    if (!ret) goto done;
    Py_BEGIN_ALLOW_THREADS combine_run(&w, total, nthreads);
    Py_END_ALLOW_THREADS
done:
    Py_XDECREF(cs);
    free_work(&w);
    return ret;
}

/* One optimizer step's math in one call: the Gram, the host solve (csrc/host_solve.c) and, if
 * it answers, the combination with its coefficients. Between the backward passes and the inner
 * optimizer's step, with caches cold, every Python-level operation costs several times what it
 * does in a loop; this replaces some forty of them (MultiObjectiveOptimizer, docs/optimizer.md).
 * The Gram is the same, bit for bit, as gram()'s on the same rows, and the combination the same
 * as combine()'s with the returned coefficients. */
static PyObject *py_step(PyObject *self, PyObject *args) {
    int k, kind, nthreads, out_kind, accumulate, stream, exclusive = 0;
    PyObject *rows_obj, *lens_obj, *outs_obj, *w_obj, *opts_obj;
    if (!PyArg_ParseTuple(args, "iOOiiOippOO|p", &k, &rows_obj, &lens_obj, &kind, &nthreads,
                          &outs_obj, &out_kind, &accumulate, &stream, &w_obj, &opts_obj,
                          &exclusive))
        return NULL;
    if (check_common(k, nthreads) < 0 || check_kind("kind", kind) < 0) return NULL;
    if (k > HOST_MAX_K) {
        PyErr_Format(PyExc_ValueError, "k = %d is outside 1..%d", k, HOST_MAX_K);
        return NULL;
    }
    work_t w = {0};
    w.kind = kind;
    w.accumulate = accumulate;
    w.stream = stream && !accumulate;
    w.chunk = GRAM_CHUNK;
    int64_t total = 0;
    host_opts_t o;
    int solve = opts_obj != Py_None;
    double weights[HOST_MAX_K], coeffs[HOST_MAX_K], dual[HOST_MAX_K], clipped[HOST_MAX_K];
    double gap = 0.0;
    int pieces = 0, solved = 0, failed = 0;
    PyObject *skipped = NULL, *ret = NULL;
    double *gram = PyMem_Malloc(sizeof(double) * (size_t)k * k);
    if (!gram) return PyErr_NoMemory();
    if (parse_work(k, rows_obj, lens_obj, &w, &total) < 0) goto done;
    if (parse_outs(outs_obj, kind, out_kind, &w) < 0) goto done;
    if (host_weights(w_obj, k, weights) < 0) goto done;
    if (solve && host_parse_opts(opts_obj, &o) < 0) goto done;
    w.coeffs = coeffs;
    if (exclusive) {
        int ok = outputs_exclusive(&w);
        if (ok < 0) {
            PyErr_NoMemory();
            goto done;
        }
        if (!ok) {
            ret = Py_NewRef(Py_None); /* nothing read or written */
            goto done;
        }
        skipped = PyList_New(0);
    } else {
        skipped = combine_skips(&w);
    }
    if (!skipped) goto done;
    Py_BEGIN_ALLOW_THREADS failed = gram_run(&w, total, nthreads, gram);
    if (!failed && solve) {
        solved = host_solve(gram, k, k, 1, weights, &o, coeffs, dual, clipped, &gap, &pieces);
        failed = solved < 0;
        if (solved > 0) combine_run(&w, total, nthreads);
    }
    Py_END_ALLOW_THREADS
    if (failed) {
        PyErr_NoMemory();
        goto done;
    }
    PyObject *values = float_list(gram, (Py_ssize_t)k * k);
    if (!values) goto done;
    if (solved > 0) {
        PyObject *answer = host_answer(k, coeffs, dual, clipped, gap, pieces);
        if (!answer) {
            Py_DECREF(values);
            goto done;
        }
        ret = Py_BuildValue("(NNO)", values, answer, skipped);
    } else {
        ret = Py_BuildValue("(NOO)", values, Py_None, Py_None);
    }
done:
    PyMem_Free(gram);
    Py_XDECREF(skipped);
    free_work(&w);
    return ret;
}

static PyMethodDef methods[] = {
    {"gram", py_gram, METH_VARARGS,
     "gram(k, rows, lens, kind, nthreads) -> list of k*k floats (the symmetric Gram).\n\n"
     "rows: len(lens) * k data pointers (0 for zeros), piece-major; lens: values per piece;\n"
     "kind: 0 float32, 1 float64, 2 bfloat16."},
    {"combine", py_combine, METH_VARARGS,
     "combine(k, rows, lens, kind, nthreads, outs, out_kind, coeffs, accumulate, stream)\n"
     "-> skipped.\n\n"
     "Writes (or adds) sum_r coeffs[r] * rows[t*k + r] into outs[t] for every piece t, with\n"
     "non-temporal stores if stream (and not accumulate). Returns the pieces left unwritten\n"
     "because their output partially overlaps one of their rows."},
    {"solve_host", py_solve_host, METH_VARARGS,
     "solve_host(ptr, k, stride0, stride1, weights, options)\n"
     "-> (coeffs, dual, clipped, gap, pieces) or None.\n\n"
     "The host fast path's solve (csrc/host_solve.c) of the float64 k x k Gram at ptr (strides\n"
     "in elements); options: (method, closed_form, c, floor, zero, tol, budget, max_condition,\n"
     "snap, snap_cost, tol_optimal, min_det, roundoff), method 0 cagrad, 1 cagrad_clip,\n"
     "2 mgda (closed form only), 3 trivial (a = w). None where conflict_opt/solvers/_host.py\n"
     "would hand the problem to the torch path too."},
    {"step", py_step, METH_VARARGS,
     "step(k, rows, lens, kind, nthreads, outs, out_kind, accumulate, stream, weights, options,\n"
     "     exclusive=False) -> (gram, answer, skipped) or None.\n\n"
     "gram(), then solve_host() on it (options None: no solve), then, if that answers,\n"
     "combine() with its coefficients. gram: k*k floats; answer: solve_host's tuple, or None\n"
     "(nothing was written); skipped: combine's skipped pieces, or None with answer None.\n"
     "exclusive: every output must overlap no memory but its own piece's rows that are exactly\n"
     "it (same kind); if one does, returns None before reading or writing anything."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_native",
    "Multi-tensor Gram and combination kernels for CPU (see csrc/multi_tensor_cpu.c).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__native(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddIntConstant(m, "GRAM_CHUNK", GRAM_CHUNK) < 0 ||
        PyModule_AddIntConstant(m, "COMBINE_CHUNK", COMBINE_CHUNK) < 0 ||
        PyModule_AddIntConstant(m, "MAX_K", MAX_K) < 0 ||
        PyModule_AddIntConstant(m, "HOST_MAX_K", HOST_MAX_K) < 0 ||
#ifdef _OPENMP
        PyModule_AddIntConstant(m, "OPENMP", 1) < 0) {
#else
        PyModule_AddIntConstant(m, "OPENMP", 0) < 0) {
#endif
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
