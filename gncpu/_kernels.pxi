# Group Norm kernels and the public functions that validate arguments and call them.
#
# This file is compiled twice (see setup.py): `_kernels_baseline.pyx` with the compiler's
# default flags, which runs on any CPU of the architecture, and, on x86-64,
# `_kernels_x86_64_v3.pyx` with AVX2/FMA/F16C; `gncpu/__init__.py` imports the one this
# CPU can run. Both include this file, so there is a single source of truth.
#
# Shapes: x is viewed as (N, C, S) with S = prod(spatial) and unit stride along S; channel
# c belongs to group g = c // Cg with Cg = C / G. Statistics are per (n, g) "pair".
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

cdef enum:
    # Elements per chunk: small enough that a chunk stays in L1 between its two passes.
    CHUNK = 2048
    # Independent accumulators per chunk: enough vector registers to hide add latency.
    LANES = 32
    HALF_LANES = 16
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


cdef inline double lane_total(const real* acc) noexcept nogil:
    """sum(acc[0:LANES]) in a fixed pairwise order, in float64."""
    cdef double half[HALF_LANES]
    cdef int j, width = HALF_LANES
    for j in range(width):
        half[j] = <double>acc[j] + <double>acc[j + width]
    while width > 1:
        width //= 2
        for j in range(width):
            half[j] = half[j] + half[j + width]
    return half[0]


cdef inline void chunk_moments(const real* x, Py_ssize_t n, Moments* out) noexcept nogil:
    """Moments of x[0:n], n <= CHUNK, by the corrected two-pass algorithm.

    Pass 1: shift m = sum(x) / n. Pass 2: d = x - m,
    mean = m + sum(d) / n,  M2 = sum(d^2) - sum(d)^2 / n.
    Each pass keeps LANES independent accumulators (lane j takes x[i] with i % LANES == j),
    so the loops vectorize without reassociating any sum.
    """
    cdef real acc[LANES]
    cdef real dev[LANES]
    cdef real sq[LANES]
    cdef Py_ssize_t i, j, full = n - n % LANES
    cdef real m, d
    cdef double sum_d
    for j in range(LANES):
        acc[j] = 0
        dev[j] = 0
        sq[j] = 0
    for i in range(0, full, 32):  # LANES
        for j in range(LANES):
            acc[j] = acc[j] + x[i + j]
    for i in range(full, n):
        acc[i - full] = acc[i - full] + x[i]
    m = <real>(lane_total(acc) / n)
    for i in range(0, full, 32):  # LANES
        for j in range(LANES):
            d = x[i + j] - m
            dev[j] = dev[j] + d
            sq[j] = sq[j] + d * d
    for i in range(full, n):
        d = x[i] - m
        dev[i - full] = dev[i - full] + d
        sq[i - full] = sq[i - full] + d * d
    sum_d = lane_total(dev)
    out.n = <double>n
    out.mean = <double>m + sum_d / n
    out.m2 = lane_total(sq) - sum_d * sum_d / n


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
# Geometry: how a (sample, group) pair of x is cut into runs and chunks.


cdef struct Layout:
    Py_ssize_t N, C, S, G, Cg
    Py_ssize_t xsN, xsC         # element strides of x along N and C (S has stride 1)
    Py_ssize_t ysN, ysC         # same for the output
    Py_ssize_t rows             # runs per group: 1 if the group is contiguous, else Cg
    Py_ssize_t row_len          # Cg * S if contiguous, else S
    Py_ssize_t row_chunks       # ceil(row_len / CHUNK)


cdef Layout make_layout(Py_ssize_t N, Py_ssize_t C, Py_ssize_t S, Py_ssize_t G,
                        Py_ssize_t xsN, Py_ssize_t xsC, Py_ssize_t ysN, Py_ssize_t ysC,
                        bint per_channel) noexcept:
    cdef Layout L
    L.N = N; L.C = C; L.S = S; L.G = G; L.Cg = C // G
    L.xsN = xsN; L.xsC = xsC; L.ysN = ysN; L.ysC = ysC
    if xsC == S and not per_channel:
        L.rows = 1
        L.row_len = L.Cg * S
    else:
        L.rows = L.Cg
        L.row_len = S
    L.row_chunks = (L.row_len + CHUNK - 1) // CHUNK
    return L


