# Group Norm kernels and the public functions that validate arguments and call them.
#
# This file is compiled once per instruction set (see setup.py): `_kernels_baseline.pyx`
# with the compiler's default flags, which runs on any CPU of the architecture, and, on
# x86-64, `_kernels_x86_64_v3.pyx` with AVX2/FMA/F16C and `_kernels_x86_64_v4.pyx` with
# AVX-512 too; `gncpu/__init__.py` imports the widest one this CPU can run. All include
# this file, so there is a single source of truth.
#
# Shapes: x is read as (N, C, S) with S = prod(spatial). Channels-first arrays (NCHW) have
# unit stride along S; channels-last arrays (NHWC) have unit stride along C and are walked
# as S rows of C channels. Channel c belongs to group g = c // Cg with Cg = C / G.
# Statistics are per (n, g) "pair", numbered p = n * G + g.
#
# Data pointers are char* with a storage kind (float32, float64, float16, bfloat16); the
# arithmetic runs in the fused compute type `real` (float for all but float64). The
# innermost loops are in _simd.h.
#
# Determinism: a group's elements are cut into fixed chunks that depend only on the shape,
# layout and options, never on N or the thread count; chunk results are merged in a fixed
# order. Which thread computes a chunk never changes the arithmetic, so outputs are bitwise
# identical for any thread count and for a sample alone or in a batch.

from cython.parallel cimport prange, threadid
from libc.math cimport sqrt, NAN
from libc.stdint cimport uint16_t
cimport numpy as cnp
import operator
import numpy as np

cnp.import_array()

cdef extern from "Python.h":
    long long PyLong_AsLongLongAndOverflow(object, int*) except? -1
    const Py_ssize_t PY_SSIZE_T_MAX
    const Py_ssize_t PY_SSIZE_T_MIN

cdef extern from "_platform.h" nogil:
    int gn_openmp_enabled()
    int gn_max_threads()
    int gn_cpu_has_x86_64_v3()
    int gn_cpu_has_x86_64_v4()

cdef extern from "_simd.h" nogil:
    enum:
        GN_VBYTES
        GN_ACT_NONE
        GN_ACT_RELU
        GN_ACT_SILU
    void gn_halves_to_floats(const uint16_t* h, float* f, Py_ssize_t n)
    void gn_chunk_moments_f32(const float* x, Py_ssize_t n, double* mean, double* m2)
    void gn_chunk_moments_f64(const double* x, Py_ssize_t n, double* mean, double* m2)
    void gn_chunk_moments_f16(const uint16_t* x, Py_ssize_t n, double* mean, double* m2)
    void gn_chunk_moments_bf16(const uint16_t* x, Py_ssize_t n, double* mean, double* m2)
    void gn_stream_fence()
    bint gn_rows_run(Py_ssize_t C, Py_ssize_t xs, Py_ssize_t ys, Py_ssize_t lanes)
    void gn_add_f32(const float* x, const float* r, float* s, Py_ssize_t n)
    void gn_add_f64(const double* x, const double* r, double* s, Py_ssize_t n)
    void gn_add_f16(const uint16_t* x, const uint16_t* r, uint16_t* s, Py_ssize_t n)
    void gn_add_bf16(const uint16_t* x, const uint16_t* r, uint16_t* s, Py_ssize_t n)
    void gn_affine_f32(const float* x, float* y, Py_ssize_t n, float m, float a, float b, int act,
                       Py_ssize_t ahead, int stream)
    void gn_affine_f64(const double* x, double* y, Py_ssize_t n, double m, double a, double b,
                       int act, Py_ssize_t ahead, int stream)
    void gn_affine_f16(const uint16_t* x, uint16_t* y, Py_ssize_t n, float m, float a, float b,
                       int act, Py_ssize_t ahead, int stream)
    void gn_affine_bf16(const uint16_t* x, uint16_t* y, Py_ssize_t n, float m, float a, float b,
                        int act, Py_ssize_t ahead, int stream)
    void gn_pair_affine_f32(const float* x, float* y, Py_ssize_t Cg, Py_ssize_t S, Py_ssize_t xs,
                            Py_ssize_t ys, float m, double r, const float* w, const float* bias,
                            int act, Py_ssize_t ahead, int stream)
    void gn_pair_affine_f64(const double* x, double* y, Py_ssize_t Cg, Py_ssize_t S,
                            Py_ssize_t xs, Py_ssize_t ys, double m, double r, const double* w,
                            const double* bias, int act, Py_ssize_t ahead, int stream)
    void gn_pair_affine_f16(const uint16_t* x, uint16_t* y, Py_ssize_t Cg, Py_ssize_t S,
                            Py_ssize_t xs, Py_ssize_t ys, float m, double r, const float* w,
                            const float* bias, int act, Py_ssize_t ahead, int stream)
    void gn_pair_affine_bf16(const uint16_t* x, uint16_t* y, Py_ssize_t Cg, Py_ssize_t S,
                             Py_ssize_t xs, Py_ssize_t ys, float m, double r, const float* w,
                             const float* bias, int act, Py_ssize_t ahead, int stream)
    void gn_grad_sums_f32(const float* dy, const float* x, Py_ssize_t n, float m, float a,
                          float b, int act, float* gs, double* out)
    void gn_grad_sums_f64(const double* dy, const double* x, Py_ssize_t n, double m, double a,
                          double b, int act, double* gs, double* out)
    void gn_grad_sums_f16(const uint16_t* dy, const uint16_t* x, Py_ssize_t n, float m, float a,
                          float b, int act, uint16_t* gs, double* out)
    void gn_grad_sums_bf16(const uint16_t* dy, const uint16_t* x, Py_ssize_t n, float m,
                           float a, float b, int act, uint16_t* gs, double* out)
    void gn_grad_x_f32(const float* dy, const float* x, float* dx, Py_ssize_t n, float m,
                       float a, float b, float c1, float c0, int act, int stream)
    void gn_grad_x_f64(const double* dy, const double* x, double* dx, Py_ssize_t n, double m,
                       double a, double b, double c1, double c0, int act, int stream)
    void gn_grad_x_f16(const uint16_t* dy, const uint16_t* x, uint16_t* dx, Py_ssize_t n,
                       float m, float a, float b, float c1, float c0, int act, int stream)
    void gn_grad_x_bf16(const uint16_t* dy, const uint16_t* x, uint16_t* dx, Py_ssize_t n,
                        float m, float a, float b, float c1, float c0, int act, int stream)
    void gn_pair_grad_sums_f32(const float* dy, const float* x, Py_ssize_t Cg,
        Py_ssize_t S, Py_ssize_t dys, Py_ssize_t xs, Py_ssize_t chunk, Py_ssize_t span,
        float m, double r,
        const float* w, const float* bias, int act, float* gs, Py_ssize_t gss,
        double* db, double* ds)
    void gn_pair_grad_x_f32(const float* dy, const float* x, float* dx, Py_ssize_t Cg,
        Py_ssize_t S, Py_ssize_t dys, Py_ssize_t xs, Py_ssize_t dxs, float m, double r,
        const float* w, const float* bias, float c1, float c0, int act, int stream)
    void gn_pair_grad_sums_f64(const double* dy, const double* x, Py_ssize_t Cg,
        Py_ssize_t S, Py_ssize_t dys, Py_ssize_t xs, Py_ssize_t chunk, Py_ssize_t span,
        double m, double r,
        const double* w, const double* bias, int act, double* gs, Py_ssize_t gss,
        double* db, double* ds)
    void gn_pair_grad_x_f64(const double* dy, const double* x, double* dx, Py_ssize_t Cg,
        Py_ssize_t S, Py_ssize_t dys, Py_ssize_t xs, Py_ssize_t dxs, double m, double r,
        const double* w, const double* bias, double c1, double c0, int act, int stream)
    void gn_pair_grad_sums_f16(const uint16_t* dy, const uint16_t* x, Py_ssize_t Cg,
        Py_ssize_t S, Py_ssize_t dys, Py_ssize_t xs, Py_ssize_t chunk, Py_ssize_t span,
        float m, double r,
        const float* w, const float* bias, int act, uint16_t* gs, Py_ssize_t gss,
        double* db, double* ds)
    void gn_pair_grad_x_f16(const uint16_t* dy, const uint16_t* x, uint16_t* dx, Py_ssize_t Cg,
        Py_ssize_t S, Py_ssize_t dys, Py_ssize_t xs, Py_ssize_t dxs, float m, double r,
        const float* w, const float* bias, float c1, float c0, int act, int stream)
    void gn_pair_grad_sums_bf16(const uint16_t* dy, const uint16_t* x, Py_ssize_t Cg,
        Py_ssize_t S, Py_ssize_t dys, Py_ssize_t xs, Py_ssize_t chunk, Py_ssize_t span,
        float m, double r,
        const float* w, const float* bias, int act, uint16_t* gs, Py_ssize_t gss,
        double* db, double* ds)
    void gn_pair_grad_x_bf16(const uint16_t* dy, const uint16_t* x, uint16_t* dx, Py_ssize_t Cg,
        Py_ssize_t S, Py_ssize_t dys, Py_ssize_t xs, Py_ssize_t dxs, float m, double r,
        const float* w, const float* bias, float c1, float c0, int act, int stream)
    void gn_merge_channels(double* run_mean, double* run_m2, const double* mean,
                           const double* m2, Py_ssize_t n, double f, double h)
    void gn_rows_moments_f32(const float* x, Py_ssize_t rows, Py_ssize_t C, Py_ssize_t stride,
                             Py_ssize_t ahead, double* mean, double* m2)
    void gn_rows_moments_f64(const double* x, Py_ssize_t rows, Py_ssize_t C, Py_ssize_t stride,
                             Py_ssize_t ahead, double* mean, double* m2)
    void gn_rows_moments_f16(const uint16_t* x, Py_ssize_t rows, Py_ssize_t C,
                             Py_ssize_t stride, Py_ssize_t ahead, double* mean, double* m2)
    void gn_rows_moments_bf16(const uint16_t* x, Py_ssize_t rows, Py_ssize_t C,
                              Py_ssize_t stride, Py_ssize_t ahead, double* mean, double* m2)
    void gn_rows_affine_f32(const float* x, float* y, Py_ssize_t rows, Py_ssize_t C,
                            Py_ssize_t xs, Py_ssize_t ys, const float* m, const float* a,
                            const float* b, int act, Py_ssize_t ahead,
                            int stream)
    void gn_rows_affine_f64(const double* x, double* y, Py_ssize_t rows, Py_ssize_t C,
                            Py_ssize_t xs, Py_ssize_t ys, const double* m, const double* a,
                            const double* b, int act, Py_ssize_t ahead,
                            int stream)
    void gn_rows_affine_f16(const uint16_t* x, uint16_t* y, Py_ssize_t rows, Py_ssize_t C,
                            Py_ssize_t xs, Py_ssize_t ys, const float* m, const float* a,
                            const float* b, int act, Py_ssize_t ahead,
                            int stream)
    void gn_rows_affine_bf16(const uint16_t* x, uint16_t* y, Py_ssize_t rows, Py_ssize_t C,
                             Py_ssize_t xs, Py_ssize_t ys, const float* m, const float* a,
                             const float* b, int act, Py_ssize_t ahead,
                            int stream)
    void gn_rows_grad_sums_f32(const float* dy, const float* x, Py_ssize_t rows, Py_ssize_t C,
                               Py_ssize_t dys, Py_ssize_t xs, const float* m, const float* a,
                               const float* b, int act, float* gs, Py_ssize_t gss,
                               double* db, double* ds)
    void gn_rows_grad_sums_f64(const double* dy, const double* x, Py_ssize_t rows,
                               Py_ssize_t C, Py_ssize_t dys, Py_ssize_t xs, const double* m,
                               const double* a, const double* b, int act, double* gs,
                               Py_ssize_t gss, double* db, double* ds)
    void gn_rows_grad_sums_f16(const uint16_t* dy, const uint16_t* x, Py_ssize_t rows,
                               Py_ssize_t C, Py_ssize_t dys, Py_ssize_t xs, const float* m,
                               const float* a, const float* b, int act, uint16_t* gs,
                               Py_ssize_t gss, double* db, double* ds)
    void gn_rows_grad_sums_bf16(const uint16_t* dy, const uint16_t* x, Py_ssize_t rows,
                                Py_ssize_t C, Py_ssize_t dys, Py_ssize_t xs, const float* m,
                                const float* a, const float* b, int act, uint16_t* gs,
                                Py_ssize_t gss, double* db, double* ds)
    void gn_rows_grad_x_f32(const float* dy, const float* x, float* dx, Py_ssize_t rows,
                            Py_ssize_t C, Py_ssize_t dys, Py_ssize_t xs, Py_ssize_t dxs,
                            const float* m, const float* a, const float* b, const float* c1,
                            const float* c0, int act)
    void gn_rows_grad_x_f64(const double* dy, const double* x, double* dx, Py_ssize_t rows,
                            Py_ssize_t C, Py_ssize_t dys, Py_ssize_t xs, Py_ssize_t dxs,
                            const double* m, const double* a, const double* b,
                            const double* c1, const double* c0, int act)
    void gn_rows_grad_x_f16(const uint16_t* dy, const uint16_t* x, uint16_t* dx,
                            Py_ssize_t rows, Py_ssize_t C, Py_ssize_t dys, Py_ssize_t xs,
                            Py_ssize_t dxs, const float* m, const float* a, const float* b,
                            const float* c1, const float* c0, int act)
    void gn_rows_grad_x_bf16(const uint16_t* dy, const uint16_t* x, uint16_t* dx,
                             Py_ssize_t rows, Py_ssize_t C, Py_ssize_t dys, Py_ssize_t xs,
                             Py_ssize_t dxs, const float* m, const float* a, const float* b,
                             const float* c1, const float* c0, int act)

