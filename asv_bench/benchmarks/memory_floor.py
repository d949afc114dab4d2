"""The memory floor: a forward into a preallocated ``out=`` against ``np.copyto``.

Both read every byte of a large float32 array once and write it once, so the ratio of the
two times says how close the forward comes to the memory bandwidth.
"""
import numpy as np

from gncpu import group_norm
from gncpu.bench import FLOOR

from .common import SEED, THREADS, random_array


class MemoryFloor:
    """``gncpu.bench.FLOOR``: (16, 256, 64, 64) float32, G=32 (64 MiB in, 64 MiB out)."""

    params = [THREADS]
    param_names = ["threads"]

    def setup(self, threads):
        _, shape, self.groups = FLOOR
        rng = np.random.default_rng(SEED)
        self.x = random_array(rng, shape, np.float32)
        self.weight = random_array(rng, shape[1], np.float32)
        self.bias = random_array(rng, shape[1], np.float32)
        self.out = self.x.copy()

    def time_group_norm_out(self, threads):
        group_norm(self.x, self.groups, self.weight, self.bias, out=self.out, num_threads=threads)

    def time_copyto(self, threads):
        """The floor itself; ``threads`` does not apply (rows repeat, as a noise gauge)."""
        np.copyto(self.out, self.x)