cdef inline const real* pair_x(const real* x, const Layout* L, Py_ssize_t p) noexcept nogil:
    """First element of pair p = n * G + g of x."""
    return x + (p // L.G) * L.xsN + (p % L.G) * L.Cg * L.xsC


cdef inline void pair_chunk_moments(const real* x, const Layout* L, Py_ssize_t p,
                                    Py_ssize_t k, Moments* out) noexcept nogil:
    """Moments of chunk k (row-major over rows, then chunks) of pair p."""
    cdef Py_ssize_t r = k // L.row_chunks
    cdef Py_ssize_t start = (k % L.row_chunks) * CHUNK
    cdef Py_ssize_t n = min(CHUNK, L.row_len - start)
    chunk_moments(pair_x(x, L, p) + r * L.xsC + start, n, out)


# ---------------------------------------------------------------------------------------
# Forward


cdef inline void affine_segment(const real* x, real* y, Py_ssize_t n, real m, real a,
                                real b) noexcept nogil:
    """y = (x - m) * a + b over n contiguous elements."""
    cdef Py_ssize_t i
    for i in range(n):
        y[i] = (x[i] - m) * a + b


cdef inline void normalize_span(const real* x, real* y, const Layout* L, Py_ssize_t p,
                                Py_ssize_t r, Py_ssize_t start, Py_ssize_t n,
                                const double* mean, const double* rstd,
                                const double* weight, const double* bias) noexcept nogil:
    """Write y for elements [start, start + n) of row r of pair p.

    Per channel c: a_c = weight_c * rstd and y = (x - mean) * a_c + bias_c. Centring
    before scaling keeps full precision when |mean| >> std, and gives exactly bias_c for
    a constant group. A contiguous row crosses channel boundaries every S elements.
    """
    cdef Py_ssize_t n_idx = p // L.G
    cdef Py_ssize_t c = (p % L.G) * L.Cg + (start // L.S if L.rows == 1 else r)
    cdef Py_ssize_t s = start % L.S if L.rows == 1 else start
    cdef Py_ssize_t seg
    cdef double a
    while n > 0:
        seg = min(n, L.S - s)
        a = (1.0 if weight == NULL else weight[c]) * rstd[p]
        affine_segment(x + n_idx * L.xsN + c * L.xsC + s, y + n_idx * L.ysN + c * L.ysC + s,
                       seg, <real>mean[p], <real>a, <real>(0.0 if bias == NULL else bias[c]))
        n -= seg
        c += 1
        s = 0


cdef inline void normalize_chunk(const real* x, real* y, const Layout* L, Py_ssize_t p,
                                 Py_ssize_t k, const double* mean, const double* rstd,
                                 const double* weight, const double* bias) noexcept nogil:
    """Write y for chunk k of pair p (numbered as in pair_chunk_moments)."""
    cdef Py_ssize_t start = (k % L.row_chunks) * CHUNK
    normalize_span(x, y, L, p, k // L.row_chunks, start, min(CHUNK, L.row_len - start),
                   mean, rstd, weight, bias)


cdef inline void finish_stats(Moments* m, double eps, Py_ssize_t p,
                              double* mean, double* rstd) noexcept nogil:
    """mean and rstd = 1 / sqrt(M2 / n + eps) of pair p from its merged moments."""
    if m.n == 0:
        mean[p] = NAN
        rstd[p] = NAN
    else:
        mean[p] = m.mean
        rstd[p] = 1.0 / sqrt(m.m2 / m.n + eps)


cdef void forward_pair(const real* x, real* y, const Layout* L, Py_ssize_t p, double eps,
                       const double* weight, const double* bias,
                       double* mean, double* rstd) noexcept nogil:
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
                        const double* weight, const double* bias,
                        double* mean, double* rstd, int threads) noexcept nogil:
    """One task per pair."""
    cdef Py_ssize_t p
    for p in prange(L.N * L.G, schedule='static', num_threads=threads):
        forward_pair(x, y, L, p, eps, weight, bias, mean, rstd)


cdef void forward_split(const real* x, real* y, const Layout* L, double eps,
                        const double* weight, const double* bias,
                        double* mean, double* rstd, Moments* parts, int threads) noexcept nogil:
    """Few pairs, many threads: chunk moments in parallel, merged per pair in the same
    order as forward_fused, then outputs in parallel over chunks."""
    cdef Py_ssize_t i, p, k
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
        normalize_chunk(x, y, L, i // chunks, i % chunks, mean, rstd, weight, bias)


# ---------------------------------------------------------------------------------------
# Backward


cdef inline void channel_grad_chunk(const real* dy, const real* x, Py_ssize_t n, real m,
                                    double* sum_dy, double* sum_dy_xc) noexcept nogil:
    """sum(dy) and sum(dy * (x - m)) over n <= CHUNK contiguous elements, in LANES lanes."""
    cdef real a[LANES]
    cdef real b[LANES]
    cdef Py_ssize_t i, j, full = n - n % LANES
    for j in range(LANES):
        a[j] = 0
        b[j] = 0
    for i in range(0, full, 32):  # LANES
        for j in range(LANES):
            a[j] = a[j] + dy[i + j]
            b[j] = b[j] + dy[i + j] * (x[i + j] - m)
    for i in range(full, n):
        a[i - full] = a[i - full] + dy[i]
        b[i - full] = b[i - full] + dy[i] * (x[i] - m)
    sum_dy[0] = lane_total(a)
    sum_dy_xc[0] = lane_total(b)


cdef inline void grad_x_segment(const real* dy, const real* x, real* dx, Py_ssize_t n,
                                real a, real b, real m, real c) noexcept nogil:
    """dx = a * dy + b * (x - m) + c over n contiguous elements."""
    cdef Py_ssize_t i
    for i in range(n):
        dx[i] = a * dy[i] + b * (x[i] - m) + c


cdef struct GradLayout:
    Layout x                    # x and dx (rows are always channels: rows = Cg)
    Py_ssize_t dsN, dsC         # element strides of grad_out


cdef inline void grad_chunk_sums(const real* dy, const real* x, const GradLayout* L,
                                 const double* mean, Py_ssize_t i, double* out) noexcept nogil:
    """Partial sums of chunk i = (n * C + c) * row_chunks + j: out = [sum dy, sum dy (x - mean)]."""
    cdef Py_ssize_t j = i % L.x.row_chunks
    cdef Py_ssize_t nc = i // L.x.row_chunks
    cdef Py_ssize_t n = nc // L.x.C, c = nc % L.x.C
    cdef Py_ssize_t start = j * CHUNK
    channel_grad_chunk(dy + n * L.dsN + c * L.dsC + start, x + n * L.x.xsN + c * L.x.xsC + start,
                       min(CHUNK, L.x.S - start), <real>mean[n * L.x.G + c // L.x.Cg],
                       &out[0], &out[1])


cdef inline void grad_x_chunk(const real* dy, const real* x, real* dx, const GradLayout* L,
                              const double* mean, const double* rstd, const double* weight,
                              const double* group_terms, Py_ssize_t i) noexcept nogil:
    """grad_x for chunk i (same numbering as grad_chunk_sums)."""
    cdef Py_ssize_t j = i % L.x.row_chunks
    cdef Py_ssize_t nc = i // L.x.row_chunks
    cdef Py_ssize_t n = nc // L.x.C, c = nc % L.x.C
    cdef Py_ssize_t p = n * L.x.G + c // L.x.Cg
    cdef Py_ssize_t start = j * CHUNK
    cdef double a = rstd[p] * (1.0 if weight == NULL else weight[c])
    grad_x_segment(dy + n * L.dsN + c * L.dsC + start, x + n * L.x.xsN + c * L.x.xsC + start,
                   dx + n * L.x.ysN + c * L.x.ysC + start, min(CHUNK, L.x.S - start),
                   <real>a, <real>group_terms[2 * p], <real>mean[p], <real>group_terms[2 * p + 1])


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


cdef inline void group_terms_of(const GradLayout* L, Py_ssize_t p, const double* rstd,
                                const double* weight, const double* db, const double* ds,
                                double* terms) noexcept nogil:
    """For pair p with M = Cg * S elements and dxhat = weight_c * dy:
    m1 = sum(dxhat) / M,  m2 = sum(dxhat * xhat) / M = rstd * sum_c weight_c ds_c / M;
    grad_x = rstd * (dxhat - m1 - xhat * m2) = a_c * dy + b * (x - mean) + c with
    b = -rstd^2 * m2 and c = -rstd * m1, stored as terms[2p], terms[2p + 1]."""
    cdef Py_ssize_t c, c0 = (p // L.x.G) * L.x.C + (p % L.x.G) * L.x.Cg
    cdef double w, s1 = 0, s2 = 0, M = <double>(L.x.Cg * L.x.S)
    for c in range(L.x.Cg):
        w = 1.0 if weight == NULL else weight[(p % L.x.G) * L.x.Cg + c]
        s1 = s1 + w * db[c0 + c]
        s2 = s2 + w * ds[c0 + c]
    terms[2 * p] = -rstd[p] * rstd[p] * (rstd[p] * s2 / M)
    terms[2 * p + 1] = -rstd[p] * (s1 / M)


cdef void backward_pair(const real* dy, const real* x, real* dx, const GradLayout* L,
                        Py_ssize_t p, const double* mean, const double* rstd,
                        const double* weight, double* parts, double* db, double* ds,
                        double* terms) noexcept nogil:
    """Pair p: per-channel sums, the pair's two terms, then grad_x, its data still in cache."""
    cdef Py_ssize_t c, k
    cdef Py_ssize_t chunks = L.x.row_chunks
    cdef Py_ssize_t nc0 = (p // L.x.G) * L.x.C + (p % L.x.G) * L.x.Cg
    for k in range(nc0 * chunks, (nc0 + L.x.Cg) * chunks):
        grad_chunk_sums(dy, x, L, mean, k, &parts[2 * k])
    for c in range(nc0, nc0 + L.x.Cg):
        channel_sums(parts, chunks, c, db, ds)
    group_terms_of(L, p, rstd, weight, db, ds, terms)
    for k in range(nc0 * chunks, (nc0 + L.x.Cg) * chunks):
        grad_x_chunk(dy, x, dx, L, mean, rstd, weight, terms, k)


cdef void backward_fused(const real* dy, const real* x, real* dx, const GradLayout* L,
                         const double* mean, const double* rstd, const double* weight,
                         double* parts, double* db, double* ds, double* terms,
                         int threads) noexcept nogil:
    """One task per pair."""
    cdef Py_ssize_t p
    for p in prange(L.x.N * L.x.G, schedule='static', num_threads=threads):
        backward_pair(dy, x, dx, L, p, mean, rstd, weight, parts, db, ds, terms)


cdef void backward_split(const real* dy, const real* x, real* dx, const GradLayout* L,
                         const double* mean, const double* rstd, const double* weight,
                         double* parts, double* db, double* ds, double* terms,
                         int threads) noexcept nogil:
    """Few pairs, many threads: the same arithmetic as backward_fused, each phase
    parallel over chunks."""
    cdef Py_ssize_t i, p
    cdef Py_ssize_t items = L.x.N * L.x.C * L.x.row_chunks
    for i in prange(items, schedule='static', num_threads=threads):
        grad_chunk_sums(dy, x, L, mean, i, &parts[2 * i])
    for i in range(L.x.N * L.x.C):
        channel_sums(parts, L.x.row_chunks, i, db, ds)
    for p in range(L.x.N * L.x.G):
        group_terms_of(L, p, rstd, weight, db, ds, terms)
    for i in prange(items, schedule='static', num_threads=threads):
        grad_x_chunk(dy, x, dx, L, mean, rstd, weight, terms, i)


cdef void param_grads(const GradLayout* L, const double* rstd, const double* db,
                      const double* ds, real* grad_weight, real* grad_bias) noexcept nogil:
    """grad_bias_c = sum_n db[n, c];  grad_weight_c = sum_n rstd[n, g] * ds[n, c]
    (sum(dy * xhat) over the channel), summed over n in order."""
    cdef Py_ssize_t n, c
    cdef double gw, gb
    for c in range(L.x.C):
        gw = 0
        gb = 0
        for n in range(L.x.N):
            gb = gb + db[n * L.x.C + c]
            gw = gw + rstd[n * L.x.G + c // L.x.Cg] * ds[n * L.x.C + c]
        grad_weight[c] = <real>gw
        grad_bias[c] = <real>gb


# ---------------------------------------------------------------------------------------
# Argument handling. Kept in Cython: a tiny call must cost microseconds, not tens of them.

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
    if num_groups is not None:
        k = as_int(num_groups, "num_groups")
        if k <= 0 or C % k:
            raise ValueError(
                (f"num_groups={k} must be positive" if k <= 0 else
                 f"C={C} is not divisible by num_groups={k}")
                + f"; valid num_groups for C={C}: {divisors(C)}")
        return k
    k = as_int(group_size, "group_size")
    if k <= 0 or C % k:
        raise ValueError(
            (f"group_size={k} must be positive" if k <= 0 else
             f"C={C} is not divisible by group_size={k}")
            + f"; valid group sizes for C={C}: {divisors(C)}")
    return C // k


cdef str divisors(Py_ssize_t C):
    return ", ".join([str(d) for d in range(1, C + 1) if C % d == 0])


cdef tuple float_array(object obj, str name):
    """(array, result dtype, compute dtype) for a data argument.

    float32 and float64 compute natively; float16 computes in float32 and returns
    float16; integers and booleans compute and return float64 (as numpy.mean does);
    other floating types compute and return float64. Anything else is a TypeError.
    """
    cdef cnp.ndarray arr = obj if type(obj) is np.ndarray else np.asarray(obj)
    dt = arr.dtype
    if dt == F32:
        return arr, F32, F32
    if dt == F64:
        return arr, F64, F64
    kind = dt.kind
    if kind == "f" and dt.itemsize == 2:
        return arr, F16, F32
    if kind == "f" or kind in "iub":
        return arr, (F32 if dt.itemsize == 4 and kind == "f" else F64), \
            (F32 if dt.itemsize == 4 and kind == "f" else F64)
    raise TypeError(f"{name} has dtype {dt}: gncpu normalizes real numbers (floating "
                    "point; integers and booleans are converted to float64)")


cdef bint kernel_ready(cnp.ndarray v):
    """Whether a (N, C, S) array can be handed to the kernels as it is: aligned, strides
    in whole elements, unit stride along S."""
    cdef Py_ssize_t item = v.itemsize
    return (cnp.PyArray_ISALIGNED(v) and v.strides[0] % item == 0 and v.strides[1] % item == 0
            and (v.shape[2] <= 1 or v.strides[2] == item))


cdef cnp.ndarray kernel_input(cnp.ndarray arr, object compute, Py_ssize_t N, Py_ssize_t C,
                              Py_ssize_t S):
    """arr as a (N, C, S) array of dtype compute that the kernels can read; a view when
    possible, a copy otherwise (the caller's array is never written)."""
    cdef cnp.ndarray v
    if arr.dtype != compute:
        arr = arr.astype(compute)
    v = arr.reshape(N, C, S)
    if not kernel_ready(v):
        v = np.ascontiguousarray(v)
    return v


cdef cnp.ndarray channel_vector(object obj, str name, Py_ssize_t C):
    """A (C,) parameter as a contiguous float64 array, or None."""
    if obj is None:
        return None
    arr = obj if type(obj) is np.ndarray else np.asarray(obj)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"{name} has dtype {arr.dtype}: expected real numbers")
    if arr.ndim != 1 or arr.shape[0] != C:
        raise ValueError(f"{name} has shape {arr.shape}; expected (C,) = ({C},)")
    return np.ascontiguousarray(arr, dtype=F64)


cdef double check_eps(object eps) except? -1:
    cdef double e
    try:
        e = eps
    except TypeError:
        raise TypeError(f"eps={eps!r} must be a real number") from None
    if not (e >= 0 and e < float("inf")):
        raise ValueError(f"eps={eps!r} must be finite and non-negative")
    return e


cdef object output_view(object out, cnp.ndarray x3, tuple shape, object result):
    """out as a (N, C, S) array the kernel may write directly, or None when the kernel
    must write a temporary that is copied into out afterwards."""
    cdef cnp.ndarray v
    if type(out) is not np.ndarray and not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != shape:
        raise ValueError(f"out has shape {out.shape}; expected x's shape {shape}")
    if out.dtype != result:
        raise ValueError(f"out has dtype {out.dtype}; expected {result} for this x")
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    if result != x3.dtype:
        return None
    view = out.view()
    try:
        view.shape = (x3.shape[0], x3.shape[1], x3.shape[2])  # fails rather than copy
    except AttributeError:
        return None
    v = view
    if not kernel_ready(v):
        return None
    if np.may_share_memory(v, x3) and not (
            cnp.PyArray_DATA(v) == cnp.PyArray_DATA(x3) and v.strides == x3.strides):
        return None
    return v


cdef inline Py_ssize_t elem_stride(cnp.ndarray a, int axis):
    return a.strides[axis] // a.itemsize


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
        Per-channel scale (gamma, default 1) and shift (beta, default 0).
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
        Same shape as ``x``. With ``return_stats``, the tuple ``(y, mean, rstd)``.

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
    a sample's output is bitwise the same alone or inside any batch.

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
    cdef cnp.ndarray arr, x3, y3, w, b, mean, rstd, parts
    cdef Py_ssize_t N, C, S, G, items
    cdef int threads
    cdef double e
    cdef Layout L
    arr, result, compute = float_array(x, "x")
    shape = (<object>arr).shape
    if arr.ndim < 2:
        raise ValueError(f"x has shape {shape}; expected (N, C, *spatial) with at least 2 "
                         "dimensions")
    N = shape[0]
    C = shape[1]
    S = cnp.PyArray_MultiplyList(arr.shape + 2, arr.ndim - 2)
    G = resolve_groups(num_groups, group_size, C)
    w = channel_vector(weight, "weight", C)
    b = channel_vector(bias, "bias", C)
    e = check_eps(eps)
    x3 = kernel_input(arr, compute, N, C, S)
    target = None
    if out is not None:
        target = output_view(out, x3, shape, result)
    y3 = target if target is not None else np.empty((N, C, S), dtype=compute)
    mean = np.empty((N, G), dtype=F64)
    rstd = np.empty((N, G), dtype=F64)
    threads = plan_threads(num_threads, N * C * S)
    L = make_layout(N, C, S, G, elem_stride(x3, 0), elem_stride(x3, 1),
                    elem_stride(y3, 0), elem_stride(y3, 1), False)
    cdef const double* wp = NULL if w is None else <const double*>cnp.PyArray_DATA(w)
    cdef const double* bp = NULL if b is None else <const double*>cnp.PyArray_DATA(b)
    cdef double* mp = <double*>cnp.PyArray_DATA(mean)
    cdef double* rp = <double*>cnp.PyArray_DATA(rstd)
    cdef Moments* pp = NULL
    if threads > 1 and N * G < 2 * threads:
        items = N * G * L.rows * L.row_chunks
        parts = np.empty(3 * items, dtype=F64)
        pp = <Moments*>cnp.PyArray_DATA(parts)
    if compute is F32:
        with nogil:
            if pp == NULL:
                forward_fused(<const float*>cnp.PyArray_DATA(x3), <float*>cnp.PyArray_DATA(y3),
                              &L, e, wp, bp, mp, rp, threads)
            else:
                forward_split(<const float*>cnp.PyArray_DATA(x3), <float*>cnp.PyArray_DATA(y3),
                              &L, e, wp, bp, mp, rp, pp, threads)
    else:
        with nogil:
            if pp == NULL:
                forward_fused(<const double*>cnp.PyArray_DATA(x3), <double*>cnp.PyArray_DATA(y3),
                              &L, e, wp, bp, mp, rp, threads)
            else:
                forward_split(<const double*>cnp.PyArray_DATA(x3), <double*>cnp.PyArray_DATA(y3),
                              &L, e, wp, bp, mp, rp, pp, threads)
    if out is not None:
        if target is None:
            np.copyto(out, y3.reshape(shape), casting="unsafe")
        y = out
    else:
        y = y3.reshape(shape) if result is compute else y3.reshape(shape).astype(result)
    if not return_stats:
        return y
    stats = F64 if compute is F64 else F32
    return y, mean.astype(stats, copy=False), rstd.astype(stats, copy=False)


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
        As in :func:`group_norm`.

    Returns
    -------
    grad_x : ndarray
        Shape and dtype of ``x``'s result type (see :func:`group_norm`).
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
    cdef Py_ssize_t N, C, S, G, chunks
    cdef int threads
    cdef GradLayout L
    arr, result, compute = float_array(x, "x")
    dyarr, _, _ = float_array(grad_out, "grad_out")
    shape = (<object>arr).shape
    if arr.ndim < 2:
        raise ValueError(f"x has shape {shape}; expected (N, C, *spatial) with at least 2 "
                         "dimensions")
    if (<object>dyarr).shape != shape:
        raise ValueError(f"grad_out has shape {(<object>dyarr).shape}; expected x's shape {shape}")
    N = shape[0]
    C = shape[1]
    S = cnp.PyArray_MultiplyList(arr.shape + 2, arr.ndim - 2)
    G = resolve_groups(num_groups, group_size, C)
    m = stats_array(mean, "mean", N, G)
    r = stats_array(rstd, "rstd", N, G)
    w = channel_vector(weight, "weight", C)
    x3 = kernel_input(arr, compute, N, C, S)
    dy3 = kernel_input(dyarr, compute, N, C, S)
    dx3 = np.empty((N, C, S), dtype=compute)
    threads = plan_threads(num_threads, N * C * S)
    L.x = make_layout(N, C, S, G, elem_stride(x3, 0), elem_stride(x3, 1),
                      elem_stride(dx3, 0), elem_stride(dx3, 1), True)
    L.dsN = elem_stride(dy3, 0)
    L.dsC = elem_stride(dy3, 1)
    chunks = N * C * L.x.row_chunks
    # Scratch: chunk partials (2 per chunk), db and ds (N * C each), group terms (2 per pair).
    buf = np.empty(2 * chunks + 2 * N * C + 2 * N * G, dtype=F64)
    cdef double* parts = <double*>cnp.PyArray_DATA(buf)
    cdef double* db = parts + 2 * chunks
    cdef double* ds = db + N * C
    cdef double* terms = ds + N * C
    cdef const double* wp = NULL if w is None else <const double*>cnp.PyArray_DATA(w)
    cdef const double* mp = <const double*>cnp.PyArray_DATA(m)
    cdef const double* rp = <const double*>cnp.PyArray_DATA(r)
    cdef bint split = threads > 1 and N * G < 2 * threads
    gw = np.empty(C, dtype=compute)
    gb = np.empty(C, dtype=compute)
    if compute is F32:
        with nogil:
            if split:
                backward_split(<const float*>cnp.PyArray_DATA(dy3), <const float*>cnp.PyArray_DATA(x3),
                               <float*>cnp.PyArray_DATA(dx3), &L, mp, rp, wp, parts, db, ds, terms,
                               threads)
            else:
                backward_fused(<const float*>cnp.PyArray_DATA(dy3), <const float*>cnp.PyArray_DATA(x3),
                               <float*>cnp.PyArray_DATA(dx3), &L, mp, rp, wp, parts, db, ds, terms,
                               threads)
            param_grads(&L, rp, db, ds, <float*>cnp.PyArray_DATA(gw), <float*>cnp.PyArray_DATA(gb))
    else:
        with nogil:
            if split:
                backward_split(<const double*>cnp.PyArray_DATA(dy3), <const double*>cnp.PyArray_DATA(x3),
                               <double*>cnp.PyArray_DATA(dx3), &L, mp, rp, wp, parts, db, ds, terms,
                               threads)
            else:
                backward_fused(<const double*>cnp.PyArray_DATA(dy3), <const double*>cnp.PyArray_DATA(x3),
                               <double*>cnp.PyArray_DATA(dx3), &L, mp, rp, wp, parts, db, ds, terms,
                               threads)
            param_grads(&L, rp, db, ds, <double*>cnp.PyArray_DATA(gw), <double*>cnp.PyArray_DATA(gb))
    grad_x = dx3.reshape(shape)
    if result is not compute:
        return grad_x.astype(result), gw.astype(result), gb.astype(result)
    return grad_x, gw, gb


cdef cnp.ndarray stats_array(object obj, str name, Py_ssize_t N, Py_ssize_t G):
    """mean or rstd as a contiguous float64 (N, G) array."""
    arr = obj if type(obj) is np.ndarray else np.asarray(obj)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} has dtype {arr.dtype}: expected floating point")
    if arr.shape != (N, G):
        raise ValueError(f"{name} has shape {arr.shape}; expected (N, G) = ({N}, {G})")
    return np.ascontiguousarray(arr, dtype=F64)