cdef enum:
    # Elements per chunk (channels-first): a chunk is one vectorized pass.
    CHUNK = 2048
    # Channels-first chunk results are merged in order within spans of consecutive chunks,
    # then span by span; at most MAX_SPANS spans per (sample, group) in the forward pass,
    # per channel in the backward. The split paths keep one partial per span, not per chunk.
    MAX_SPANS = 64
    # Rows per chunk (channels-last).
    ROW_CHUNK = 64
    # Channels-last split paths with many row chunks cut a sample's channels into ranges of
    # whole blocks of this many channels (4 vectors of float32 under AVX2, the widest block
    # the loops use there; 2 under AVX-512) for the statistics.
    RANGE_ALIGN = 32
    # Channels-last split paths write outputs by row chunks; with fewer than this many per
    # thread, the rows are cut by channels too: into ranges of whole groups, each task then
    # taking its groups from statistics to outputs, when that makes as many tasks as channel
    # ranges would, else by the channel ranges (1 x 2048 x 7 x 7 at 2 threads: forward
    # 1.25x, backward 1.56x faster than row chunks alone, and by groups 1.22x and 1.20x
    # faster again; cutting long rows costs 0.87x on 1 x 320 x 64 x 64).
    OUTPUT_CUT_CHUNKS = 4
    # Below this many elements per thread, waking another thread costs more than it saves.
    MIN_WORK_PER_THREAD = 32768
    # A grad_x or (without a residual) y of at least STREAM_BYTES, channels-first in
    # channel runs of at least STREAM_RUN_BYTES, or channels-last where its rows make one
    # run (gn_rows_affine), is written with non-temporal stores: it cannot stay in cache
    # anyway, and they save reading each line first (8 x 256 x 56 x 56 float32: backward
    # 1.2-1.35x; forward 1.10-1.16x at 1 thread, 1.07x at 2, SiLU 1.10x; 16 x 256 x 64 x 64
    # forward 1.19x at 2). One fence per pair, not per channel: the forward lost 0.93x
    # with one per channel. Smaller ones, still in L3, lose by them (forward 0.8x in a
    # warm loop), except for grad_x with long runs (few lines where a channel's plain head
    # and tail stores meet streamed ones): from STREAM_LONG_BYTES with runs of
    # STREAM_LONG_RUN_BYTES (1.4x on 1 x 64 x 8 x 56 x 56, runs of 100 KB; 0.55-0.8x on
    # 2 x 640 x 32 x 32, runs of 4 KB). Channels-last, with a partial vector at each row's
    # ends, streaming gained nothing (0.95-1.03x on 8 x 256 x 56 x 56).
    STREAM_BYTES = 1 << 24
    STREAM_RUN_BYTES = 1024
    STREAM_LONG_BYTES = 1 << 22
    STREAM_LONG_RUN_BYTES = 1 << 16
    # The forward's output pass over a pair asks for the next pair's lines as it goes, so
    # that their fetch overlaps its arithmetic: with SiLU, whose arithmetic bounds that pass
    # (1.03-1.06x on tensors in L3, 1.4x on 8 x 256 x 56 x 56 float32), and without it from
    # PREFETCH_BYTES of x (1.20-1.24x on 8 x 256 x 56 x 56; 0.87-0.97x on tensors in L3,
    # where the fetches only compete with the pass's own). Not with a residual: the next
    # pair's sum is not written yet. Channels-last, from PREFETCH_BYTES, the moments'
    # pass over a row chunk asks for the next chunk's lines (1.08x on 8 x 256 x 56 x 56;
    # 0.92-1.0x on tensors in L3), and the output pass over a sample for the next
    # sample's, with low-locality prefetches (1.05x at 1 thread; prefetcht0's, which fill
    # L1 too, ran 0.94x).
    PREFETCH_BYTES = 1 << 24

# Storage kinds of the data arrays.
cdef enum:
    ST_F32
    ST_F64
    ST_F16
    ST_BF16


ctypedef fused real:
    float
    double


cdef struct Moments:
    double n        # element count
    double mean
    double m2       # sum of squared deviations from the mean


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


cdef inline void finish_stats(const Moments* m, double eps, Py_ssize_t p,
                              real* mean, real* rstd) noexcept nogil:
    """mean and rstd = 1 / sqrt(M2 / n + eps) of pair p from its merged moments. M2 is
    taken as 0 where rounding left it below: a spread whose float32 squares underflow (std
    below about 1e-20) gives sum(d)^2 / n > sum(d^2), and with eps = 0 a NaN."""
    cdef double var
    if m.n == 0:
        mean[p] = NAN
        rstd[p] = NAN
    else:
        var = m.m2 / m.n
        mean[p] = <real>m.mean
        rstd[p] = <real>(1.0 / sqrt((0.0 if var < 0 else var) + eps))


# ---------------------------------------------------------------------------------------
# Layout: where element (n, c, s) of each array lives, and how work is cut into chunks.


cdef struct Layout:
    Py_ssize_t N, C, S, G, Cg
    int st                      # storage kind of x, y, grad_out, residual
    Py_ssize_t item             # bytes per element
    bint last                   # channels-last: unit stride along C; else along S
    int act                     # GN_ACT_*
    # Element strides along N and along the non-unit axis (C, or S when channels-last) of
    # x, the output (y or grad_x), grad_out, the residual and the sum x + residual.
    Py_ssize_t xsN, xs, ysN, ys, dsN, ds, rsN, rs, ssN, ss
    # Channels-first: a pair is `rows` runs of `row_len` contiguous elements (one run when
    # the group is contiguous and whole-group runs are allowed, else one per channel).
    # Channels-last: a sample is cut into row chunks of ROW_CHUNK rows.
    Py_ssize_t rows, row_len, row_chunks
    # y (channels-first, or channels-last rows as one run) or grad_x (channels-first)
    # written with non-temporal stores (see STREAM_BYTES).
    # Backward, with an activation and float32/float64 storage: g is kept in grad_x by the
    # sums and read back by the grad_x pass (see gn_pair_grad_sums).
    bint stream, keep_g


cdef Layout make_layout(Py_ssize_t N, Py_ssize_t C, Py_ssize_t S, Py_ssize_t G, int st,
                        Py_ssize_t item, bint last, int act, Py_ssize_t xsN, Py_ssize_t xs,
                        bint whole_groups) noexcept:
    cdef Layout L
    L.N = N; L.C = C; L.S = S; L.G = G; L.Cg = C // G
    L.st = st; L.item = item; L.last = last; L.act = act
    L.xsN = xsN; L.xs = xs
    L.ysN = 0; L.ys = 0; L.dsN = 0; L.ds = 0; L.rsN = 0; L.rs = 0; L.ssN = 0; L.ss = 0
    L.stream = False
    L.keep_g = False
    if last:
        L.rows = S
        L.row_len = C
        L.row_chunks = (S + ROW_CHUNK - 1) // ROW_CHUNK
    else:
        if whole_groups and (xs == S or L.Cg == 1):
            L.rows = 1
            L.row_len = L.Cg * S
        else:
            L.rows = L.Cg
            L.row_len = S
        L.row_chunks = (L.row_len + CHUNK - 1) // CHUNK
    return L


cdef inline char* at(const char* base, Py_ssize_t elements, const Layout* L) noexcept nogil:
    return <char*>base + elements * L.item


