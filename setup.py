"""Build gncpu's Cython kernels.

The kernels are compiled once per instruction set: a baseline module that runs on every
CPU of the architecture, and on x86-64 an x86-64-v3 module (AVX2, FMA, F16C) and, where the
compiler takes the flags, an x86-64-v4 module (AVX-512 F, BW, DQ, VL); `gncpu/__init__.py`
imports the widest one the CPU runs.

OpenMP is probed: without it the build goes serial and says so; GNCPU_FAIL_NO_OPENMP=1
makes that an error. GNCPU_NATIVE=1 adds -march=native (the build then runs only on CPUs
like the build machine).
"""
import os
import platform
import sys
import tempfile
import textwrap

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

OPENMP_PROBE = textwrap.dedent("""
    #include <omp.h>
    int main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }
""")
X86 = platform.machine().lower() in ("x86_64", "amd64", "x86", "i686", "i386")


def openmp_flags(compiler):
    """(compile, link) flags for OpenMP with this compiler."""
    if compiler.compiler_type == "msvc":
        return ["/openmp"], []
    if sys.platform == "darwin":
        return ["-Xpreprocessor", "-fopenmp"], ["-lomp"]
    return ["-fopenmp"], ["-fopenmp"]


def compiles_and_links(compiler, source, cflags, ldflags):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "probe.c")
        with open(path, "w") as f:
            f.write(source)
        try:
            objects = compiler.compile([path], output_dir=tmp, extra_postargs=cflags)
            compiler.link_executable(objects, "probe", output_dir=tmp, extra_postargs=ldflags)
        except Exception:
            return False
    return True


class BuildExt(build_ext):
    def build_extensions(self):
        msvc = self.compiler.compiler_type == "msvc"
        cflags, ldflags = openmp_flags(self.compiler)
        if not compiles_and_links(self.compiler, OPENMP_PROBE, cflags, ldflags):
            message = ("gncpu: the C compiler has no working OpenMP; building SERIAL "
                       "kernels (one thread)")
            if os.environ.get("GNCPU_FAIL_NO_OPENMP") == "1":
                sys.exit(message + " and GNCPU_FAIL_NO_OPENMP=1 makes this an error")
            print("WARNING: " + message, file=sys.stderr)
            cflags, ldflags = [], []
        base = ["/O2", "/fp:precise"] if msvc else ["-O3", "-ffp-contract=off", "-Wno-psabi"]

        def takes(flags):
            """Whether the compiler builds an empty program with these flags."""
            return not msvc and compiles_and_links(self.compiler, "int main(void) { return 0; }\n",
                                                   flags, [])

        # Hot loops at 64-byte boundaries: where GCC placed them otherwise moved timings by up
        # to 20% from one build to the next. Only where the compiler takes the flag cleanly.
        if takes(["-falign-loops=64", "-Werror"]):
            base.append("-falign-loops=64")
        if os.environ.get("GNCPU_NATIVE") == "1" and not msvc:
            base.append("-march=native")
        if not takes(SIMD_FLAGS["gncpu._kernels_x86_64_v4"]):
            # a compiler without AVX-512: the widest build is x86-64-v3
            self.extensions = [e for e in self.extensions if not e.name.endswith("_v4")]
        for ext in self.extensions:
            ext.extra_compile_args = base + cflags + ([] if msvc else SIMD_FLAGS[ext.name])
            ext.extra_link_args = ldflags
        super().build_extensions()


def kernel_module(name):
    return Extension(f"gncpu.{name}", [f"gncpu/{name}.pyx"], include_dirs=[np.get_include(), "gncpu"],
                     define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")])


# The kernels once per instruction set: baseline (any CPU of the architecture), and on x86-64
# also x86-64-v3 (AVX2, FMA, F16C) and x86-64-v4 (AVX-512); gncpu/__init__.py imports the
# widest one the CPU runs.
V3 = ["-mavx2", "-mfma", "-mf16c"]
SIMD_FLAGS = {"gncpu._kernels_baseline": [], "gncpu._kernels_x86_64_v3": V3,
              "gncpu._kernels_x86_64_v4": V3 + ["-mavx512f", "-mavx512bw", "-mavx512dq",
                                                "-mavx512vl"]}
modules = [kernel_module("_kernels_baseline")]
if X86:
    modules += [kernel_module("_kernels_x86_64_v3"), kernel_module("_kernels_x86_64_v4")]

setup(
    ext_modules=cythonize(modules, compiler_directives={
        "language_level": 3, "boundscheck": False, "wraparound": False, "cdivision": True,
        "initializedcheck": False}),
    cmdclass={"build_ext": BuildExt},
)
