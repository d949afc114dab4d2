"""gncpu against PyTorch's CPU Group Norm, when torch is importable (else skipped)."""
import math

from gncpu import group_norm, group_norm_backward

from .common import DTYPES, OPS, QUICK, SHAPES, THREADS, Inputs, grid


class Torch:
    """The same call in both libraries, each allocating its outputs as users call them.

    ``threads`` goes to gncpu's ``num_threads=`` and to ``torch.set_num_threads``. The
    backward is torch's ``aten.native_group_norm_backward`` (what autograd runs), given
    the statistics in the input's dtype, as torch keeps them.
    """

    params = [grid(QUICK, list(SHAPES)), grid(["float32"], DTYPES), THREADS, OPS]
    param_names = ["shape", "dtype", "threads", "op"]

    def setup(self, shape, dtype, threads, op):
        try:
            import torch
        except ImportError:
            raise NotImplementedError("torch is not installed") from None
        torch.set_num_threads(threads)
        d = Inputs(shape, dtype, backward=op == "backward")
        tx, tw, tb = (torch.from_numpy(a) for a in (d.x, d.weight, d.bias))
        if op == "forward":
            self.gncpu = lambda: group_norm(d.x, d.groups, d.weight, d.bias, num_threads=threads)
            self.torch = lambda: torch.nn.functional.group_norm(tx, d.groups, tw, tb, 1e-5)
            return
        n, c = d.x.shape[:2]
        tdy = torch.from_numpy(d.grad_out)
        tmean, trstd = (torch.from_numpy(s.astype(dtype)) for s in (d.mean, d.rstd))
        backward = torch.ops.aten.native_group_norm_backward
        spatial = math.prod(d.x.shape[2:])
        self.gncpu = lambda: group_norm_backward(d.grad_out, d.x, d.mean, d.rstd, d.groups,
                                                 d.weight, num_threads=threads)
        self.torch = lambda: backward(tdy, tx, tmean, trstd, tw, n, c, spatial, d.groups,
                                      [True, True, True])

    def time_gncpu(self, shape, dtype, threads, op):
        self.gncpu()

    def time_torch(self, shape, dtype, threads, op):
        self.torch()
