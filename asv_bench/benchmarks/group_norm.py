"""Time of gncpu's forward and backward: shape, dtype, thread count, layout, activation."""
from .common import DTYPES, OPS, QUICK, SHAPES, SPATIAL_LABELS, THREADS, gncpu_call, grid


class GroupNorm:
    """One call on the bench suite's shapes (the forward into a preallocated ``out=``).

    ``threads`` is passed as ``num_threads=``; the default grid holds the quick shapes of
    ``python -m gncpu bench --quick``, ``GNCPU_ASV_FULL=1`` all of them.
    """

    params = [grid(QUICK, list(SHAPES)), DTYPES, THREADS, OPS]
    param_names = ["shape", "dtype", "threads", "op"]

    def setup(self, shape, dtype, threads, op):
        self.call = gncpu_call(shape, dtype, threads, op)

    def time_group_norm(self, shape, dtype, threads, op):
        self.call()


class LayoutActivation:
    """Channels-last (``channel_axis=-1``) against channels-first, with a fused activation.

    The same values in both layouts, so the two rows of a shape differ by the memory order
    alone; ``activation`` is fused into the forward and differentiated by the backward.
    """

    params = [grid(["resnet50 stage 1"], SPATIAL_LABELS), grid(["float32"], DTYPES),
              ["nchw", "nhwc"], [None, "silu", "relu"], THREADS, OPS]
    param_names = ["shape", "dtype", "layout", "activation", "threads", "op"]

    def setup(self, shape, dtype, layout, activation, threads, op):
        self.call = gncpu_call(shape, dtype, threads, op, layout, activation)

    def time_group_norm(self, shape, dtype, layout, activation, threads, op):
        self.call()
