"""Peak memory of one forward or backward call, against the inputs alone and the reference.

asv's ``peakmem_`` figure is the peak resident size of the whole benchmark process: the
interpreter and imports, the inputs made in ``setup``, then one call. ``peakmem_inputs``
runs nothing and is the floor the other figures are read against.
"""
import math

import numpy as np

from gncpu import _reference, group_norm, group_norm_backward

from .common import DTYPES, SHAPES, THREADS, Inputs, grid

# Shapes whose arrays (1 Mi elements and up) stand out over the interpreter's own memory.
LARGE = [label for label, (shape, _) in SHAPES.items() if math.prod(shape) >= 1 << 20]


class PeakMemory:
    """Bytes a call allocates beyond its inputs, on a shape large enough to stand out.

    Expected, above ``peakmem_inputs``: the forward, only its output (``x.nbytes``) and
    O(N*G) statistics (channels-last: also 7 float64 per channel per thread); the backward,
    only ``grad_x`` (``x.nbytes``), the (C,) gradients and O(N*C) partials; the float64
    NumPy reference, several float64 copies of ``x``.
    """

    params = [grid(["resnet50 batch 8"], LARGE), grid(["float32"], DTYPES), THREADS,
              ["nchw", "nhwc"]]
    param_names = ["shape", "dtype", "threads", "layout"]
    timeout = 300

    def setup(self, shape, dtype, threads, layout):
        self.data = Inputs(shape, dtype, backward=True, layout=layout)
        self.axis = -1 if layout == "nhwc" else 1

    def channels_first(self, a):
        """a as (N, C, *spatial), the reference's layout (a view, no copy)."""
        return np.moveaxis(a, self.axis, 1)

    def peakmem_inputs(self, shape, dtype, threads, layout):
        """The floor: interpreter, imports and inputs (x, grad_out, weight, bias, stats)."""

    def peakmem_forward(self, shape, dtype, threads, layout):
        """Should exceed ``peakmem_inputs`` by ``x.nbytes`` (the output) and O(N*G) bytes."""
        d = self.data
        group_norm(d.x, d.groups, d.weight, d.bias, num_threads=threads, channel_axis=self.axis)

    def peakmem_backward(self, shape, dtype, threads, layout):
        """Should exceed ``peakmem_inputs`` by ``x.nbytes`` (grad_x) and O(N*C) bytes."""
        d = self.data
        group_norm_backward(d.grad_out, d.x, d.mean, d.rstd, d.groups, d.weight,
                            num_threads=threads, channel_axis=self.axis)

    def peakmem_reference_forward(self, shape, dtype, threads, layout):
        """The float64 NumPy forward, for contrast: several float64 temporaries of x's size."""
        d = self.data
        _reference.group_norm(self.channels_first(d.x), d.groups, d.weight, d.bias)

    def peakmem_reference_backward(self, shape, dtype, threads, layout):
        """The float64 NumPy backward, for contrast: several float64 temporaries of x's size."""
        d = self.data
        _reference.group_norm_backward(self.channels_first(d.grad_out), self.channels_first(d.x),
                                       d.mean, d.rstd, d.groups, d.weight)
