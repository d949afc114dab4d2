# Group Norm kernels and the public functions that validate arguments and call them.
#
# This file is compiled twice (see setup.py): `_kernels_baseline.pyx` with the compiler's
# default flags, which runs on any CPU of the architecture, and, on x86-64,
# `_kernels_x86_64_v3.pyx` with AVX2/FMA/F16C; `gncpu/__init__.py` imports the one this
# CPU can run. Both include this file, so there is a single source of truth.
#
# Shapes: x is read as (N, C, S) with S = prod(spatial) and unit stride along S; channel
# c belongs to group g = c // Cg with Cg = C / G. Statistics are per (n, g) "pair",
# numbered p = n * G + g.
#
# Determinism: a group's elements are cut into fixed chunks of at most CHUNK elements that
# depend only on (Cg, S) and on whether the group is one contiguous run. Chunk moments are
# merged in a fixed order. Which thread computes a chunk never changes the arithmetic, so
# outputs are bitwise identical for any thread count and for a sample alone or in a batch.

from cython.parallel cimport prange
from libc.math cimport sqrt, NAN
cimport numpy as cnp
import operator
import numpy as np

cnp.import_array()

cdef extern from "_platform.h" nogil:
    int gn_openmp_enabled()
    int gn_max_threads()
    int gn_cpu_has_x86_64_v3()

cdef extern from "_simd.h" nogil:
    void gn_chunk_moments_f32(const float* x, Py_ssize_t n, double* mean, double* m2)
    void gn_chunk_moments_f64(const double* x, Py_ssize_t n, double* mean, double* m2)
    void gn_affine_f32(const float* x, float* y, Py_ssize_t n, float m, float a, float b)
    void gn_affine_f64(const double* x, double* y, Py_ssize_t n, double m, double a, double b)
    void gn_grad_sums_f32(const float* dy, const float* x, Py_ssize_t n, float m, double* out)
    void gn_grad_sums_f64(const double* dy, const double* x, Py_ssize_t n, double m,
                          double* out)
    void gn_grad_x_f32(const float* dy, const float* x, float* dx, Py_ssize_t n, float a,
                       float b, float m, float c)
    void gn_grad_x_f64(const double* dy, const double* x, double* dx, Py_ssize_t n, double a,
                       double b, double m, double c)

cdef enum:
    # Elements per chunk: small enough that a chunk stays in L1 between its two passes.
    CHUNK = 2048
    # Below this many elements per thread, waking another thread costs more than it saves.
    MIN_WORK_PER_THREAD = 32768


ctypedef fused real:
    float
    double


cdef struct Moments:
    double n        # element count
    double mean
    double m2       # sum of squared deviations from the mean


# ---------------------------------------------------------------------------------------
# Statistics


cdef inline void chunk_moments(const real* x, Py_ssize_t n, Moments* out) noexcept nogil:
    """Moments of x[0:n], n <= CHUNK, by the corrected two-pass algorithm (_simd.h):
    m = sum(x) / n;  d = x - m;  mean = m + sum(d) / n;  M2 = sum(d^2) - sum(d)^2 / n."""
    out.n = <double>n
    if real is float:
        gn_chunk_moments_f32(x, n, &out.mean, &out.m2)
    else:
        gn_chunk_moments_f64(x, n, &out.mean, &out.m2)


cdef inline void merge_moments(Moments* a, const Moments* b) noexcept nogil:
    """Chan et al.'s merge of b into a:
    n = na + nb,  d = mean_b - mean_a,  mean = mean_a + d * nb / n,
    M2 = M2_a + M2_b + d^2 * na * nb / n."""
    cdef double n = a.n + b.n
    cdef double d = b.mean - a.mean
    if b.n == 0:
        return
    if a.n == 0:
        a[0] = b[0]
        return
    a.mean = a.mean + d * (b.n / n)
    a.m2 = a.m2 + b.m2 + d * d * (a.n * (b.n / n))
    a.n = n


# ---------------------------------------------------------------------------------------
# Geometry: how a pair of x is cut into rows (contiguous runs) and chunks.


cdef struct Layout:
    Py_ssize_t N, C, S, G, Cg
    Py_ssize_t xsN, xsC         # element strides of x along N and C (S has stride 1)
    Py_ssize_t ysN, ysC         # same for the output (y or grad_x)
    Py_ssize_t dsN, dsC         # same for grad_out (backward only)
    Py_ssize_t rows             # runs per group: 1 if the group is contiguous, else Cg
    Py_ssize_t row_len          # Cg * S if contiguous, else S
    Py_ssize_t row_chunks       # ceil(row_len / CHUNK)


cdef Layout make_layout(Py_ssize_t N, Py_ssize_t C, Py_ssize_t S, Py_ssize_t G,
                        Py_ssize_t xsN, Py_ssize_t xsC, bint per_channel) noexcept:
    """Rows are whole groups when x's group is one contiguous run (and the kernel does not
    need per-channel sums), else channels."""
    cdef Layout L
    L.N = N; L.C = C; L.S = S; L.G = G; L.Cg = C // G
    L.xsN = xsN; L.xsC = xsC
    L.ysN = 0; L.ysC = 0; L.dsN = 0; L.dsC = 0
    if (xsC == S or L.Cg == 1) and not per_channel:
        L.rows = 1
        L.row_len = L.Cg * S
    else:
        L.rows = L.Cg
        L.row_len = S
    L.row_chunks = (L.row_len + CHUNK - 1) // CHUNK
    return L