cdef inline Py_ssize_t span_chunks(Py_ssize_t chunks) noexcept nogil:
    """Chunks per span when `chunks` chunks are grouped into at most MAX_SPANS spans."""
    return max(1, (chunks + MAX_SPANS - 1) // MAX_SPANS)


cdef inline Py_ssize_t span_count(Py_ssize_t chunks) noexcept nogil:
    """How many spans `chunks` chunks make (at most MAX_SPANS)."""
    cdef Py_ssize_t per = span_chunks(chunks)
    return (chunks + per - 1) // per


# ---------------------------------------------------------------------------------------
# Storage-dispatching wrappers of the _simd.h loops.


cdef inline void moments(const char* x, Py_ssize_t n, const Layout* L, Moments* out) noexcept nogil:
    out.n = <double>n
    if L.st == ST_F32:
        gn_chunk_moments_f32(<const float*>x, n, &out.mean, &out.m2)
    elif L.st == ST_F64:
        gn_chunk_moments_f64(<const double*>x, n, &out.mean, &out.m2)
    elif L.st == ST_F16:
        gn_chunk_moments_f16(<const uint16_t*>x, n, &out.mean, &out.m2)
    else:
        gn_chunk_moments_bf16(<const uint16_t*>x, n, &out.mean, &out.m2)


cdef inline void add(const char* x, const char* r, char* s, Py_ssize_t n,
                     const Layout* L) noexcept nogil:
    if L.st == ST_F32:
        gn_add_f32(<const float*>x, <const float*>r, <float*>s, n)
    elif L.st == ST_F64:
        gn_add_f64(<const double*>x, <const double*>r, <double*>s, n)
    elif L.st == ST_F16:
        gn_add_f16(<const uint16_t*>x, <const uint16_t*>r, <uint16_t*>s, n)
    else:
        gn_add_bf16(<const uint16_t*>x, <const uint16_t*>r, <uint16_t*>s, n)


cdef inline void affine(const char* x, char* y, Py_ssize_t n, const Layout* L, real m, real a,
                        real b) noexcept nogil:
    """y = act((x - m) * a + b) over n contiguous elements (streamed if L.stream: the
    caller fences)."""
    if real is double:
        gn_affine_f64(<const double*>x, <double*>y, n, m, a, b, L.act, 0, L.stream)
    elif L.st == ST_F32:
        gn_affine_f32(<const float*>x, <float*>y, n, m, a, b, L.act, 0, L.stream)
    elif L.st == ST_F16:
        gn_affine_f16(<const uint16_t*>x, <uint16_t*>y, n, m, a, b, L.act, 0,
                      L.stream)
    else:
        gn_affine_bf16(<const uint16_t*>x, <uint16_t*>y, n, m, a, b, L.act, 0,
                       L.stream)


cdef inline void pair_affine(const char* x, char* y, Py_ssize_t xs, const Layout* L, real m,
                             double r, const real* w, const real* b,
                             Py_ssize_t ahead) noexcept nogil:
    """gn_pair_affine over the Cg channels starting at x (channel stride xs) and y, asking
    for the lines `ahead` elements past those read."""
    if real is double:
        gn_pair_affine_f64(<const double*>x, <double*>y, L.Cg, L.S, xs, L.ys, m, r, w, b, L.act,
                           ahead, L.stream)
    elif L.st == ST_F32:
        gn_pair_affine_f32(<const float*>x, <float*>y, L.Cg, L.S, xs, L.ys, m, r, w, b, L.act,
                           ahead, L.stream)
    elif L.st == ST_F16:
        gn_pair_affine_f16(<const uint16_t*>x, <uint16_t*>y, L.Cg, L.S, xs, L.ys, m, r, w, b,
                           L.act, ahead, L.stream)
    else:
        gn_pair_affine_bf16(<const uint16_t*>x, <uint16_t*>y, L.Cg, L.S, xs, L.ys, m, r, w, b,
                            L.act, ahead, L.stream)


cdef inline void grad_sums(const char* dy, const char* x, char* dx, Py_ssize_t n,
                           const Layout* L, real m, real a, real b, double* out) noexcept nogil:
    """out = [sum(g), sum(g * (x - m))], g = dy * act'((x - m) * a + b); g kept in dx if
    L.keep_g."""
    if real is double:
        gn_grad_sums_f64(<const double*>dy, <const double*>x, n, m, a, b, L.act,
                         <double*>dx if L.keep_g else NULL, out)
    elif L.st == ST_F32:
        gn_grad_sums_f32(<const float*>dy, <const float*>x, n, m, a, b, L.act,
                         <float*>dx if L.keep_g else NULL, out)
    elif L.st == ST_F16:
        gn_grad_sums_f16(<const uint16_t*>dy, <const uint16_t*>x, n, m, a, b, L.act, NULL, out)
    else:
        gn_grad_sums_bf16(<const uint16_t*>dy, <const uint16_t*>x, n, m, a, b, L.act, NULL,
                          out)


cdef inline void grad_x(const char* dy, const char* x, char* dx, Py_ssize_t n, const Layout* L,
                        real m, real a, real b, real c1, real c0) noexcept nogil:
    """dx = a * g + (c1 * (x - m) + c0), with non-temporal stores if L.stream; g read from dx
    if L.keep_g."""
    cdef int act = GN_ACT_NONE if L.keep_g else L.act
    if L.keep_g:
        dy = dx
    if real is double:
        gn_grad_x_f64(<const double*>dy, <const double*>x, <double*>dx, n, m, a, b, c1, c0,
                      act, L.stream)
    elif L.st == ST_F32:
        gn_grad_x_f32(<const float*>dy, <const float*>x, <float*>dx, n, m, a, b, c1, c0, act,
                      L.stream)
    elif L.st == ST_F16:
        gn_grad_x_f16(<const uint16_t*>dy, <const uint16_t*>x, <uint16_t*>dx, n, m, a, b, c1,
                      c0, act, L.stream)
    else:
        gn_grad_x_bf16(<const uint16_t*>dy, <const uint16_t*>x, <uint16_t*>dx, n, m, a, b, c1,
                       c0, act, L.stream)


cdef inline void pair_grad_sums(const char* dy, const char* x, char* dx, const Layout* L,
                                real m, double r, const real* w, const real* bias, double* db,
                                double* ds) noexcept nogil:
    """gn_pair_grad_sums over the Cg channels starting at dy, x (chunks of CHUNK, spans of
    span_chunks(row_chunks) chunks); g kept in dx if L.keep_g."""
    cdef Py_ssize_t span_len = span_chunks(L.row_chunks) * CHUNK
    if real is double:
        gn_pair_grad_sums_f64(<const double*>dy, <const double*>x, L.Cg, L.S, L.ds, L.xs, CHUNK,
                              span_len, m, r, w, bias, L.act,
                              <double*>dx if L.keep_g else NULL, L.ys, db, ds)
    elif L.st == ST_F32:
        gn_pair_grad_sums_f32(<const float*>dy, <const float*>x, L.Cg, L.S, L.ds, L.xs, CHUNK,
                              span_len, m, r, w, bias, L.act,
                              <float*>dx if L.keep_g else NULL, L.ys, db, ds)
    elif L.st == ST_F16:
        gn_pair_grad_sums_f16(<const uint16_t*>dy, <const uint16_t*>x, L.Cg, L.S, L.ds, L.xs,
                              CHUNK, span_len, m, r, w, bias, L.act, NULL, 0, db, ds)
    else:
        gn_pair_grad_sums_bf16(<const uint16_t*>dy, <const uint16_t*>x, L.Cg, L.S, L.ds, L.xs,
                               CHUNK, span_len, m, r, w, bias, L.act, NULL, 0, db, ds)


cdef inline void pair_grad_x(const char* dy, const char* x, char* dx, const Layout* L, real m,
                             double r, const real* w, const real* bias, real c1,
                             real c0) noexcept nogil:
    """gn_pair_grad_x over the Cg channels starting at dy, x, dx; g read from dx if
    L.keep_g."""
    cdef int act = GN_ACT_NONE if L.keep_g else L.act
    cdef Py_ssize_t dys = L.ys if L.keep_g else L.ds
    if L.keep_g:
        dy = dx
    if real is double:
        gn_pair_grad_x_f64(<const double*>dy, <const double*>x, <double*>dx, L.Cg, L.S, dys,
                           L.xs, L.ys, m, r, w, bias, c1, c0, act, L.stream)
    elif L.st == ST_F32:
        gn_pair_grad_x_f32(<const float*>dy, <const float*>x, <float*>dx, L.Cg, L.S, dys, L.xs,
                           L.ys, m, r, w, bias, c1, c0, act, L.stream)
    elif L.st == ST_F16:
        gn_pair_grad_x_f16(<const uint16_t*>dy, <const uint16_t*>x, <uint16_t*>dx, L.Cg, L.S,
                           dys, L.xs, L.ys, m, r, w, bias, c1, c0, act, L.stream)
    else:
        gn_pair_grad_x_bf16(<const uint16_t*>dy, <const uint16_t*>x, <uint16_t*>dx, L.Cg, L.S,
                            dys, L.xs, L.ys, m, r, w, bias, c1, c0, act, L.stream)


cdef inline void rows_moments(const char* x, Py_ssize_t rows, Py_ssize_t stride,
                              Py_ssize_t width, Py_ssize_t ahead, const Layout* L,
                              double* mean, double* m2) noexcept nogil:
    """Per-channel moments of `width` channels over `rows` rows (see gn_rows_moments)."""
    if L.st == ST_F32:
        gn_rows_moments_f32(<const float*>x, rows, width, stride, ahead, mean, m2)
    elif L.st == ST_F64:
        gn_rows_moments_f64(<const double*>x, rows, width, stride, ahead, mean, m2)
    elif L.st == ST_F16:
        gn_rows_moments_f16(<const uint16_t*>x, rows, width, stride, ahead, mean, m2)
    else:
        gn_rows_moments_bf16(<const uint16_t*>x, rows, width, stride, ahead, mean, m2)


cdef inline void rows_affine(const char* x, char* y, Py_ssize_t rows, Py_ssize_t width,
                             Py_ssize_t xs, Py_ssize_t ys, const Layout* L, const real* m,
                             const real* a, const real* b, Py_ssize_t ahead=0) noexcept nogil:
    """y = act((x - m) * a + b) over `width` channels of `rows` rows (gn_rows_affine),
    asking for the lines `ahead` elements on; streamed if L.stream."""
    if real is double:
        gn_rows_affine_f64(<const double*>x, <double*>y, rows, width, xs, ys, m, a, b, L.act,
                           ahead, L.stream)
    elif L.st == ST_F32:
        gn_rows_affine_f32(<const float*>x, <float*>y, rows, width, xs, ys, m, a, b, L.act,
                           ahead, L.stream)
    elif L.st == ST_F16:
        gn_rows_affine_f16(<const uint16_t*>x, <uint16_t*>y, rows, width, xs, ys, m, a, b,
                           L.act, ahead, L.stream)
    else:
        gn_rows_affine_bf16(<const uint16_t*>x, <uint16_t*>y, rows, width, xs, ys, m, a, b,
                            L.act, ahead, L.stream)


cdef inline void rows_grad_sums(const char* dy, const char* x, char* dx, Py_ssize_t rows,
                                Py_ssize_t width, const Layout* L, const real* m,
                                const real* a, const real* b, double* db,
                                double* ds) noexcept nogil:
    """Per-channel gradient sums of `width` channels over `rows` rows (gn_rows_grad_sums);
    g kept in dx if L.keep_g."""
    if real is double:
        gn_rows_grad_sums_f64(<const double*>dy, <const double*>x, rows, width, L.ds, L.xs, m,
                              a, b, L.act, <double*>dx if L.keep_g else NULL, L.ys, db, ds)
    elif L.st == ST_F32:
        gn_rows_grad_sums_f32(<const float*>dy, <const float*>x, rows, width, L.ds, L.xs, m, a,
                              b, L.act, <float*>dx if L.keep_g else NULL, L.ys, db, ds)
    elif L.st == ST_F16:
        gn_rows_grad_sums_f16(<const uint16_t*>dy, <const uint16_t*>x, rows, width, L.ds, L.xs,
                              m, a, b, L.act, NULL, 0, db, ds)
    else:
        gn_rows_grad_sums_bf16(<const uint16_t*>dy, <const uint16_t*>x, rows, width, L.ds,
                               L.xs, m, a, b, L.act, NULL, 0, db, ds)


cdef inline void rows_grad_x(const char* dy, const char* x, char* dx, Py_ssize_t rows,
                             Py_ssize_t width, const Layout* L, const real* m, const real* a,
                             const real* b, const real* c1, const real* c0) noexcept nogil:
    """grad_x over `width` channels of `rows` rows (gn_rows_grad_x); g read from dx if
    L.keep_g."""
    cdef int act = GN_ACT_NONE if L.keep_g else L.act
    cdef Py_ssize_t dys = L.ys if L.keep_g else L.ds
    if L.keep_g:
        dy = dx
    if real is double:
        gn_rows_grad_x_f64(<const double*>dy, <const double*>x, <double*>dx, rows, width, dys,
                           L.xs, L.ys, m, a, b, c1, c0, act)
    elif L.st == ST_F32:
        gn_rows_grad_x_f32(<const float*>dy, <const float*>x, <float*>dx, rows, width, dys,
                           L.xs, L.ys, m, a, b, c1, c0, act)
    elif L.st == ST_F16:
        gn_rows_grad_x_f16(<const uint16_t*>dy, <const uint16_t*>x, <uint16_t*>dx, rows, width,
                           dys, L.xs, L.ys, m, a, b, c1, c0, act)
    else:
        gn_rows_grad_x_bf16(<const uint16_t*>dy, <const uint16_t*>x, <uint16_t*>dx, rows, width,
                            dys, L.xs, L.ys, m, a, b, c1, c0, act)


# ---------------------------------------------------------------------------------------
# Forward, channels-first. With a residual, the sum s = x + residual is written (to the
# output or to residual_out) as its chunks' moments are taken, then normalized from there.


cdef inline void pair_chunk_moments(const char* x, const char* res, char* s, const Layout* L,
                                    Py_ssize_t p, Py_ssize_t k, Moments* out) noexcept nogil:
    """Moments of chunk k (row-major over rows, then chunks) of pair p (of x + res)."""
    cdef Py_ssize_t r = k // L.row_chunks
    cdef Py_ssize_t start = (k % L.row_chunks) * CHUNK
    cdef Py_ssize_t n = min(CHUNK, L.row_len - start)
    cdef Py_ssize_t c = (p % L.G) * L.Cg + r, i = p // L.G
    cdef char* sp
    if res == NULL:
        moments(at(x, i * L.xsN + c * L.xs + start, L), n, L, out)
    else:
        sp = at(s, i * L.ssN + c * L.ss + start, L)
        add(at(x, i * L.xsN + c * L.xs + start, L), at(res, i * L.rsN + c * L.rs + start, L),
            sp, n, L)
        moments(sp, n, L, out)


cdef inline void normalize_span(const char* src, Py_ssize_t srcN, Py_ssize_t srcC, char* y,
                                const Layout* L, Py_ssize_t p, Py_ssize_t r, Py_ssize_t start,
                                Py_ssize_t n, const real* mean, const real* rstd,
                                const real* weight, const real* bias) noexcept nogil:
    """Write y for elements [start, start + n) of row r of pair p, read from src (x, or
    the sum x + residual) with strides srcN, srcC.

    Per channel c: a_c = weight_c * rstd and y = act((x - mean) * a_c + bias_c). Centring
    before scaling keeps full precision when |mean| >> std, and gives exactly bias_c for
    a constant group. A contiguous row crosses channel boundaries every S elements.
    """
    cdef Py_ssize_t i = p // L.G
    cdef Py_ssize_t c = (p % L.G) * L.Cg + (start // L.S if L.rows == 1 else r)
    cdef Py_ssize_t s = start % L.S if L.rows == 1 else start
    cdef Py_ssize_t seg
    cdef real a
    while n > 0:
        seg = min(n, L.S - s)
        a = <real>((1.0 if weight == NULL else <double>weight[c]) * <double>rstd[p])
        affine(at(src, i * srcN + c * srcC + s, L), at(y, i * L.ysN + c * L.ys + s, L), seg, L,
               mean[p], a, 0 if bias == NULL else bias[c])
        n -= seg
        c += 1
        s = 0
    if L.stream:
        gn_stream_fence()


cdef void pair_span_moments(const char* x, const char* res, char* s, const Layout* L,
                            Py_ssize_t p, Py_ssize_t t, Moments* out) noexcept nogil:
    """Moments of span t of pair p: its chunks' moments merged in order."""
    cdef Py_ssize_t chunks = L.rows * L.row_chunks, per = span_chunks(chunks), k
    cdef Moments part
    out.n = 0; out.mean = 0; out.m2 = 0
    for k in range(t * per, min(chunks, (t + 1) * per)):
        pair_chunk_moments(x, res, s, L, p, k, &part)
        merge_moments(out, &part)


cdef void forward_pair(const char* x, const char* res, char* s, char* y, const Layout* L,
                       Py_ssize_t p, double eps, const real* weight, const real* bias,
                       real* mean, real* rstd) noexcept nogil:
    """Pair p: its statistics (its spans' moments merged in order), then its outputs while
    its data is still in cache, asking for pair p + 1's data as they go where that pays
    (see PREFETCH_BYTES)."""
    cdef Py_ssize_t t, i = p // L.G, c0 = (p % L.G) * L.Cg
    cdef Py_ssize_t xsN = L.xsN, xs = L.xs, ahead = 0
    cdef Moments total, part
    total.n = 0; total.mean = 0; total.m2 = 0
    for t in range(span_count(L.rows * L.row_chunks)):
        pair_span_moments(x, res, s, L, p, t, &part)
        merge_moments(&total, &part)
    finish_stats(&total, eps, p, mean, rstd)
    if res != NULL:
        x = s
        xsN = L.ssN
        xs = L.ss
    elif p + 1 < L.N * L.G and (L.act == GN_ACT_SILU
                                or L.N * L.C * L.S * L.item >= PREFETCH_BYTES):
        ahead = ((p + 1) // L.G - i) * xsN + (((p + 1) % L.G) * L.Cg - c0) * xs
    pair_affine(at(x, i * xsN + c0 * xs, L), at(y, i * L.ysN + c0 * L.ys, L), xs, L, mean[p],
                <double>rstd[p], NULL if weight == NULL else weight + c0,
                NULL if bias == NULL else bias + c0, ahead)


cdef void forward_nchw(const char* x, const char* res, char* s, char* y, const Layout* L,
                       double eps, const real* weight, const real* bias, real* mean,
                       real* rstd, Moments* parts, int threads) noexcept nogil:
    """One task per pair; or, with few pairs for the threads (parts != NULL: one per span),
    span moments in parallel, merged per pair in forward_pair's order, then outputs in
    parallel by chunks."""
    cdef Py_ssize_t i, p, t, start
    cdef Py_ssize_t chunks = L.rows * L.row_chunks, spans = span_count(chunks)
    cdef Py_ssize_t items = L.N * L.G * chunks
    cdef Moments total
    if parts == NULL:
        if threads == 1:
            for p in range(L.N * L.G):
                forward_pair(x, res, s, y, L, p, eps, weight, bias, mean, rstd)
        else:
            for p in prange(L.N * L.G, schedule='static', num_threads=threads):
                forward_pair(x, res, s, y, L, p, eps, weight, bias, mean, rstd)
        return
    for i in prange(L.N * L.G * spans, schedule='static', num_threads=threads):
        pair_span_moments(x, res, s, L, i // spans, i % spans, &parts[i])
    for p in range(L.N * L.G):
        total.n = 0; total.mean = 0; total.m2 = 0
        for t in range(spans):
            merge_moments(&total, &parts[p * spans + t])
        finish_stats(&total, eps, p, mean, rstd)
    for i in prange(items, schedule='static', num_threads=threads):
        start = (i % L.row_chunks) * CHUNK
        if res == NULL:
            normalize_span(x, L.xsN, L.xs, y, L, i // chunks, (i % chunks) // L.row_chunks,
                           start, min(CHUNK, L.row_len - start), mean, rstd, weight, bias)
        else:
            normalize_span(s, L.ssN, L.ss, y, L, i // chunks, (i % chunks) // L.row_chunks,
                           start, min(CHUNK, L.row_len - start), mean, rstd, weight, bias)


# ---------------------------------------------------------------------------------------
# Forward, channels-last. Per sample: the per-channel moments of each row chunk (channels in
# vector lanes), merged per channel in chunk order within spans of consecutive chunks (at
# most MAX_SPANS per sample), then span by span; then over the channels of each group; then
# per-channel coefficient vectors (m, a, b) and one pass over the rows. Scratch is O(C) per
# sample and span, never per chunk. With few samples for the threads, the spans run in
# parallel, each over all the channels (by ranges of whole groups from statistics to
# outputs when the rows are few; see OUTPUT_CUT_CHUNKS). A channel's arithmetic is the
# same in any range (lanes are independent), so the bits do not depend on the cut.


cdef inline void merge_span_moments(const Layout* L, Py_ssize_t c0, Py_ssize_t c1,
                                    double* run, const double* part,
                                    Py_ssize_t t) noexcept nogil:
    """Merge span t's (mean, M2) of channels [c0, c1) in part into those of spans 0 to
    t - 1 in run (layout: mean at [c], M2 at [C + c]) by Chan's formula. Every channel has
    the same counts (the rows before span t, and its own), so the factors nb / n and
    na * nb / n are computed once and the loop over channels is division-free."""
    cdef Py_ssize_t per = span_chunks(L.row_chunks) * ROW_CHUNK
    cdef double n_run = <double>(t * per)
    cdef double n_part = <double>(min(L.S, (t + 1) * per) - t * per)
    cdef double f = n_part / (n_run + n_part)
    gn_merge_channels(run + c0, run + L.C + c0, part + c0, part + L.C + c0, c1 - c0, f,
                      n_run * f)


cdef void span_moments_nhwc(const char* x, const char* res, char* s, const Layout* L,
                            Py_ssize_t i, Py_ssize_t t, Py_ssize_t c0, Py_ssize_t c1,
                            double* chunk, double* out) noexcept nogil:
    """(mean, M2) of channels [c0, c1) of sample i over the rows of span t, as out[c],
    out[C + c]: its row chunks' moments merged in order (the first's written straight to
    out, the others' to chunk, same layout). With a residual, s = x + residual is written
    as the chunks are read; without, from PREFETCH_BYTES of x, a chunk's pass asks for the
    next chunk's lines."""
    cdef Py_ssize_t per = span_chunks(L.row_chunks), j, r, r0, rows, width = c1 - c0
    cdef double* part
    cdef double f
    cdef const char* src = x if res == NULL else <const char*>s
    cdef Py_ssize_t srcN = L.xsN if res == NULL else L.ssN
    cdef Py_ssize_t srcs = L.xs if res == NULL else L.ss
    # the next chunk's lines, asked for as a chunk is read when the next is whole (see
    # PREFETCH_BYTES)
    cdef Py_ssize_t ahead = (ROW_CHUNK * L.xs if res == NULL
                             and L.N * L.C * L.S * L.item >= PREFETCH_BYTES else 0)
    for j in range(t * per, min(L.row_chunks, (t + 1) * per)):
        r0 = j * ROW_CHUNK
        rows = min(ROW_CHUNK, L.S - r0)
        if res != NULL:
            for r in range(r0, r0 + rows):
                add(at(x, i * L.xsN + r * L.xs + c0, L), at(res, i * L.rsN + r * L.rs + c0, L),
                    at(s, i * L.ssN + r * L.ss + c0, L), width, L)
        part = out if j == t * per else chunk
        rows_moments(at(src, i * srcN + r0 * srcs + c0, L), rows, srcs, width,
                     ahead if (j + 2) * ROW_CHUNK <= L.S else 0, L, part + c0,
                     part + L.C + c0)
        if j > t * per:  # after (j - t * per) whole chunks of the span
            f = <double>rows / <double>(r0 - t * per * ROW_CHUNK + rows)
            gn_merge_channels(out + c0, out + L.C + c0, chunk + c0, chunk + L.C + c0, width,
                              f, <double>(r0 - t * per * ROW_CHUNK) * f)


cdef void channel_moments_nhwc(const char* x, const char* res, char* s, const Layout* L,
                               Py_ssize_t i, Py_ssize_t c0, Py_ssize_t c1,
                               double* scratch) noexcept nogil:
    """(mean, M2) of channels [c0, c1) of sample i over all rows, as scratch[4C + c] and
    scratch[5C + c], its spans' moments merged in order; scratch: 6C doubles."""
    cdef Py_ssize_t t
    span_moments_nhwc(x, res, s, L, i, 0, c0, c1, scratch, scratch + 4 * L.C)
    for t in range(1, span_count(L.row_chunks)):
        span_moments_nhwc(x, res, s, L, i, t, c0, c1, scratch, scratch + 2 * L.C)
        merge_span_moments(L, c0, c1, scratch + 4 * L.C, scratch + 2 * L.C, t)


cdef void group_stats_nhwc(const Layout* L, Py_ssize_t i, Py_ssize_t g0, Py_ssize_t g1,
                           const double* run, double eps, real* mean,
                           real* rstd) noexcept nogil:
    """Statistics of groups [g0, g1) of sample i from their channels' (mean, M2) in run.
    The channels of a group have equal counts S, so their merge is Chan's for equal parts,
    in two division-free passes: mean = sum(mean_c) / Cg,
    M2 = sum(M2_c) + S sum((mean_c - mean)^2)."""
    cdef Py_ssize_t c, g
    cdef double gm, q, dev, d
    cdef Moments total
    for g in range(g0, g1):
        gm = 0
        q = 0
        dev = 0
        for c in range(g * L.Cg, (g + 1) * L.Cg):
            gm = gm + run[c]
            q = q + run[L.C + c]
        gm = gm / <double>L.Cg
        for c in range(g * L.Cg, (g + 1) * L.Cg):
            d = run[c] - gm
            dev = dev + d * d
        total.n = <double>L.S * <double>L.Cg
        total.mean = gm
        total.m2 = q + <double>L.S * dev
        finish_stats(&total, eps, i * L.G + g, mean, rstd)


cdef void channel_coefficients(const Layout* L, Py_ssize_t i, Py_ssize_t g0, Py_ssize_t g1,
                               const real* mean, const real* rstd, const real* weight,
                               const real* bias, real* m, real* a, real* b) noexcept nogil:
    """Per channel c of groups [g0, g1) of sample i: m = mean_g, a = weight_c * rstd_g,
    b = bias_c (weight 1 and bias 0 when absent; loops without a test inside, which the
    compiler vectorizes)."""
    cdef Py_ssize_t c, g, p
    cdef double r
    for g in range(g0, g1):
        p = i * L.G + g
        r = <double>rstd[p]
        for c in range(g * L.Cg, (g + 1) * L.Cg):
            m[c] = mean[p]
        if weight == NULL:
            for c in range(g * L.Cg, (g + 1) * L.Cg):
                a[c] = <real>r
        else:
            for c in range(g * L.Cg, (g + 1) * L.Cg):
                a[c] = <real>(<double>weight[c] * r)
    for c in range(g0 * L.Cg, g1 * L.Cg):
        b[c] = 0 if bias == NULL else bias[c]


cdef inline Py_ssize_t range_start(const Layout* L, Py_ssize_t ranges,
                                   Py_ssize_t k) noexcept nogil:
    """First channel of range k of `ranges` (C for k = ranges): ranges are whole blocks of
    RANGE_ALIGN channels, so range k is [range_start(k), range_start(k + 1))."""
    cdef Py_ssize_t blocks = (L.C + RANGE_ALIGN - 1) // RANGE_ALIGN
    cdef Py_ssize_t per = (blocks + ranges - 1) // ranges * RANGE_ALIGN
    return min(L.C, k * per)


cdef inline Py_ssize_t group_start(const Layout* L, Py_ssize_t ranges,
                                   Py_ssize_t k) noexcept nogil:
    """First group of range k of `ranges` ranges of whole groups (G for k = ranges)."""
    return k * L.G // ranges


cdef inline bint by_groups(Py_ssize_t cuts, Py_ssize_t ranges,
                           Py_ssize_t granges) noexcept nogil:
    """Whether a channels-last split path with `cuts` output cuts and `ranges` channel
    ranges runs one task per range of whole groups (`granges` of them) instead (see
    OUTPUT_CUT_CHUNKS)."""
    return cuts > 1 and granges >= ranges


cdef inline real* aligned_like(real* p, const char* x, const Layout* L) noexcept nogil:
    """p moved on by less than a vector of reals, so that p + c starts a vector wherever
    x + c (in storage elements) does: gn_rows_affine puts its vectors at the alignment of
    x (of y when streaming, then passed here as x), and the coefficient vectors it loads
    with them then align too. p needs GN_VBYTES bytes to spare."""
    cdef size_t lanes = GN_VBYTES // sizeof(real)
    cdef size_t want = (<size_t>x // <size_t>L.item) % lanes
    cdef size_t have = (<size_t>p // sizeof(real)) % lanes
    return p + (want + lanes - have) % lanes


cdef inline Py_ssize_t channel_ranges(const Layout* L, int threads) noexcept nogil:
    """How many channel ranges a sample is cut into on the split paths."""
    return min(<Py_ssize_t>threads, (L.C + RANGE_ALIGN - 1) // RANGE_ALIGN)


cdef void forward_groups_nhwc(const char* x, const char* res, char* s, char* y,
                              const Layout* L, Py_ssize_t i, Py_ssize_t g0, Py_ssize_t g1,
                              double eps, const real* weight, const real* bias, real* mean,
                              real* rstd, double* scratch, real* coef) noexcept nogil:
    """Groups [g0, g1) of sample i, from their channels' moments to their outputs
    (normalized from x, or from the sum x + residual). scratch: 6C doubles, coef: 3C
    reals, of which the groups' channels are used."""
    cdef const char* src = x if res == NULL else <const char*>s
    cdef Py_ssize_t srcN = L.xsN if res == NULL else L.ssN
    cdef Py_ssize_t srcs = L.xs if res == NULL else L.ss
    cdef Py_ssize_t c0 = g0 * L.Cg, c1 = g1 * L.Cg
    channel_moments_nhwc(x, res, s, L, i, c0, c1, scratch)
    group_stats_nhwc(L, i, g0, g1, scratch + 4 * L.C, eps, mean, rstd)
    channel_coefficients(L, i, g0, g1, mean, rstd, weight, bias, coef, coef + L.C,
                         coef + 2 * L.C)
    rows_affine(at(src, i * srcN + c0, L), at(y, i * L.ysN + c0, L), L.S, c1 - c0, srcs, L.ys,
                L, coef + c0, coef + L.C + c0, coef + 2 * L.C + c0,
                L.xsN if res == NULL and i + 1 < L.N
                and L.N * L.C * L.S * L.item >= PREFETCH_BYTES else 0)


cdef void forward_nhwc(const char* x, const char* res, char* s, char* y, const Layout* L,
                       double eps, const real* weight, const real* bias, real* mean,
                       real* rstd, double* scratch, double* parts, real* coef, bint split,
                       int threads) noexcept nogil:
    """One task per sample; or, split, with few row chunks (by_groups), one per range of
    whole groups of a sample, each from moments to outputs (no pass hands data to another
    thread: on AMD Zen 5, 1 x 2048 x 7 x 7 at 2 threads took 2x as long with the statistics
    merged between parallel passes); else the spans of row chunks in parallel for the
    statistics and row chunks (cut by channel ranges when few) for the outputs. scratch:
    6C doubles and coef: 3C reals per thread, or per sample when split; parts (split
    only): 2C doubles per span of a sample and per thread."""
    cdef Py_ssize_t i, j, k, r0, c0, c1, t
    cdef Py_ssize_t ranges = channel_ranges(L, threads)
    cdef Py_ssize_t spans = span_count(L.row_chunks)
    # the output pass by row chunks, and by channel ranges too when the chunks are few
    cdef Py_ssize_t cuts = ranges if L.N * L.row_chunks < OUTPUT_CUT_CHUNKS * threads else 1
    cdef Py_ssize_t items = L.N * L.row_chunks * cuts
    cdef Py_ssize_t granges = min(<Py_ssize_t>threads, L.G)
    cdef double* run
    cdef const real* cf
    cdef const char* src = x if res == NULL else <const char*>s  # outputs normalized from
    cdef Py_ssize_t srcN = L.xsN if res == NULL else L.ssN
    cdef Py_ssize_t srcs = L.xs if res == NULL else L.ss
    # the coefficients at the alignment gn_rows_affine gives its vectors: y's when its
    # rows are one streamed run, else x's
    coef = aligned_like(coef, y if L.stream and gn_rows_run(L.C, L.xs, L.ys,
                                                           GN_VBYTES // sizeof(real))
                        else src, L)
    if not split:
        if threads == 1:
            for i in range(L.N):
                forward_groups_nhwc(x, res, s, y, L, i, 0, L.G, eps, weight, bias, mean, rstd,
                                    scratch, coef)
        else:
            for i in prange(L.N, schedule='static', num_threads=threads):
                t = threadid()
                forward_groups_nhwc(x, res, s, y, L, i, 0, L.G, eps, weight, bias, mean, rstd,
                                    scratch + t * 6 * L.C, coef + t * 3 * L.C)
        return
    if by_groups(cuts, ranges, granges):
        for j in prange(L.N * granges, schedule='static', num_threads=threads):
            i = j // granges
            forward_groups_nhwc(x, res, s, y, L, i, group_start(L, granges, j % granges),
                                group_start(L, granges, j % granges + 1), eps, weight, bias,
                                mean, rstd, scratch + i * 6 * L.C, coef + i * 3 * L.C)
        return
    for j in prange(L.N * spans, schedule='static', num_threads=threads):
        t = threadid()
        span_moments_nhwc(x, res, s, L, j // spans, j % spans, 0, L.C,
                          parts + (L.N * spans + t) * 2 * L.C, parts + j * 2 * L.C)
    for i in range(L.N):  # spans merged in order, into the first: as channel_moments_nhwc
        run = parts + i * spans * 2 * L.C
        for k in range(1, spans):
            merge_span_moments(L, 0, L.C, run, run + k * 2 * L.C, k)
        group_stats_nhwc(L, i, 0, L.G, run, eps, mean, rstd)
        channel_coefficients(L, i, 0, L.G, mean, rstd, weight, bias, coef + i * 3 * L.C,
                             coef + i * 3 * L.C + L.C, coef + i * 3 * L.C + 2 * L.C)
    for j in prange(items, schedule='static', num_threads=threads):
        i = j // (L.row_chunks * cuts)
        r0 = (j // cuts % L.row_chunks) * ROW_CHUNK
        c0 = range_start(L, cuts, j % cuts)
        c1 = range_start(L, cuts, j % cuts + 1)
        cf = coef + i * 3 * L.C + c0
        rows_affine(at(src, i * srcN + r0 * srcs + c0, L), at(y, i * L.ysN + r0 * L.ys + c0, L),
                    min(ROW_CHUNK, L.S - r0), c1 - c0, srcs, L.ys, L, cf, cf + L.C,
                    cf + 2 * L.C)


# ---------------------------------------------------------------------------------------
# Backward. With an activation, g = grad_out * act'(pre) is the gradient reaching the
# affine, pre = (x - mean) * a_c + bias_c recomputed from x. Per channel:
# db = sum(g), ds = sum(g * (x - mean)); then per pair, with M = Cg * S, dxhat = w_c g:
#   m1 = sum(dxhat) / M,  m2 = sum(dxhat * xhat) / M = rstd * sum_c w_c ds_c / M,
#   grad_x = rstd * (dxhat - m1 - xhat * m2) = a_c g + c1 (x - mean) + c0,
#   c1 = -rstd^2 m2,  c0 = -rstd m1;
# grad_weight_c = sum_n rstd ds,  grad_bias_c = sum_n db.


cdef inline void pair_terms(const Layout* L, Py_ssize_t p, const real* rstd,
                            const real* weight, const double* db, const double* ds,
                            double* terms) noexcept nogil:
    """terms[2p] = c1, terms[2p + 1] = c0 of pair p (see above)."""
    cdef Py_ssize_t k, c0 = (p % L.G) * L.Cg, nc0 = (p // L.G) * L.C + c0
    cdef double w, s1 = 0, s2 = 0, M = <double>(L.Cg * L.S)
    cdef double r = <double>rstd[p]
    for k in range(L.Cg):
        w = 1.0 if weight == NULL else <double>weight[c0 + k]
        s1 = s1 + w * db[nc0 + k]
        s2 = s2 + w * ds[nc0 + k]
    terms[2 * p] = -r * r * (r * s2 / M)
    terms[2 * p + 1] = -r * (s1 / M)


cdef inline real scale_of(const Layout* L, Py_ssize_t c, Py_ssize_t p, const real* rstd,
                          const real* weight) noexcept nogil:
    """a_c = weight_c * rstd_p, rounded to the compute type as in the forward pass."""
    return <real>((1.0 if weight == NULL else <double>weight[c]) * <double>rstd[p])


cdef inline void channel_span_sums(const char* dy, const char* x, char* dx, const Layout* L,
                                   Py_ssize_t nc, Py_ssize_t t, const real* mean,
                                   const real* rstd, const real* weight, const real* bias,
                                   double* out) noexcept nogil:
    """grad_sums of span t of channel nc = n * C + c (channels-first): its chunks' sums
    added in order, as gn_pair_grad_sums does."""
    cdef Py_ssize_t i = nc // L.C, c = nc % L.C, p = i * L.G + c // L.Cg, j, start
    cdef Py_ssize_t per = span_chunks(L.row_chunks)
    cdef double part[2]
    out[0] = 0
    out[1] = 0
    for j in range(t * per, min(L.row_chunks, (t + 1) * per)):
        start = j * CHUNK
        grad_sums(at(dy, i * L.dsN + c * L.ds + start, L),
                  at(x, i * L.xsN + c * L.xs + start, L),
                  at(dx, i * L.ysN + c * L.ys + start, L), min(CHUNK, L.S - start), L,
                  mean[p], scale_of(L, c, p, rstd, weight), 0 if bias == NULL else bias[c],
                  part)
        out[0] = out[0] + part[0]
        out[1] = out[1] + part[1]


cdef inline void channel_chunk_grad_x(const char* dy, const char* x, char* dx,
                                      const Layout* L, Py_ssize_t nc, Py_ssize_t j,
                                      Py_ssize_t n, const real* mean, const real* rstd,
                                      const real* weight, const real* bias,
                                      const double* terms) noexcept nogil:
    """grad_x of elements [j * CHUNK, j * CHUNK + n) of channel nc (channels-first)."""
    cdef Py_ssize_t i = nc // L.C, c = nc % L.C, p = i * L.G + c // L.Cg, start = j * CHUNK
    grad_x(at(dy, i * L.dsN + c * L.ds + start, L), at(x, i * L.xsN + c * L.xs + start, L),
           at(dx, i * L.ysN + c * L.ys + start, L), n, L, mean[p],
           scale_of(L, c, p, rstd, weight), 0 if bias == NULL else bias[c],
           <real>terms[2 * p], <real>terms[2 * p + 1])


cdef void backward_pair(const char* dy, const char* x, char* dx, const Layout* L,
                        Py_ssize_t p, const real* mean, const real* rstd, const real* weight,
                        const real* bias, double* db, double* ds,
                        double* terms) noexcept nogil:
    """Pair p: per-channel sums (chunk sums added in order, as backward_nchw's split path
    does), the pair's two terms, then grad_x, its data still in cache."""
    cdef Py_ssize_t i = p // L.G, c0 = (p % L.G) * L.Cg
    cdef const real* w = NULL if weight == NULL else weight + c0
    cdef const real* b = NULL if bias == NULL else bias + c0
    pair_grad_sums(at(dy, i * L.dsN + c0 * L.ds, L), at(x, i * L.xsN + c0 * L.xs, L),
                   at(dx, i * L.ysN + c0 * L.ys, L), L, mean[p], <double>rstd[p], w, b,
                   db + i * L.C + c0, ds + i * L.C + c0)
    pair_terms(L, p, rstd, weight, db, ds, terms)
    pair_grad_x(at(dy, i * L.dsN + c0 * L.ds, L), at(x, i * L.xsN + c0 * L.xs, L),
                at(dx, i * L.ysN + c0 * L.ys, L), L, mean[p], <double>rstd[p], w, b,
                <real>terms[2 * p], <real>terms[2 * p + 1])


cdef void backward_nchw(const char* dy, const char* x, char* dx, const Layout* L,
                        const real* mean, const real* rstd, const real* weight,
                        const real* bias, double* db, double* ds, double* terms,
                        double* parts, int threads) noexcept nogil:
    """One task per pair; or, with few pairs for the threads (parts != NULL: 2 sums per
    span of each channel), the same arithmetic with the sums parallel over spans and
    grad_x over chunks."""
    cdef Py_ssize_t i, t, p
    cdef Py_ssize_t spans = span_count(L.row_chunks)
    cdef Py_ssize_t items = L.N * L.C * L.row_chunks
    cdef double a, b
    if parts == NULL:
        if threads == 1:
            for p in range(L.N * L.G):
                backward_pair(dy, x, dx, L, p, mean, rstd, weight, bias, db, ds, terms)
        else:
            for p in prange(L.N * L.G, schedule='static', num_threads=threads):
                backward_pair(dy, x, dx, L, p, mean, rstd, weight, bias, db, ds, terms)
        return
    for i in prange(L.N * L.C * spans, schedule='static', num_threads=threads):
        channel_span_sums(dy, x, dx, L, i // spans, i % spans, mean, rstd, weight, bias,
                          &parts[2 * i])
    for i in range(L.N * L.C):
        a = 0
        b = 0
        for t in range(spans):
            a = a + parts[2 * (i * spans + t)]
            b = b + parts[2 * (i * spans + t) + 1]
        db[i] = a
        ds[i] = b
    for p in range(L.N * L.G):
        pair_terms(L, p, rstd, weight, db, ds, terms)
    for i in prange(items, schedule='static', num_threads=threads):
        channel_chunk_grad_x(dy, x, dx, L, i // L.row_chunks, i % L.row_chunks,
                             min(CHUNK, L.S - (i % L.row_chunks) * CHUNK), mean, rstd, weight,
                             bias, terms)


cdef inline void add_sums(Py_ssize_t c0, Py_ssize_t c1, const double* pdb, const double* pds,
                          double* db, double* ds) noexcept nogil:
    """db[c] += pdb[c] and ds[c] += pds[c] for c in [c0, c1)."""
    cdef Py_ssize_t c
    for c in range(c0, c1):
        db[c] = db[c] + pdb[c]
        ds[c] = ds[c] + pds[c]


cdef void span_sums_nhwc(const char* dy, const char* x, char* dx, const Layout* L,
                         Py_ssize_t i, Py_ssize_t t, Py_ssize_t c0, Py_ssize_t c1,
                         const real* coef, double* chunk, double* db,
                         double* ds) noexcept nogil:
    """db[c] = sum(g), ds[c] = sum(g (x - m)) of channels [c0, c1) of sample i over the rows
    of span t: its row chunks' sums added in order (the first's written straight to db and
    ds, the others' to chunk[c], chunk[C + c]); g kept in dx if L.keep_g."""
    cdef Py_ssize_t per = span_chunks(L.row_chunks), j, r0
    for j in range(t * per, min(L.row_chunks, (t + 1) * per)):
        r0 = j * ROW_CHUNK
        rows_grad_sums(at(dy, i * L.dsN + r0 * L.ds + c0, L),
                       at(x, i * L.xsN + r0 * L.xs + c0, L),
                       at(dx, i * L.ysN + r0 * L.ys + c0, L), min(ROW_CHUNK, L.S - r0),
                       c1 - c0, L, coef + c0, coef + L.C + c0, coef + 2 * L.C + c0,
                       (db if j == t * per else chunk) + c0,
                       (ds if j == t * per else chunk + L.C) + c0)
        if j > t * per:
            add_sums(c0, c1, chunk, chunk + L.C, db, ds)


cdef void channel_sums_nhwc(const char* dy, const char* x, char* dx, const Layout* L,
                            Py_ssize_t i, Py_ssize_t c0, Py_ssize_t c1, const real* coef,
                            double* chunk, double* db, double* ds) noexcept nogil:
    """db and ds of channels [c0, c1) of sample i: its spans' sums added in order. chunk:
    4C doubles."""
    cdef Py_ssize_t t
    span_sums_nhwc(dy, x, dx, L, i, 0, c0, c1, coef, chunk, db + i * L.C, ds + i * L.C)
    for t in range(1, span_count(L.row_chunks)):
        span_sums_nhwc(dy, x, dx, L, i, t, c0, c1, coef, chunk, chunk + 2 * L.C,
                       chunk + 3 * L.C)
        add_sums(c0, c1, chunk + 2 * L.C, chunk + 3 * L.C, db + i * L.C, ds + i * L.C)


cdef void grad_coefficients(const Layout* L, Py_ssize_t i, Py_ssize_t first,
                            Py_ssize_t end, const double* terms, real* coef) noexcept nogil:
    """Append the terms c1, c0 of each channel in [first, end) of sample i to coef (m, a, b
    already there)."""
    cdef Py_ssize_t c, p
    for c in range(first, end):
        p = i * L.G + c // L.Cg
        coef[3 * L.C + c] = <real>terms[2 * p]
        coef[4 * L.C + c] = <real>terms[2 * p + 1]


cdef void backward_groups_nhwc(const char* dy, const char* x, char* dx, const Layout* L,
                               Py_ssize_t i, Py_ssize_t g0, Py_ssize_t g1, const real* mean,
                               const real* rstd, const real* weight, const real* bias,
                               double* db, double* ds, double* terms, double* chunk,
                               real* coef) noexcept nogil:
    """Groups [g0, g1) of sample i, from their channels' sums to their grad_x. chunk: 4C
    doubles, coef: 5C reals, of which the groups' channels are used."""
    cdef Py_ssize_t g, c0 = g0 * L.Cg, c1 = g1 * L.Cg
    channel_coefficients(L, i, g0, g1, mean, rstd, weight, bias, coef, coef + L.C,
                         coef + 2 * L.C)
    channel_sums_nhwc(dy, x, dx, L, i, c0, c1, coef, chunk, db, ds)
    for g in range(g0, g1):
        pair_terms(L, i * L.G + g, rstd, weight, db, ds, terms)
    grad_coefficients(L, i, c0, c1, terms, coef)
    rows_grad_x(at(dy, i * L.dsN + c0, L), at(x, i * L.xsN + c0, L), at(dx, i * L.ysN + c0, L),
                L.S, c1 - c0, L, coef + c0, coef + L.C + c0, coef + 2 * L.C + c0,
                coef + 3 * L.C + c0, coef + 4 * L.C + c0)


cdef void backward_nhwc(const char* dy, const char* x, char* dx, const Layout* L,
                        const real* mean, const real* rstd, const real* weight,
                        const real* bias, double* db, double* ds, double* terms,
                        double* chunk, double* parts, real* coef, bint split,
                        int threads) noexcept nogil:
    """One task per sample; or, split, as forward_nhwc: with few row chunks (by_groups), one
    per range of whole groups of a sample; else the spans of row chunks in parallel for the
    sums and row chunks (cut by channel ranges when few) for grad_x. chunk: 4C doubles and
    coef: 5C reals per thread, or per sample when split; parts (split only): 2C doubles
    per span of a sample and per thread."""
    cdef Py_ssize_t i, j, k, g, r0, c0, c1, t
    cdef Py_ssize_t ranges = channel_ranges(L, threads)
    cdef Py_ssize_t spans = span_count(L.row_chunks)
    # the output pass by row chunks, and by channel ranges too when the chunks are few
    cdef Py_ssize_t cuts = ranges if L.N * L.row_chunks < OUTPUT_CUT_CHUNKS * threads else 1
    cdef Py_ssize_t items = L.N * L.row_chunks * cuts
    cdef Py_ssize_t granges = min(<Py_ssize_t>threads, L.G)
    cdef const real* cf
    if not split:
        if threads == 1:
            for i in range(L.N):
                backward_groups_nhwc(dy, x, dx, L, i, 0, L.G, mean, rstd, weight, bias, db, ds,
                                     terms, chunk, coef)
        else:
            for i in prange(L.N, schedule='static', num_threads=threads):
                t = threadid()
                backward_groups_nhwc(dy, x, dx, L, i, 0, L.G, mean, rstd, weight, bias, db, ds,
                                     terms, chunk + t * 4 * L.C, coef + t * 5 * L.C)
        return
    if by_groups(cuts, ranges, granges):
        for j in prange(L.N * granges, schedule='static', num_threads=threads):
            i = j // granges
            backward_groups_nhwc(dy, x, dx, L, i, group_start(L, granges, j % granges),
                                 group_start(L, granges, j % granges + 1), mean, rstd, weight,
                                 bias, db, ds, terms, chunk + i * 4 * L.C, coef + i * 5 * L.C)
        return
    for i in range(L.N):
        channel_coefficients(L, i, 0, L.G, mean, rstd, weight, bias, coef + i * 5 * L.C,
                             coef + i * 5 * L.C + L.C, coef + i * 5 * L.C + 2 * L.C)
    for j in prange(L.N * spans, schedule='static', num_threads=threads):
        t = threadid()
        i = j // spans
        # a sample's first span straight to its sums, as channel_sums_nhwc
        span_sums_nhwc(dy, x, dx, L, i, j % spans, 0, L.C, coef + i * 5 * L.C,
                       parts + (L.N * spans + t) * 2 * L.C,
                       db + i * L.C if j % spans == 0 else parts + j * 2 * L.C,
                       ds + i * L.C if j % spans == 0 else parts + j * 2 * L.C + L.C)
    for i in range(L.N):  # the other spans added in order: as channel_sums_nhwc
        for k in range(1, spans):
            add_sums(0, L.C, parts + (i * spans + k) * 2 * L.C,
                     parts + (i * spans + k) * 2 * L.C + L.C, db + i * L.C, ds + i * L.C)
        for g in range(L.G):
            pair_terms(L, i * L.G + g, rstd, weight, db, ds, terms)
        grad_coefficients(L, i, 0, L.C, terms, coef + i * 5 * L.C)
    for j in prange(items, schedule='static', num_threads=threads):
        i = j // (L.row_chunks * cuts)
        r0 = (j // cuts % L.row_chunks) * ROW_CHUNK
        c0 = range_start(L, cuts, j % cuts)
        c1 = range_start(L, cuts, j % cuts + 1)
        cf = coef + i * 5 * L.C + c0
        rows_grad_x(at(dy, i * L.dsN + r0 * L.ds + c0, L), at(x, i * L.xsN + r0 * L.xs + c0, L),
                    at(dx, i * L.ysN + r0 * L.ys + c0, L), min(ROW_CHUNK, L.S - r0), c1 - c0, L,
                    cf, cf + L.C, cf + 2 * L.C, cf + 3 * L.C, cf + 4 * L.C)


cdef void param_grads(const Layout* L, const real* rstd, double* db, double* ds,
                      real* grad_weight, real* grad_bias) noexcept nogil:
    """grad_bias_c = sum_n db[n, c];  grad_weight_c = sum_n rstd[n, g] * ds[n, c]
    (= sum(g * xhat) over the channel), summed over n in order, sample by sample across
    all channels (loops the compiler vectorizes), in place in row 0 of db and ds."""
    cdef Py_ssize_t n, g, c
    cdef double r
    if L.N == 0:  # empty sums (and no row 0 to hold them)
        for c in range(L.C):
            grad_weight[c] = 0
            grad_bias[c] = 0
        return
    for n in range(L.N):
        for g in range(L.G):
            r = <double>rstd[n * L.G + g]
            if n == 0:
                for c in range(g * L.Cg, (g + 1) * L.Cg):
                    db[c] = 0 + db[c]
                    ds[c] = 0 + r * ds[c]
            else:
                for c in range(g * L.Cg, (g + 1) * L.Cg):
                    db[c] = db[c] + db[n * L.C + c]
                    ds[c] = ds[c] + r * ds[n * L.C + c]
    for c in range(L.C):
        grad_weight[c] = <real>ds[c]
        grad_bias[c] = <real>db[c]


# ---------------------------------------------------------------------------------------
# Argument handling. Kept in Cython and on NumPy's C API: a tiny call must cost a couple
# of microseconds, not tens of them.

cdef object F16 = np.dtype(np.float16)
cdef object F32 = np.dtype(np.float32)
cdef object F64 = np.dtype(np.float64)
cdef dict ACTIVATIONS = {None: GN_ACT_NONE, "relu": GN_ACT_RELU, "silu": GN_ACT_SILU}


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


def cpu_has_x86_64_v4():
    """Whether this CPU runs x86-64-v4 code (x86-64-v3 and AVX-512 F, BW, DQ, VL)."""
    return bool(gn_cpu_has_x86_64_v4())


cdef int plan_threads(object num_threads, Py_ssize_t work) except -1:
    """Threads for a call: num_threads (or the OpenMP default), but no more than the work
    keeps busy. The thread count never changes the results, only the speed."""
    cdef Py_ssize_t threads
    if num_threads is None:
        threads = gn_max_threads()
    elif as_int(num_threads, "num_threads", &threads) or threads < 1:
        raise ValueError(f"num_threads={int_text(num_threads)} "
                         + ("must be at least 1" if threads < 1 else
                            f"is out of range: use 1 to {PY_SSIZE_T_MAX}")
                         + " (or None for the OpenMP default)")
    return <int>max(1, min(threads, work // MIN_WORK_PER_THREAD))


cdef int as_int(object value, str name, Py_ssize_t* result) except -1:
    """An integer argument (int, NumPy integer, anything with __index__; not a bool) into
    *result. Returns 1 if it does not fit a Py_ssize_t (*result is then PY_SSIZE_T_MAX or
    PY_SSIZE_T_MIN, by its sign): the caller raises its own ValueError, naming the valid
    range. Anything else is a TypeError."""
    cdef int overflow = 0
    cdef long long v
    if type(value) is not int:
        if isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name}={value!r} must be an integer, not a bool")
        try:
            value = operator.index(value)
        except TypeError:
            raise TypeError(f"{name}={shown(value)} must be an integer") from None
    v = PyLong_AsLongLongAndOverflow(value, &overflow)
    if overflow or v > PY_SSIZE_T_MAX or v < PY_SSIZE_T_MIN:
        result[0] = PY_SSIZE_T_MIN if (overflow < 0 if overflow else v < 0) else PY_SSIZE_T_MAX
        return 1
    result[0] = <Py_ssize_t>v
    return 0


cdef str int_text(object value):
    """An integer argument as a message shows it: in full up to 40 digits, else rounded
    (str() of an int of more than 4300 digits raises)."""
    value = operator.index(value)
    if -10**40 < value < 10**40:
        return str(value)
    magnitude = abs(value)
    exponent = (magnitude.bit_length() - 1) * 30103 // 100000  # floor(log10) or one less
    while 10 ** (exponent + 1) <= magnitude:
        exponent += 1
    lead = magnitude // 10 ** (exponent - 2)
    return (f"{'-' if value < 0 else ''}{lead // 100}.{lead % 100:02d}e+{exponent} "
            f"(an integer of {exponent + 1} digits)")


cdef str shown(object value):
    """A short repr of an argument for a message."""
    if isinstance(value, int) and not isinstance(value, bool):
        return int_text(value)
    try:
        text = repr(value)
    except Exception:
        return f"<{type(value).__name__} object>"
    return text if len(text) <= 60 else text[:50] + "..." + text[-7:]


cdef str named(str name, object obj):
    """How a message names an array argument: by name when it is an ndarray, else by name
    and value (a list, a scalar, None, a string: what it was converted from)."""
    return name if isinstance(obj, np.ndarray) else f"{name}={shown(obj)}"


cdef str valid_divisors(Py_ssize_t C, object near):
    """A message's list of the valid group counts (or sizes), the divisors of C: all of
    them, or the 24 around `near` when there are more."""
    cdef Py_ssize_t d = 1
    cdef list small = [], large = []
    if C > (<Py_ssize_t>1) << 40:  # sqrt(C) trial divisions would take seconds
        return f"valid values are the divisors of C={C}"
    while d * d <= C:
        if C % d == 0:
            small.append(d)
            if d * d != C:
                large.append(C // d)
        d += 1
    divisors = small + large[::-1]
    if len(divisors) > 24:
        at = sum([1 for v in divisors if v < near])
        lo = max(0, min(at - 12, len(divisors) - 24))
        text = (("..., " if lo else "") + ", ".join([str(v) for v in divisors[lo:lo + 24]])
                + (", ..." if lo + 24 < len(divisors) else ""))
    else:
        text = ", ".join([str(v) for v in divisors])
    return f"valid values for C={C}: {text}"


cdef Py_ssize_t resolve_groups(object num_groups, object group_size, Py_ssize_t C) except -1:
    """G from exactly one of num_groups and group_size (channels per group)."""
    cdef Py_ssize_t k
    if (num_groups is None) == (group_size is None):
        raise ValueError("give exactly one of num_groups and group_size (channels per group); "
                         f"got num_groups={shown(num_groups)}, group_size={shown(group_size)}")
    if C == 0:
        raise ValueError("x has C=0 channels: nothing to group (C must be at least 1)")
    name = "num_groups" if num_groups is not None else "group_size"
    value = num_groups if num_groups is not None else group_size
    if as_int(value, name, &k) or k <= 0 or C % k:
        value = operator.index(value)
        raise ValueError((f"{name}={int_text(value)} must be positive" if value <= 0 else
                          f"C={C} is not divisible by {name}={int_text(value)}")
                         + "; " + valid_divisors(C, value))
    return k if num_groups is not None else C // k


cdef int activation_code(object activation) except -1:
    try:
        return ACTIVATIONS[activation]
    except (KeyError, TypeError):
        raise ValueError(f"activation={shown(activation)} is not supported; choose None, "
                         "'relu' or 'silu'") from None


cdef bint channels_last(object channel_axis, int nd) except -1:
    """Whether channel_axis names the last axis (channels-last) rather than axis 1."""
    if type(channel_axis) is int and channel_axis == 1:
        return False
    cdef Py_ssize_t k, axis
    if not as_int(channel_axis, "channel_axis", &k):
        axis = k + nd if k < 0 else k
        if axis == 1:
            return False
        if axis == nd - 1 and nd > 2:
            return True
    raise ValueError(f"channel_axis={int_text(channel_axis)} is not supported for a "
                     f"{nd}-dimensional x: use 1 (channels first, (N, C, *spatial)) or -1 "
                     "(channels last, (N, *spatial, C))")


cdef tuple storage_of(cnp.ndarray arr, str name, object obj):
    """(storage kind, storage dtype, compute type number) for a data array.

    float32, float64, float16 and bfloat16 (from ml_dtypes) are stored as they are; the
    arithmetic is float32 for all but float64. Integers, booleans and longer floats are
    converted to float64, as numpy.mean does. Anything else is a TypeError.
    """
    cdef int t = cnp.PyArray_TYPE(arr)
    if t == cnp.NPY_FLOAT32:
        return ST_F32, F32, cnp.NPY_FLOAT32
    if t == cnp.NPY_FLOAT64:
        return ST_F64, F64, cnp.NPY_FLOAT64
    if t == cnp.NPY_FLOAT16:
        return ST_F16, F16, cnp.NPY_FLOAT32
    dt = arr.dtype
    if dt.name == "bfloat16" and dt.itemsize == 2:
        return ST_BF16, dt.newbyteorder("="), cnp.NPY_FLOAT32
    if dt.kind in "fiub":
        return ST_F64, F64, cnp.NPY_FLOAT64
    raise TypeError(f"{named(name, obj)} has dtype {dt}: gncpu normalizes real numbers "
                    "(floating point; integers and booleans are converted to float64)")


cdef bint kernel_strides(cnp.ndarray a, bint last, Py_ssize_t* sN, Py_ssize_t* s):
    """Whether `a` (ndim >= 2) can be read by the kernels as it is: aligned, native byte
    order, element strides, and unit stride along S (channels-first) or C (channels-last)
    with the other axes collapsible. If so, its element strides along N and along C
    (channels-first) or S (channels-last). An axis of length 1 may have any stride (NumPy
    calls such arrays contiguous and aligned whatever it is): its stride is never taken."""
    cdef int k, nd = cnp.PyArray_NDIM(a)
    cdef Py_ssize_t item = cnp.PyArray_ITEMSIZE(a), expected = item, inner = 0
    cdef bint found = False
    cdef cnp.npy_intp* dims = cnp.PyArray_DIMS(a)
    cdef cnp.npy_intp* strides = cnp.PyArray_STRIDES(a)
    if not (cnp.PyArray_ISALIGNED(a) and cnp.PyArray_ISNOTSWAPPED(a)) \
            or dims[0] != 1 and strides[0] % item:
        return False
    if not last:
        for k in range(nd - 1, 1, -1):
            if dims[k] != 1 and strides[k] != expected:
                return False
            expected *= dims[k]
        if dims[1] != 1 and strides[1] % item:
            return False
        sN[0] = strides[0] // item if dims[0] != 1 else 0
        s[0] = strides[1] // item if dims[1] != 1 else 0
        return True
    if dims[nd - 1] != 1 and strides[nd - 1] != item:
        return False
    for k in range(nd - 2, 0, -1):
        if dims[k] == 1:
            continue
        if not found:
            if strides[k] % item:
                return False
            found = True
            inner = strides[k] // item
            expected = strides[k] * dims[k]
        elif strides[k] != expected:
            return False
        else:
            expected *= dims[k]
    sN[0] = strides[0] // item if dims[0] != 1 else 0
    s[0] = inner if found else dims[nd - 1]
    return True


cdef cnp.ndarray kernel_array(object obj, object storage, bint last, Py_ssize_t* sN,
                              Py_ssize_t* s):
    """obj itself when the kernels can read it, else a C-contiguous copy in the storage
    dtype (the caller's array is never written); its element strides."""
    cdef cnp.ndarray arr = obj
    if not cnp.PyArray_EquivTypes(arr.descr, <cnp.dtype>storage) \
            or not kernel_strides(arr, last, sN, s):
        arr = aligned_copy(arr, storage)
        if not kernel_strides(arr, last, sN, s) and cnp.PyArray_SIZE(arr) > 0:
            raise RuntimeError(f"gncpu cannot read a {arr.dtype} array with strides "
                               f"{(<object>arr).strides} even after copying it: please "
                               "report this")
    return arr


cdef cnp.ndarray aligned_copy(cnp.ndarray arr, object dtype):
    """arr as a C-contiguous, aligned array of dtype: np.ascontiguousarray returns a
    contiguous array at an address not a multiple of its item size (a view into a byte
    buffer) as it is, so such an array is copied."""
    arr = np.ascontiguousarray(arr, dtype=dtype)
    return arr if cnp.PyArray_ISALIGNED(arr) else arr.copy()


cdef cnp.ndarray to_array(object obj, str name):
    """np.asarray(obj), naming the argument when it cannot be converted (ragged lists)."""
    try:
        return np.asarray(obj)
    except (ValueError, TypeError) as error:
        raise type(error)(f"{name}={shown(obj)} is not an array of numbers: {error}") from None


cdef cnp.ndarray as_data(object obj, str name, tuple shape):
    """A data argument that must have x's shape, as an array of real numbers."""
    cdef cnp.ndarray arr = obj if type(obj) is np.ndarray else to_array(obj, name)
    storage_of(arr, name, obj)
    if (<object>arr).shape != shape:
        raise ValueError(f"{named(name, obj)} has shape {(<object>arr).shape}; expected x's "
                         f"shape {shape}")
    return arr


cdef cnp.ndarray channel_vector(object obj, str name, Py_ssize_t C, int typenum):
    """A (C,) parameter as a contiguous array of type typenum, or None."""
    if obj is None:
        return None
    cdef cnp.ndarray arr = obj if type(obj) is np.ndarray else to_array(obj, name)
    cdef int t = cnp.PyArray_TYPE(arr)
    cdef cnp.ndarray out
    if cnp.PyArray_NDIM(arr) == 1 and cnp.PyArray_DIMS(arr)[0] == C:
        if t == typenum and cnp.PyArray_ISCARRAY_RO(arr):
            return arr
        # The usual other float dtypes, converted without np.ascontiguousarray, whose
        # 0.3 us per call doubled the time of a small float16 call with float16 weights.
        if t == cnp.NPY_FLOAT16 and typenum == cnp.NPY_FLOAT32 and cnp.PyArray_ISCARRAY_RO(arr):
            out = cnp.PyArray_EMPTY(1, cnp.PyArray_DIMS(arr), cnp.NPY_FLOAT32, 0)
            gn_halves_to_floats(<const uint16_t*>cnp.PyArray_DATA(arr),
                                <float*>cnp.PyArray_DATA(out), C)
            return out
        if t == cnp.NPY_FLOAT16 or t == cnp.NPY_FLOAT32 or t == cnp.NPY_FLOAT64:
            return cnp.PyArray_FROMANY(arr, typenum, 1, 1,
                                       cnp.NPY_ARRAY_IN_ARRAY | cnp.NPY_ARRAY_FORCECAST)
    if arr.dtype.kind not in "fiub" and arr.dtype.name != "bfloat16":
        raise TypeError(f"{named(name, obj)} has dtype {arr.dtype}: expected real numbers "
                        "(floating point, integers or booleans)")
    if cnp.PyArray_NDIM(arr) != 1 or cnp.PyArray_DIMS(arr)[0] != C:
        raise ValueError(f"{named(name, obj)} has shape {(<object>arr).shape}; expected (C,) "
                         f"= ({C},)")
    return aligned_copy(arr, np.dtype(F32 if typenum == cnp.NPY_FLOAT32 else F64))


cdef cnp.ndarray stats_array(object obj, str name, Py_ssize_t N, Py_ssize_t G, int typenum,
                             cnp.ndarray x):
    """mean or rstd as a contiguous (N, G) array of type typenum: group_norm returns them
    so; other real types (float16, bfloat16, integers) are converted."""
    cdef cnp.ndarray arr = obj if type(obj) is np.ndarray else to_array(obj, name)
    if cnp.PyArray_TYPE(arr) == typenum and cnp.PyArray_ISCARRAY_RO(arr) \
            and cnp.PyArray_NDIM(arr) == 2 and cnp.PyArray_DIMS(arr)[0] == N \
            and cnp.PyArray_DIMS(arr)[1] == G:
        return arr
    if arr.dtype.kind not in "fiu" and arr.dtype.name != "bfloat16":
        raise TypeError(f"{named(name, obj)} has dtype {arr.dtype}; expected "
                        f"{F32 if typenum == cnp.NPY_FLOAT32 else F64}, the dtype of "
                        f"group_norm's statistics for x of dtype {x.dtype}")
    if (<object>arr).shape != (N, G):
        raise ValueError(f"{named(name, obj)} has shape {(<object>arr).shape}; expected (N, G) "
                         f"= ({N}, {G})")
    return aligned_copy(arr, np.dtype(F32 if typenum == cnp.NPY_FLOAT32 else F64))


cdef double check_eps(object eps) except? -1:
    cdef double e
    try:
        e = eps
    except TypeError:
        raise TypeError(f"eps={shown(eps)} must be a real number") from None
    except OverflowError:  # an int or Fraction beyond float64
        raise ValueError(f"eps={shown(eps)} is out of float64's range: it must be finite and "
                         "non-negative") from None
    if not (e >= 0 and e < float("inf")):
        raise ValueError(f"eps={shown(eps)} must be finite and non-negative")
    return e


cdef inline char* ptr(cnp.ndarray a):
    return NULL if a is None else <char*>cnp.PyArray_DATA(a)


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


cdef bint overlaps(cnp.ndarray a, cnp.ndarray b):
    """Whether the memory spans of a and b intersect (a cheap bounds test)."""
    cdef char* lo_a
    cdef char* hi_a
    cdef char* lo_b
    cdef char* hi_b
    if a is None or b is None or cnp.PyArray_SIZE(a) == 0 or cnp.PyArray_SIZE(b) == 0:
        return False
    span(a, &lo_a, &hi_a)
    span(b, &lo_b, &hi_b)
    return lo_a < hi_b and lo_b < hi_a


cdef bint same_view(cnp.ndarray a, cnp.ndarray b):
    return (cnp.PyArray_DATA(a) == cnp.PyArray_DATA(b)
            and (<object>a).strides == (<object>b).strides)


cdef cnp.ndarray writable_target(object target, str name, cnp.ndarray x, object storage,
                                 bint last, Py_ssize_t* sN, Py_ssize_t* s, tuple readers):
    """target itself when the kernels may write it directly, else None: the kernels then
    write a temporary that is copied into target afterwards. An element-wise alias of an
    input (in place) is direct; any other overlap with an input goes through a temporary."""
    cdef cnp.ndarray o, r
    if not isinstance(target, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(target).__name__}")
    o = target
    if not cnp.PyArray_SAMESHAPE(o, x):
        raise ValueError(f"{name} has shape {(<object>o).shape}; expected x's shape "
                         f"{(<object>x).shape}")
    if not (cnp.PyArray_EquivTypes(o.descr, <cnp.dtype>storage)
            or o.dtype == x.dtype and o.dtype.newbyteorder("=") == storage):
        raise ValueError(f"{name} has dtype {o.dtype}; expected {storage} for this x")
    if not cnp.PyArray_ISWRITEABLE(o):
        raise ValueError(f"{name} is read-only: pass a writeable array")
    if not kernel_strides(o, last, sN, s):
        return None
    for r in readers:
        if overlaps(o, r) and not same_view(o, r):
            return None
    return o


cdef void data_shape(cnp.ndarray arr, bint last, Py_ssize_t* N, Py_ssize_t* C,
                     Py_ssize_t* S) noexcept:
    cdef int nd = cnp.PyArray_NDIM(arr)
    N[0] = cnp.PyArray_DIMS(arr)[0]
    if last:
        C[0] = cnp.PyArray_DIMS(arr)[nd - 1]
        S[0] = cnp.PyArray_MultiplyList(cnp.PyArray_DIMS(arr) + 1, nd - 2)
    else:
        C[0] = cnp.PyArray_DIMS(arr)[1]
        S[0] = cnp.PyArray_MultiplyList(cnp.PyArray_DIMS(arr) + 2, nd - 2)


cdef cnp.ndarray empty_like_c(cnp.ndarray like, object storage):
    """A C-contiguous array of like's shape in the storage dtype."""
    if storage is F32 or storage is F64 or storage is F16:
        return cnp.PyArray_EMPTY(cnp.PyArray_NDIM(like), cnp.PyArray_DIMS(like),
                                 (<cnp.dtype>storage).type_num, 0)
    return np.empty((<object>like).shape, dtype=storage)


cdef cnp.ndarray data_input(object x, str what):
    cdef cnp.ndarray arr = x if type(x) is np.ndarray else to_array(x, what)
    if cnp.PyArray_NDIM(arr) < 2:
        storage_of(arr, what, x)  # None, a string or an object is a TypeError first
        raise ValueError(f"{named(what, x)} has shape {(<object>arr).shape}; expected "
                         "(N, C, *spatial) with at least 2 dimensions")
    return arr


def group_norm(x, num_groups=None, weight=None, bias=None, eps=1e-5, *, group_size=None,
               channel_axis=1, activation=None, residual=None, residual_out=None, out=None,
               return_stats=False, num_threads=None):
    """Group Normalization of ``x`` of shape (N, C, *spatial).

    The C channels are split into G consecutive groups. For each sample n and group g,
    the mean and the biased variance are taken over the group's C/G channels and all
    spatial positions; then, per channel c of group g::

        y[n, c] = act((x[n, c] - mean[n, g]) * rstd[n, g] * weight[c] + bias[c])
        rstd[n, g] = 1 / sqrt(var[n, g] + eps)

    Statistics are per group, the affine is per channel. G = 1 is Layer Norm over
    (C, *spatial); G = C is Instance Norm.

    Parameters
    ----------
    x : array_like, shape (N, C, *spatial), or (N, *spatial, C) with ``channel_axis=-1``
        Any number of spatial dimensions, including none. float32, float64, float16 and
        bfloat16 (``ml_dtypes``) are computed natively, the last two with float32
        arithmetic and statistics; integers and booleans are converted to float64, as
        ``numpy.mean`` does. Any memory layout is accepted; ``x`` is never modified.
    num_groups : int, optional
        G, which must divide C. Give exactly one of ``num_groups`` and ``group_size``.
    weight, bias : array_like, shape (C,), optional
        Per-channel scale (gamma, default 1) and shift (beta, default 0), used in the
        compute precision (float32 except for float64 input).
    eps : float, default 1e-5
        Added to the variance; finite and non-negative.
    group_size : int, optional
        Channels per group (C / G), the alternative to ``num_groups``.
    channel_axis : {1, -1}, default 1
        Where the channels are: axis 1 (NCHW) or the last axis (channels-last, NHWC),
        each with its own kernel; no transposing copy is made.
    activation : {None, 'relu', 'silu'}, default None
        Applied to the normalized output in the same pass: ``silu(t) = t * sigmoid(t)``.
    residual : array_like, optional
        Same shape as ``x``: ``x + residual`` is normalized, without a separate pass to
        add them (the sum is rounded to x's dtype first).
    residual_out : ndarray, optional
        With ``residual``: receives ``x + residual``, which the next residual block needs.
    out : ndarray, optional
        Where to write y: x's shape and dtype. May be ``x`` itself.
    return_stats : bool, default False
        Also return ``mean`` and ``rstd``, shape (N, G), float64 for float64 input and
        float32 otherwise; pass them to :func:`group_norm_backward`.
    num_threads : int, optional
        OpenMP threads to use; default: the OpenMP setting (``OMP_NUM_THREADS``,
        threadpoolctl). Results are bitwise identical for every thread count.

    Returns
    -------
    y : ndarray
        Same shape and dtype as ``x`` (float64 for integer input), C-contiguous unless
        ``out`` is given. With ``return_stats``, the tuple ``(y, mean, rstd)``.

    Raises
    ------
    ValueError
        C not divisible by ``num_groups`` (the message lists the divisors), an integer
        argument out of range (``num_threads < 1``, beyond int64), a wrong shape of
        ``weight``, ``bias``, ``residual`` or ``out``, a wrong dtype or a read-only
        ``out``, a negative or non-finite ``eps``, ``x.ndim < 2``, an unknown
        ``activation`` or ``channel_axis``. Each message names the offending value and
        what would be valid.
    TypeError
        Complex, object or string data (None, too); a non-integer ``num_groups``,
        ``group_size``, ``channel_axis`` or ``num_threads`` (floats and bools included).

    Notes
    -----
    Statistics are one-pass moments of fixed chunks (2048 elements, or 64 rows
    channels-last) around a pilot mean, merged with Chan's formula in float64 in a fixed
    order. The chunks depend only on the group's shape, so a sample's output is bitwise
    the same alone or inside any batch, and for any number of threads. The output is
    computed as ``act((x - mean) * (rstd * weight[c]) + bias[c])``.

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
    cdef cnp.ndarray arr, x3, y3, r3 = None, s3 = None, w, b, mean, rstd, scratch = None
    cdef cnp.ndarray outarr = None, resout = None
    cdef Py_ssize_t N, C, S, G, sN = 0, s = 0
    cdef int threads, typenum, st, act
    cdef bint last, split
    cdef double e
    cdef Layout L
    cdef cnp.npy_intp stat_dims[2]
    arr = data_input(x, "x")
    st, storage, typenum = storage_of(arr, "x", x)
    last = channels_last(channel_axis, cnp.PyArray_NDIM(arr))
    data_shape(arr, last, &N, &C, &S)
    G = resolve_groups(num_groups, group_size, C)
    w = channel_vector(weight, "weight", C, typenum)
    b = channel_vector(bias, "bias", C, typenum)
    e = check_eps(eps)
    act = GN_ACT_NONE if activation is None else activation_code(activation)
    x3 = kernel_array(arr, storage, last, &sN, &s)
    L = make_layout(N, C, S, G, st, cnp.PyArray_ITEMSIZE(x3), last, act, sN, s,
                    residual is None)
    shape = (<object>arr).shape
    if residual is not None:
        r3 = kernel_array(as_data(residual, "residual", shape), storage, last, &L.rsN, &L.rs)
    elif residual_out is not None:
        raise ValueError("residual_out is given without residual: pass residual too, or "
                         "leave residual_out None")
    readers = (x3,) if r3 is None else (x3, r3)
    y3 = None
    if out is not None:
        y3 = writable_target(out, "out", arr, storage, last, &L.ysN, &L.ys, readers)
        outarr = out
    if y3 is None:
        y3 = empty_like_c(arr, storage)
        kernel_strides(y3, last, &L.ysN, &L.ys)
    if residual_out is not None:
        s3 = writable_target(residual_out, "residual_out", arr, storage, last, &L.ssN, &L.ss,
                             readers)
        resout = residual_out
        if overlaps(resout, y3) or (outarr is not None and overlaps(resout, outarr)):
            raise ValueError("out and residual_out overlap in memory: pass separate arrays")
        if s3 is None:
            s3 = empty_like_c(arr, storage)
            kernel_strides(s3, last, &L.ssN, &L.ss)
    elif r3 is not None:
        s3 = y3             # the sum lives in the output until it is normalized in place
        L.ssN = L.ysN
        L.ss = L.ys
    # weight or bias inside an output would be overwritten while still being read
    if outarr is not None or resout is not None:
        if w is not None and (overlaps(w, y3) or s3 is not None and overlaps(w, s3)):
            w = w.copy()
        if b is not None and (overlaps(b, y3) or s3 is not None and overlaps(b, s3)):
            b = b.copy()
    stat_dims[0] = N
    stat_dims[1] = G
    mean = cnp.PyArray_EMPTY(2, stat_dims, typenum, 0)
    rstd = cnp.PyArray_EMPTY(2, stat_dims, typenum, 0)
    threads = plan_threads(num_threads, N * C * S)
    # y written with non-temporal stores (see STREAM_BYTES); not over a sum in cache
    L.stream = r3 is None and N * C * S * L.item >= STREAM_BYTES and (
        last or S * L.item >= STREAM_RUN_BYTES)
    cdef char* pw = ptr(w)
    cdef char* pb = ptr(b)
    cdef char* pm = ptr(mean)
    cdef char* pr = ptr(rstd)
    cdef char* px = ptr(x3)
    cdef char* pres = ptr(r3)
    cdef char* ps = ptr(s3)
    cdef char* py = ptr(y3)
    cdef char* pscr
    cdef Py_ssize_t tasks, parts
    if S == 0:  # empty groups: nothing to write, statistics undefined
        mean.fill(np.nan)
        rstd.fill(np.nan)
    elif not last:
        split = threads > 1 and N * G < 2 * threads
        if split:
            scratch = np.empty(3 * N * G * span_count(L.rows * L.row_chunks), dtype=F64)
        pscr = ptr(scratch)
        with nogil:
            if typenum == cnp.NPY_FLOAT32:
                forward_nchw(px, pres, ps, py, &L, e, <float*>pw, <float*>pb, <float*>pm,
                             <float*>pr, <Moments*>pscr, threads)
            else:
                forward_nchw(px, pres, ps, py, &L, e, <double*>pw, <double*>pb, <double*>pm,
                             <double*>pr, <Moments*>pscr, threads)
    else:
        split = threads > 1 and N < 2 * threads
        # Per thread, or per sample when split (then N < 2 * threads): a row chunk's and a
        # span's moments and the channels' merged moments (6C); when split, per span of a
        # sample and per thread, 2C for the spans' moments in parallel; then per thread or
        # sample the coefficients (3C, in float64 slots whatever the compute type, and a
        # vector to spare for aligned_like).
        tasks = N if split else threads
        parts = (N * span_count(L.row_chunks) + threads) * 2 * C if split else 0
        scratch = np.empty(6 * tasks * C + parts + 3 * tasks * C + GN_VBYTES // 8, dtype=F64)
        pscr = ptr(scratch)
        with nogil:
            if typenum == cnp.NPY_FLOAT32:
                forward_nhwc(px, pres, ps, py, &L, e, <float*>pw, <float*>pb, <float*>pm,
                             <float*>pr, <double*>pscr, <double*>pscr + 6 * tasks * C,
                             <float*>(<double*>pscr + 6 * tasks * C + parts), split, threads)
            else:
                forward_nhwc(px, pres, ps, py, &L, e, <double*>pw, <double*>pb, <double*>pm,
                             <double*>pr, <double*>pscr, <double*>pscr + 6 * tasks * C,
                             <double*>pscr + 6 * tasks * C + parts, split, threads)
    if resout is not None and s3 is not resout:
        np.copyto(resout, s3)
    if outarr is not None:
        if y3 is not outarr:
            np.copyto(outarr, y3)
        y = outarr
    else:
        y = y3
    return (y, mean, rstd) if return_stats else y


def group_norm_backward(grad_out, x, mean, rstd, num_groups=None, weight=None, *, bias=None,
                        activation=None, group_size=None, channel_axis=1, num_threads=None):
    """Gradients of Group Norm with respect to ``x``, ``weight`` and ``bias``.

    With ``xhat = (x - mean) * rstd``, ``g`` the gradient reaching the affine (``grad_out``,
    or ``grad_out * act'(xhat * weight + bias)`` with an activation), ``dxhat = g * weight[c]``
    and ``<.>`` the mean over a group's C/G x spatial elements::

        grad_x      = rstd * (dxhat - <dxhat> - xhat * <dxhat * xhat>)
        grad_weight = sum over (n, spatial) of g * xhat
        grad_bias   = sum over (n, spatial) of g

    Parameters
    ----------
    grad_out : array_like, shape of ``x``
        Gradient of the loss with respect to the forward output y.
    x : array_like, shape (N, C, *spatial), or (N, *spatial, C) with ``channel_axis=-1``
        The forward pass's input (with a residual: the sum ``x + residual``).
    mean, rstd : array_like, shape (N, G)
        The statistics :func:`group_norm` returned with ``return_stats=True`` (float32, or
        float64 for float64 and integer ``x``); other real dtypes (float16, bfloat16,
        integers) are converted to that one.
    num_groups : int, optional
        G; give exactly one of ``num_groups`` and ``group_size``.
    weight : array_like, shape (C,), optional
        The forward pass's weight (default 1).
    bias : array_like, shape (C,), optional
        The forward pass's bias; only needed with an ``activation``.
    activation : {None, 'relu', 'silu'}, default None
        The forward pass's activation: the gradients are those of the composed function.
    group_size : int, optional
        Channels per group, the alternative to ``num_groups``.
    channel_axis : {1, -1}, default 1
        As in :func:`group_norm`.
    num_threads : int, optional
        As in :func:`group_norm`; results are bitwise identical for every thread count.

    Returns
    -------
    grad_x : ndarray
        x's shape, in x's dtype (float64 for integer input).
    grad_weight, grad_bias : ndarray, shape (C,)
        Always returned, also without ``weight``; float64 for float64 input, else float32.

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
    cdef cnp.ndarray arr, dyarr, x3, dy3, dx3, w, b, m, r, buf, gw, gb
    cdef Py_ssize_t N, C, S, G, sN = 0, s = 0, chunks, tasks = 0, spans
    cdef int threads, typenum, st, act
    cdef bint last, split
    cdef Layout L
    arr = data_input(x, "x")
    st, storage, typenum = storage_of(arr, "x", x)
    dyarr = as_data(grad_out, "grad_out", (<object>arr).shape)
    last = channels_last(channel_axis, cnp.PyArray_NDIM(arr))
    data_shape(arr, last, &N, &C, &S)
    G = resolve_groups(num_groups, group_size, C)
    m = stats_array(mean, "mean", N, G, typenum, arr)
    r = stats_array(rstd, "rstd", N, G, typenum, arr)
    w = channel_vector(weight, "weight", C, typenum)
    b = channel_vector(bias, "bias", C, typenum)
    act = GN_ACT_NONE if activation is None else activation_code(activation)
    x3 = kernel_array(arr, storage, last, &sN, &s)
    L = make_layout(N, C, S, G, st, cnp.PyArray_ITEMSIZE(x3), last, act, sN, s, False)
    dy3 = kernel_array(dyarr, storage, last, &L.dsN, &L.ds)
    dx3 = empty_like_c(arr, storage)
    kernel_strides(dx3, last, &L.ysN, &L.ys)
    threads = plan_threads(num_threads, N * C * S)
    L.keep_g = act != GN_ACT_NONE and (st == ST_F32 or st == ST_F64)
    if not last:
        # With g kept in grad_x, its lines are already in cache when grad_x is written.
        L.stream = not L.keep_g and (
            (N * C * S * L.item >= STREAM_BYTES and S * L.item >= STREAM_RUN_BYTES)
            or (N * C * S * L.item >= STREAM_LONG_BYTES and S * L.item >= STREAM_LONG_RUN_BYTES))
        split = threads > 1 and N * G < 2 * threads
        chunks = 2 * N * C * span_count(L.row_chunks) if split else 0
    else:
        split = threads > 1 and N < 2 * threads
        tasks = N if split else threads
        spans = (N * span_count(L.row_chunks) + threads) * 2 * C if split else 0
        chunks = 9 * tasks * C + spans
    # Scratch: db and ds (N * C each), pair terms (2 per pair), then the chunk partial sums
    # (channels-first, split only) or, channels-last, a row chunk's and a span's sums (4C)
    # and the coefficients (5C) per thread, or per sample when split (then N < 2 *
    # threads), and when split 2C per span of a sample and per thread.
    buf = np.empty(2 * N * C + 2 * N * G + chunks, dtype=F64)
    cdef double* db = <double*>ptr(buf)
    cdef double* ds = db + N * C
    cdef double* terms = ds + N * C
    cdef double* parts = terms + 2 * N * G
    cdef double* coef = parts + 4 * tasks * C
    cdef cnp.npy_intp channels = C
    gw = cnp.PyArray_EMPTY(1, &channels, typenum, 0)
    gb = cnp.PyArray_EMPTY(1, &channels, typenum, 0)
    cdef char* pdy = ptr(dy3)
    cdef char* px = ptr(x3)
    cdef char* pdx = ptr(dx3)
    cdef char* pm = ptr(m)
    cdef char* pr = ptr(r)
    cdef char* pw = ptr(w)
    cdef char* pb = ptr(b)
    cdef char* pgw = ptr(gw)
    cdef char* pgb = ptr(gb)
    if S == 0:  # empty groups: the sums are 0 and grad_x has no element to write
        buf[:2 * N * C] = 0
    with nogil:
        if typenum == cnp.NPY_FLOAT32:
            if S > 0 and not last:
                backward_nchw(pdy, px, pdx, &L, <float*>pm, <float*>pr, <float*>pw, <float*>pb,
                              db, ds, terms, parts if split else NULL, threads)
            elif S > 0:
                backward_nhwc(pdy, px, pdx, &L, <float*>pm, <float*>pr, <float*>pw, <float*>pb,
                              db, ds, terms, parts, coef + 5 * tasks * C, <float*>coef, split,
                              threads)
            param_grads(&L, <float*>pr, db, ds, <float*>pgw, <float*>pgb)
        else:
            if S > 0 and not last:
                backward_nchw(pdy, px, pdx, &L, <double*>pm, <double*>pr, <double*>pw,
                              <double*>pb, db, ds, terms, parts if split else NULL, threads)
            elif S > 0:
                backward_nhwc(pdy, px, pdx, &L, <double*>pm, <double*>pr, <double*>pw,
                              <double*>pb, db, ds, terms, parts, coef + 5 * tasks * C, coef,
                              split, threads)
            param_grads(&L, <double*>pr, db, ds, <double*>pgw, <double*>pgb)
    return dx3, gw, gb