cdef inline void pair_chunk_moments(const real* x, const Layout* L, Py_ssize_t p,
                                    Py_ssize_t k, Moments* out) noexcept nogil:
    """Moments of chunk k (row-major over rows, then chunks) of pair p."""
    cdef Py_ssize_t r = k // L.row_chunks
    cdef Py_ssize_t start = (k % L.row_chunks) * CHUNK
    chunk_moments(x + (p // L.G) * L.xsN + ((p % L.G) * L.Cg + r) * L.xsC + start,
                  min(CHUNK, L.row_len - start), out)


# ---------------------------------------------------------------------------------------
# Forward


cdef inline void affine_segment(const real* x, real* y, Py_ssize_t n, real m, real a,
                                real b) noexcept nogil:
    """y = (x - m) * a + b over n contiguous elements (_simd.h)."""
    if real is float:
        gn_affine_f32(x, y, n, m, a, b)
    else:
        gn_affine_f64(x, y, n, m, a, b)


cdef inline void normalize_span(const real* x, real* y, const Layout* L, Py_ssize_t p,
                                Py_ssize_t r, Py_ssize_t start, Py_ssize_t n,
                                const real* mean, const real* rstd,
                                const real* weight, const real* bias) noexcept nogil:
    """Write y for elements [start, start + n) of row r of pair p.

    Per channel c: a_c = weight_c * rstd and y = (x - mean) * a_c + bias_c. Centring
    before scaling keeps full precision when |mean| >> std, and gives exactly bias_c for
    a constant group. A contiguous row crosses channel boundaries every S elements.
    """
    cdef Py_ssize_t n_idx = p // L.G
    cdef Py_ssize_t c = (p % L.G) * L.Cg + (start // L.S if L.rows == 1 else r)
    cdef Py_ssize_t s = start % L.S if L.rows == 1 else start
    cdef Py_ssize_t seg
    cdef real a
    while n > 0:
        seg = min(n, L.S - s)
        a = <real>((1.0 if weight == NULL else <double>weight[c]) * <double>rstd[p])
        affine_segment(x + n_idx * L.xsN + c * L.xsC + s, y + n_idx * L.ysN + c * L.ysC + s,
                       seg, mean[p], a, 0 if bias == NULL else bias[c])
        n -= seg
        c += 1
        s = 0


cdef inline void finish_stats(const Moments* m, double eps, Py_ssize_t p,
                              real* mean, real* rstd) noexcept nogil:
    """mean and rstd = 1 / sqrt(M2 / n + eps) of pair p from its merged moments."""
    if m.n == 0:
        mean[p] = NAN
        rstd[p] = NAN
    else:
        mean[p] = <real>m.mean
        rstd[p] = <real>(1.0 / sqrt(m.m2 / m.n + eps))


cdef void forward_pair(const real* x, real* y, const Layout* L, Py_ssize_t p, double eps,
                       const real* weight, const real* bias,
                       real* mean, real* rstd) noexcept nogil:
    """Pair p: its statistics, then its outputs while its data is still in cache."""
    cdef Py_ssize_t k, r
    cdef Moments total, part
    total.n = 0; total.mean = 0; total.m2 = 0
    for k in range(L.rows * L.row_chunks):
        pair_chunk_moments(x, L, p, k, &part)
        merge_moments(&total, &part)
    finish_stats(&total, eps, p, mean, rstd)
    for r in range(L.rows):
        normalize_span(x, y, L, p, r, 0, L.row_len, mean, rstd, weight, bias)


cdef void forward_fused(const real* x, real* y, const Layout* L, double eps,
                        const real* weight, const real* bias,
                        real* mean, real* rstd, int threads) noexcept nogil:
    """One task per pair."""
    cdef Py_ssize_t p
    if threads == 1:
        for p in range(L.N * L.G):
            forward_pair(x, y, L, p, eps, weight, bias, mean, rstd)
    else:
        for p in prange(L.N * L.G, schedule='static', num_threads=threads):
            forward_pair(x, y, L, p, eps, weight, bias, mean, rstd)


cdef void forward_split(const real* x, real* y, const Layout* L, double eps,
                        const real* weight, const real* bias,
                        real* mean, real* rstd, Moments* parts, int threads) noexcept nogil:
    """Few pairs, many threads: chunk moments in parallel, merged per pair in the same
    order as forward_pair, then outputs in parallel over chunks."""
    cdef Py_ssize_t i, p, k, start
    cdef Py_ssize_t chunks = L.rows * L.row_chunks
    cdef Py_ssize_t items = L.N * L.G * chunks
    cdef Moments total
    for i in prange(items, schedule='static', num_threads=threads):
        pair_chunk_moments(x, L, i // chunks, i % chunks, &parts[i])
    for p in range(L.N * L.G):
        total.n = 0; total.mean = 0; total.m2 = 0
        for k in range(chunks):
            merge_moments(&total, &parts[p * chunks + k])
        finish_stats(&total, eps, p, mean, rstd)
    for i in prange(items, schedule='static', num_threads=threads):
        start = (i % L.row_chunks) * CHUNK
        normalize_span(x, y, L, i // chunks, (i % chunks) // L.row_chunks, start,
                       min(CHUNK, L.row_len - start), mean, rstd, weight, bias)


# ---------------------------------------------------------------------------------------
# Backward. Rows are always channels here (per-channel sums feed grad_weight).


cdef inline void channel_grad_chunk(const real* dy, const real* x, Py_ssize_t n, real m,
                                    double* out) noexcept nogil:
    """out = [sum(dy), sum(dy * (x - m))] over n <= CHUNK contiguous elements (_simd.h)."""
    if real is float:
        gn_grad_sums_f32(dy, x, n, m, out)
    else:
        gn_grad_sums_f64(dy, x, n, m, out)


cdef inline void grad_x_segment(const real* dy, const real* x, real* dx, Py_ssize_t n,
                                real a, real b, real m, real c) noexcept nogil:
    """dx = a * dy + (b * (x - m) + c) over n contiguous elements (_simd.h)."""
    if real is float:
        gn_grad_x_f32(dy, x, dx, n, a, b, m, c)
    else:
        gn_grad_x_f64(dy, x, dx, n, a, b, m, c)


cdef inline void channel_grad_sums(const real* dy, const real* x, Py_ssize_t S, real m,
                                   double* db, double* ds) noexcept nogil:
    """db = sum(dy), ds = sum(dy * (x - m)) over one channel: chunk sums added in order."""
    cdef Py_ssize_t start = 0
    cdef double part[2]
    cdef double a = 0, b = 0
    while start < S:
        channel_grad_chunk(dy + start, x + start, min(CHUNK, S - start), m, part)
        a = a + part[0]
        b = b + part[1]
        start += CHUNK
    db[0] = a
    ds[0] = b


cdef inline void grad_chunk_sums(const real* dy, const real* x, const Layout* L,
                                 const real* mean, Py_ssize_t i, double* out) noexcept nogil:
    """Partial sums of chunk i = (n * C + c) * row_chunks + j (see channel_grad_chunk)."""
    cdef Py_ssize_t nc = i // L.row_chunks
    cdef Py_ssize_t n = nc // L.C, c = nc % L.C
    cdef Py_ssize_t start = (i % L.row_chunks) * CHUNK
    channel_grad_chunk(dy + n * L.dsN + c * L.dsC + start, x + n * L.xsN + c * L.xsC + start,
                       min(CHUNK, L.S - start), mean[n * L.G + c // L.Cg], out)


cdef inline void grad_x_chunk(const real* dy, const real* x, real* dx, const Layout* L,
                              const real* mean, const real* rstd, const real* weight,
                              const double* terms, Py_ssize_t i) noexcept nogil:
    """grad_x for chunk i (numbered as in grad_chunk_sums)."""
    cdef Py_ssize_t nc = i // L.row_chunks
    cdef Py_ssize_t n = nc // L.C, c = nc % L.C
    cdef Py_ssize_t p = n * L.G + c // L.Cg
    cdef Py_ssize_t start = (i % L.row_chunks) * CHUNK
    cdef double a = <double>rstd[p] * (1.0 if weight == NULL else <double>weight[c])
    grad_x_segment(dy + n * L.dsN + c * L.dsC + start, x + n * L.xsN + c * L.xsC + start,
                   dx + n * L.ysN + c * L.ysC + start, min(CHUNK, L.S - start),
                   <real>a, <real>terms[2 * p], mean[p], <real>terms[2 * p + 1])


cdef inline void channel_sums(const double* parts, Py_ssize_t chunks, Py_ssize_t nc,
                              double* db, double* ds) noexcept nogil:
    """db[nc], ds[nc]: the chunk partial sums of channel nc added in chunk order."""
    cdef Py_ssize_t j
    cdef double a = 0, b = 0
    for j in range(chunks):
        a = a + parts[2 * (nc * chunks + j)]
        b = b + parts[2 * (nc * chunks + j) + 1]
    db[nc] = a
    ds[nc] = b


cdef inline void group_terms(const Layout* L, Py_ssize_t p, const real* rstd,
                             const real* weight, const double* db, const double* ds,
                             double* terms) noexcept nogil:
    """For pair p with M = Cg * S elements and dxhat = weight_c * dy:
    m1 = sum(dxhat) / M,  m2 = sum(dxhat * xhat) / M = rstd * sum_c weight_c ds_c / M;
    grad_x = rstd * (dxhat - m1 - xhat * m2) = a_c * dy + b * (x - mean) + c with
    b = -rstd^2 * m2 and c = -rstd * m1, stored as terms[2p], terms[2p + 1]."""
    cdef Py_ssize_t k, c0 = (p % L.G) * L.Cg, nc0 = (p // L.G) * L.C + c0
    cdef double w, s1 = 0, s2 = 0, M = <double>(L.Cg * L.S)
    cdef double r = <double>rstd[p]
    for k in range(L.Cg):
        w = 1.0 if weight == NULL else <double>weight[c0 + k]
        s1 = s1 + w * db[nc0 + k]
        s2 = s2 + w * ds[nc0 + k]
    terms[2 * p] = -r * r * (r * s2 / M)
    terms[2 * p + 1] = -r * (s1 / M)


cdef void backward_pair(const real* dy, const real* x, real* dx, const Layout* L,
                        Py_ssize_t p, const real* mean, const real* rstd,
                        const real* weight, double* db, double* ds,
                        double* terms) noexcept nogil:
    """Pair p: per-channel sums, the pair's two terms, then grad_x, its data still in cache."""
    cdef Py_ssize_t n = p // L.G, c0 = (p % L.G) * L.Cg, c
    cdef Py_ssize_t nc0 = n * L.C + c0
    cdef real a
    for c in range(c0, c0 + L.Cg):
        channel_grad_sums(dy + n * L.dsN + c * L.dsC, x + n * L.xsN + c * L.xsC, L.S, mean[p],
                          &db[n * L.C + c], &ds[n * L.C + c])
    group_terms(L, p, rstd, weight, db, ds, terms)
    for c in range(c0, c0 + L.Cg):
        a = <real>(<double>rstd[p] * (1.0 if weight == NULL else <double>weight[c]))
        grad_x_segment(dy + n * L.dsN + c * L.dsC, x + n * L.xsN + c * L.xsC,
                       dx + n * L.ysN + c * L.ysC, L.S, a, <real>terms[2 * p], mean[p],
                       <real>terms[2 * p + 1])


cdef void backward_fused(const real* dy, const real* x, real* dx, const Layout* L,
                         const real* mean, const real* rstd, const real* weight,
                         double* db, double* ds, double* terms, int threads) noexcept nogil:
    """One task per pair."""
    cdef Py_ssize_t p
    if threads == 1:
        for p in range(L.N * L.G):
            backward_pair(dy, x, dx, L, p, mean, rstd, weight, db, ds, terms)
    else:
        for p in prange(L.N * L.G, schedule='static', num_threads=threads):
            backward_pair(dy, x, dx, L, p, mean, rstd, weight, db, ds, terms)


cdef void backward_split(const real* dy, const real* x, real* dx, const Layout* L,
                         const real* mean, const real* rstd, const real* weight,
                         double* parts, double* db, double* ds, double* terms,
                         int threads) noexcept nogil:
    """Few pairs, many threads: the arithmetic of backward_pair, each phase parallel
    over chunks (parts holds 2 partial sums per chunk)."""
    cdef Py_ssize_t i, p
    cdef Py_ssize_t items = L.N * L.C * L.row_chunks
    for i in prange(items, schedule='static', num_threads=threads):
        grad_chunk_sums(dy, x, L, mean, i, &parts[2 * i])
    for i in range(L.N * L.C):
        channel_sums(parts, L.row_chunks, i, db, ds)
    for p in range(L.N * L.G):
        group_terms(L, p, rstd, weight, db, ds, terms)
    for i in prange(items, schedule='static', num_threads=threads):
        grad_x_chunk(dy, x, dx, L, mean, rstd, weight, terms, i)


cdef void param_grads(const Layout* L, const real* rstd, const double* db,
                      const double* ds, real* grad_weight, real* grad_bias) noexcept nogil:
    """grad_bias_c = sum_n db[n, c];  grad_weight_c = sum_n rstd[n, g] * ds[n, c]
    (= sum(dy * xhat) over the channel), summed over n in order."""
    cdef Py_ssize_t n, g, c
    cdef double gw, gb
    for g in range(L.G):
        for c in range(g * L.Cg, (g + 1) * L.Cg):
            gw = 0
            gb = 0
            for n in range(L.N):
                gb = gb + db[n * L.C + c]
                gw = gw + <double>rstd[n * L.G + g] * ds[n * L.C + c]
            grad_weight[c] = <real>gw
            grad_bias[c] = <real>gb


# ---------------------------------------------------------------------------------------
# Argument handling. Kept in Cython and on NumPy's C API: a tiny call must cost a couple
# of microseconds, not tens of them.

cdef object F16 = np.dtype(np.float16)
cdef object F32 = np.dtype(np.float32)
cdef object F64 = np.dtype(np.float64)


def build_info():
    """What this build of gncpu's kernels uses.

    Returns
    -------
    dict
        ``openmp``: whether the kernels were compiled with OpenMP; ``max_threads``: the
        threads a call uses by default (``OMP_NUM_THREADS``, threadpoolctl and
        ``omp_set_num_threads`` change it); ``simd``: the instruction set the kernels
        were compiled for.
    """
    return {"openmp": bool(gn_openmp_enabled()), "max_threads": gn_max_threads(),
            "simd": SIMD}


def cpu_has_x86_64_v3():
    """Whether this CPU runs x86-64-v3 code (AVX2, FMA and F16C)."""
    return bool(gn_cpu_has_x86_64_v3())


cdef int plan_threads(object num_threads, Py_ssize_t work) except -1:
    """Threads for a call: num_threads (or the OpenMP default), but no more than the work
    keeps busy. The thread count never changes the results, only the speed."""
    cdef Py_ssize_t threads
    if num_threads is None:
        threads = gn_max_threads()
    else:
        threads = as_int(num_threads, "num_threads")
        if threads < 1:
            raise ValueError(f"num_threads={threads} must be at least 1 "
                             "(or None for the OpenMP default)")
    return <int>max(1, min(threads, work // MIN_WORK_PER_THREAD))


cdef Py_ssize_t as_int(object value, str name) except? -1:
    if type(value) is int:
        return value
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}={value!r} must be an integer, not a bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name}={value!r} must be an integer") from None


cdef Py_ssize_t resolve_groups(object num_groups, object group_size, Py_ssize_t C) except -1:
    """G from exactly one of num_groups and group_size (channels per group)."""
    cdef Py_ssize_t k
    if (num_groups is None) == (group_size is None):
        raise ValueError("give exactly one of num_groups and group_size (channels per group); "
                         f"got num_groups={num_groups!r}, group_size={group_size!r}")
    if C == 0:
        raise ValueError("x has C=0 channels (x.shape[1] == 0): nothing to group")
    name = "num_groups" if num_groups is not None else "group_size"
    k = as_int(num_groups if num_groups is not None else group_size, name)
    if k <= 0 or C % k:
        raise ValueError((f"{name}={k} must be positive" if k <= 0 else
                          f"C={C} is not divisible by {name}={k}")
                         + f"; valid values for C={C}: "
                         + ", ".join([str(d) for d in range(1, C + 1) if C % d == 0]))
    return k if num_groups is not None else C // k


cdef tuple float_array(object obj, str name):
    """(array, result dtype, compute type number) for a data argument.

    float32 and float64 compute natively; float16 computes in float32 and returns
    float16; integers and booleans compute and return float64 (as numpy.mean does);
    longer floats compute and return float64. Anything else is a TypeError.
    """
    cdef cnp.ndarray arr = obj if type(obj) is np.ndarray else np.asarray(obj)
    cdef int t = cnp.PyArray_TYPE(arr)
    if t == cnp.NPY_FLOAT32:
        return arr, F32, cnp.NPY_FLOAT32
    if t == cnp.NPY_FLOAT64:
        return arr, F64, cnp.NPY_FLOAT64
    if t == cnp.NPY_FLOAT16:
        return arr, F16, cnp.NPY_FLOAT32
    kind = arr.dtype.kind
    if kind in "fiub":
        return arr, F64, cnp.NPY_FLOAT64
    raise TypeError(f"{name} has dtype {arr.dtype}: gncpu normalizes real numbers (floating "
                    "point; integers and booleans are converted to float64)")


cdef bint nc_strides(cnp.ndarray a, Py_ssize_t* sN, Py_ssize_t* sC):
    """Whether `a` (ndim >= 2) can be read as (N, C, S) with unit stride along S, aligned,
    in native byte order; if so, its element strides along N and C."""
    cdef int k, nd = cnp.PyArray_NDIM(a)
    cdef Py_ssize_t item = cnp.PyArray_ITEMSIZE(a), expected = item
    cdef cnp.npy_intp* dims = cnp.PyArray_DIMS(a)
    cdef cnp.npy_intp* strides = cnp.PyArray_STRIDES(a)
    if not (cnp.PyArray_ISALIGNED(a) and cnp.PyArray_ISNOTSWAPPED(a)):
        return False
    for k in range(nd - 1, 1, -1):
        if dims[k] != 1 and strides[k] != expected:
            return False
        expected *= dims[k]
    if strides[0] % item or strides[1] % item:
        return False
    sN[0] = strides[0] // item
    sC[0] = strides[1] // item
    return True


cdef cnp.ndarray kernel_input(cnp.ndarray arr, int typenum, Py_ssize_t* sN, Py_ssize_t* sC):
    """arr itself when the kernels can read it, else a C-contiguous copy of type typenum;
    its element strides along N and C."""
    if cnp.PyArray_TYPE(arr) != typenum or not nc_strides(arr, sN, sC):
        arr = cnp.PyArray_FROMANY(arr, typenum, 0, 0, cnp.NPY_ARRAY_CARRAY | cnp.NPY_ARRAY_FORCECAST)
        nc_strides(arr, sN, sC)
    return arr


cdef cnp.ndarray channel_vector(object obj, str name, Py_ssize_t C, int typenum):
    """A (C,) parameter as a contiguous array of type typenum, or None."""
    if obj is None:
        return None
    cdef cnp.ndarray arr = obj if type(obj) is np.ndarray else np.asarray(obj)
    if (cnp.PyArray_TYPE(arr) == typenum and cnp.PyArray_NDIM(arr) == 1
            and cnp.PyArray_DIMS(arr)[0] == C and cnp.PyArray_ISCARRAY_RO(arr)):
        return arr
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"{name} has dtype {arr.dtype}: expected real numbers")
    if cnp.PyArray_NDIM(arr) != 1 or cnp.PyArray_DIMS(arr)[0] != C:
        raise ValueError(f"{name} has shape {(<object>arr).shape}; expected (C,) = ({C},)")
    return cnp.PyArray_FROMANY(arr, typenum, 1, 1, cnp.NPY_ARRAY_CARRAY | cnp.NPY_ARRAY_FORCECAST)


cdef double check_eps(object eps) except? -1:
    cdef double e
    try:
        e = eps
    except TypeError:
        raise TypeError(f"eps={eps!r} must be a real number") from None
    if not (e >= 0 and e < float("inf")):
        raise ValueError(f"eps={eps!r} must be finite and non-negative")
    return e


cdef inline char* ptr(cnp.ndarray a):
    return NULL if a is None else <char*>cnp.PyArray_DATA(a)


cdef bint overlaps(cnp.ndarray a, cnp.ndarray b):
    """Whether the memory spans of a and b intersect (NumPy's cheap bounds test)."""
    cdef char* lo_a
    cdef char* hi_a
    cdef char* lo_b
    cdef char* hi_b
    if cnp.PyArray_SIZE(a) == 0 or cnp.PyArray_SIZE(b) == 0:
        return False
    span(a, &lo_a, &hi_a)
    span(b, &lo_b, &hi_b)
    return lo_a < hi_b and lo_b < hi_a


cdef void span(cnp.ndarray a, char** lo, char** hi):
    cdef int k
    cdef char* start = <char*>cnp.PyArray_DATA(a)
    cdef char* end = start + cnp.PyArray_ITEMSIZE(a)
    for k in range(cnp.PyArray_NDIM(a)):
        if cnp.PyArray_STRIDES(a)[k] < 0:
            start += cnp.PyArray_STRIDES(a)[k] * (cnp.PyArray_DIMS(a)[k] - 1)
        else:
            end += cnp.PyArray_STRIDES(a)[k] * (cnp.PyArray_DIMS(a)[k] - 1)
    lo[0] = start
    hi[0] = end


cdef cnp.ndarray output_target(object out, cnp.ndarray x, object result, int typenum,
                               Py_ssize_t* sN, Py_ssize_t* sC):
    """out itself when the kernel may write it directly (in place over x included), else
    None: the kernel then writes a temporary that is copied into out."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
    cdef cnp.ndarray o = out
    if not cnp.PyArray_SAMESHAPE(o, x):
        raise ValueError(f"out has shape {(<object>o).shape}; expected x's shape "
                         f"{(<object>x).shape}")
    if cnp.PyArray_TYPE(o) != (<cnp.dtype>result).type_num or not cnp.PyArray_ISNOTSWAPPED(o):
        raise ValueError(f"out has dtype {o.dtype}; expected {result} for this x")
    if not cnp.PyArray_ISWRITEABLE(o):
        raise ValueError("out is read-only")
    if cnp.PyArray_TYPE(o) != typenum or not nc_strides(o, sN, sC):
        return None
    if overlaps(o, x) and not (cnp.PyArray_DATA(o) == cnp.PyArray_DATA(x)
                               and (<object>o).strides == (<object>x).strides):
        return None
    return o


cdef inline void check_data(cnp.ndarray arr, Py_ssize_t* N, Py_ssize_t* C, Py_ssize_t* S) except *:
    """(N, C, S) of x; a ValueError for fewer than 2 dimensions."""
    cdef int nd = cnp.PyArray_NDIM(arr)
    if nd < 2:
        raise ValueError(f"x has shape {(<object>arr).shape}; expected (N, C, *spatial) "
                         "with at least 2 dimensions")
    N[0] = cnp.PyArray_DIMS(arr)[0]
    C[0] = cnp.PyArray_DIMS(arr)[1]
    S[0] = cnp.PyArray_MultiplyList(cnp.PyArray_DIMS(arr) + 2, nd - 2)


cdef cnp.ndarray empty_like_c(cnp.ndarray like, int typenum):
    return cnp.PyArray_EMPTY(cnp.PyArray_NDIM(like), cnp.PyArray_DIMS(like), typenum, 0)


def group_norm(x, num_groups=None, weight=None, bias=None, eps=1e-5, *, group_size=None,
               out=None, return_stats=False, num_threads=None):
    """Group Normalization of ``x`` of shape (N, C, *spatial).

    The C channels are split into G consecutive groups. For each sample n and group g,
    the mean and the biased variance are taken over the group's C/G channels and all
    spatial positions; then, per channel c of group g::

        y[n, c] = (x[n, c] - mean[n, g]) * rstd[n, g] * weight[c] + bias[c]
        rstd[n, g] = 1 / sqrt(var[n, g] + eps)

    Statistics are per group, the affine is per channel. G = 1 is Layer Norm over
    (C, *spatial); G = C is Instance Norm.

    Parameters
    ----------
    x : array_like, shape (N, C, *spatial)
        Any number of spatial dimensions, including none. float32 and float64 are
        computed natively; float16 is computed in float32 and returned as float16;
        integers and booleans are converted to float64, as ``numpy.mean`` does. Any
        memory layout is accepted; ``x`` is never modified.
    num_groups : int, optional
        G, which must divide C. Give exactly one of ``num_groups`` and ``group_size``.
    weight, bias : array_like, shape (C,), optional
        Per-channel scale (gamma, default 1) and shift (beta, default 0), used in the
        compute precision (float32 for float32 and float16 input).
    eps : float, default 1e-5
        Added to the variance; finite and non-negative.
    group_size : int, optional
        Channels per group (C / G), the alternative to ``num_groups``.
    out : ndarray, optional
        Where to write y: x's shape and the result dtype. May be ``x`` itself.
    return_stats : bool, default False
        Also return ``mean`` and ``rstd``, shape (N, G), float32 for float32 and float16
        input, float64 otherwise; pass them to :func:`group_norm_backward`.
    num_threads : int, optional
        OpenMP threads to use; default: the OpenMP setting (``OMP_NUM_THREADS``,
        threadpoolctl). Results are bitwise identical for every thread count.

    Returns
    -------
    y : ndarray
        Same shape as ``x``, C-contiguous unless ``out`` is given. With
        ``return_stats``, the tuple ``(y, mean, rstd)``.

    Raises
    ------
    ValueError
        C not divisible by ``num_groups``, a wrong shape of ``weight``, ``bias`` or
        ``out``, a negative or non-finite ``eps``, ``x.ndim < 2``.
    TypeError
        Complex, object or string data; a non-integer group count.

    Notes
    -----
    Statistics are exact two-pass moments of chunks of 2048 elements, merged with Chan's
    formula in float64 in a fixed order. The chunks depend only on the group's shape, so
    a sample's output is bitwise the same alone or inside any batch, and for any number
    of threads. The output is computed as ``(x - mean) * (rstd * weight[c]) + bias[c]``.

    Examples
    --------
    >>> import numpy as np, gncpu
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 4, 2, 2)
    >>> y = gncpu.group_norm(x, num_groups=2)
    >>> y.shape, y.dtype
    ((1, 4, 2, 2), dtype('float32'))
    >>> np.round(y[0, :2].ravel(), 3)
    array([-1.528, -1.091, -0.655, -0.218,  0.218,  0.655,  1.091,  1.528],
          dtype=float32)
    """
    cdef cnp.ndarray arr, x3, y3, w, b, mean, rstd, parts = None
    cdef Py_ssize_t N, C, S, G, xsN = 0, xsC = 0
    cdef int threads, typenum
    cdef double e
    cdef Layout L
    cdef cnp.npy_intp stat_dims[2]
    arr, result, typenum = float_array(x, "x")
    check_data(arr, &N, &C, &S)
    G = resolve_groups(num_groups, group_size, C)
    w = channel_vector(weight, "weight", C, typenum)
    b = channel_vector(bias, "bias", C, typenum)
    e = check_eps(eps)
    x3 = kernel_input(arr, typenum, &xsN, &xsC)
    L = make_layout(N, C, S, G, xsN, xsC, False)
    y3 = None
    if out is not None:
        y3 = output_target(out, x3, result, typenum, &L.ysN, &L.ysC)
    if y3 is None:
        y3 = empty_like_c(arr, typenum)
        L.ysN = C * S
        L.ysC = S
    stat_dims[0] = N
    stat_dims[1] = G
    mean = cnp.PyArray_EMPTY(2, stat_dims, typenum, 0)
    rstd = cnp.PyArray_EMPTY(2, stat_dims, typenum, 0)
    threads = plan_threads(num_threads, N * C * S)
    if threads > 1 and N * G < 2 * threads:
        parts = np.empty(3 * N * G * L.rows * L.row_chunks, dtype=F64)
    cdef char* xp = ptr(x3)
    cdef char* yp = ptr(y3)
    cdef char* wp = ptr(w)
    cdef char* bp = ptr(b)
    cdef char* mp = ptr(mean)
    cdef char* rp = ptr(rstd)
    cdef Moments* pp = <Moments*>ptr(parts)
    with nogil:
        if typenum == cnp.NPY_FLOAT32 and pp == NULL:
            forward_fused(<const float*>xp, <float*>yp, &L, e, <float*>wp, <float*>bp,
                          <float*>mp, <float*>rp, threads)
        elif typenum == cnp.NPY_FLOAT32:
            forward_split(<const float*>xp, <float*>yp, &L, e, <float*>wp, <float*>bp,
                          <float*>mp, <float*>rp, pp, threads)
        elif pp == NULL:
            forward_fused(<const double*>xp, <double*>yp, &L, e, <double*>wp, <double*>bp,
                          <double*>mp, <double*>rp, threads)
        else:
            forward_split(<const double*>xp, <double*>yp, &L, e, <double*>wp, <double*>bp,
                          <double*>mp, <double*>rp, pp, threads)
    if out is not None:
        if y3 is not out:
            np.copyto(out, y3, casting="unsafe")
        y = out
    else:
        y = y3 if result is not F16 else y3.astype(F16)
    return (y, mean, rstd) if return_stats else y


def group_norm_backward(grad_out, x, mean, rstd, num_groups=None, weight=None, *,
                        group_size=None, num_threads=None):
    """Gradients of Group Norm with respect to ``x``, ``weight`` and ``bias``.

    With ``xhat = (x - mean) * rstd``, ``dxhat = grad_out * weight[c]`` and ``<.>`` the
    mean over a group's C/G x spatial elements::

        grad_x      = rstd * (dxhat - <dxhat> - xhat * <dxhat * xhat>)
        grad_weight = sum over (n, spatial) of grad_out * xhat
        grad_bias   = sum over (n, spatial) of grad_out

    Parameters
    ----------
    grad_out : array_like, shape of ``x``
        Gradient of the loss with respect to the forward output y.
    x : array_like, shape (N, C, *spatial)
        The forward pass's input.
    mean, rstd : array_like, shape (N, G)
        The statistics :func:`group_norm` returned with ``return_stats=True``.
    num_groups : int, optional
        G; give exactly one of ``num_groups`` and ``group_size``.
    weight : array_like, shape (C,), optional
        The forward pass's weight (default 1).
    group_size : int, optional
        Channels per group, the alternative to ``num_groups``.
    num_threads : int, optional
        As in :func:`group_norm`; results are bitwise identical for every thread count.

    Returns
    -------
    grad_x : ndarray
        x's shape, in the result dtype of ``x`` (see :func:`group_norm`).
    grad_weight, grad_bias : ndarray, shape (C,)
        Always returned, also without ``weight``.

    Examples
    --------
    >>> import numpy as np, gncpu
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((2, 4, 3)).astype(np.float32)
    >>> y, mean, rstd = gncpu.group_norm(x, 2, return_stats=True)
    >>> dx, dw, db = gncpu.group_norm_backward(np.ones_like(y), x, mean, rstd, 2)
    >>> float(np.abs(dx).max()) < 1e-5, db.tolist()
    (True, [6.0, 6.0, 6.0, 6.0])
    """
    cdef cnp.ndarray arr, dyarr, x3, dy3, dx3, w, m, r, buf, gw, gb
    cdef Py_ssize_t N, C, S, G, chunks, xsN = 0, xsC = 0
    cdef int threads, typenum
    cdef Layout L
    arr, result, typenum = float_array(x, "x")
    dyarr, _, _ = float_array(grad_out, "grad_out")
    check_data(arr, &N, &C, &S)
    if (<object>dyarr).shape != (<object>arr).shape:
        raise ValueError(f"grad_out has shape {(<object>dyarr).shape}; expected x's shape "
                         f"{(<object>arr).shape}")
    G = resolve_groups(num_groups, group_size, C)
    m = stats_array(mean, "mean", N, G, typenum)
    r = stats_array(rstd, "rstd", N, G, typenum)
    w = channel_vector(weight, "weight", C, typenum)
    x3 = kernel_input(arr, typenum, &xsN, &xsC)
    L = make_layout(N, C, S, G, xsN, xsC, True)
    dy3 = kernel_input(dyarr, typenum, &L.dsN, &L.dsC)
    dx3 = empty_like_c(arr, typenum)
    L.ysN = C * S
    L.ysC = S
    threads = plan_threads(num_threads, N * C * S)
    cdef bint split = threads > 1 and N * G < 2 * threads
    chunks = N * C * L.row_chunks if split else 0
    # Scratch: db and ds (N * C each), group terms (2 per pair), chunk partials (split only).
    buf = np.empty(2 * N * C + 2 * N * G + 2 * chunks, dtype=F64)
    cdef double* db = <double*>ptr(buf)
    cdef double* ds = db + N * C
    cdef double* terms = ds + N * C
    cdef double* parts = terms + 2 * N * G
    gw = cnp.PyArray_EMPTY(1, cnp.PyArray_DIMS(arr) + 1, typenum, 0)
    gb = cnp.PyArray_EMPTY(1, cnp.PyArray_DIMS(arr) + 1, typenum, 0)
    cdef char* dyp = ptr(dy3)
    cdef char* xp = ptr(x3)
    cdef char* dxp = ptr(dx3)
    cdef char* mp = ptr(m)
    cdef char* rp = ptr(r)
    cdef char* wp = ptr(w)
    cdef char* gwp = ptr(gw)
    cdef char* gbp = ptr(gb)
    with nogil:
        if typenum == cnp.NPY_FLOAT32:
            if split:
                backward_split(<const float*>dyp, <const float*>xp, <float*>dxp, &L,
                               <float*>mp, <float*>rp, <float*>wp, parts, db, ds, terms, threads)
            else:
                backward_fused(<const float*>dyp, <const float*>xp, <float*>dxp, &L,
                               <float*>mp, <float*>rp, <float*>wp, db, ds, terms, threads)
            param_grads(&L, <float*>rp, db, ds, <float*>gwp, <float*>gbp)
        else:
            if split:
                backward_split(<const double*>dyp, <const double*>xp, <double*>dxp, &L,
                               <double*>mp, <double*>rp, <double*>wp, parts, db, ds, terms,
                               threads)
            else:
                backward_fused(<const double*>dyp, <const double*>xp, <double*>dxp, &L,
                               <double*>mp, <double*>rp, <double*>wp, db, ds, terms, threads)
            param_grads(&L, <double*>rp, db, ds, <double*>gwp, <double*>gbp)
    if result is F16:
        return dx3.astype(F16), gw.astype(F16), gb.astype(F16)
    return dx3, gw, gb


cdef cnp.ndarray stats_array(object obj, str name, Py_ssize_t N, Py_ssize_t G, int typenum):
    """mean or rstd as a contiguous (N, G) array of type typenum."""
    cdef cnp.ndarray arr = obj if type(obj) is np.ndarray else np.asarray(obj)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} has dtype {arr.dtype}: expected floating point")
    if (<object>arr).shape != (N, G):
        raise ValueError(f"{name} has shape {(<object>arr).shape}; expected (N, G) = ({N}, {G})")
    return cnp.PyArray_FROMANY(arr, typenum, 2, 2, cnp.NPY_ARRAY_CARRAY | cnp.NPY_ARRAY_FORCECAST)
