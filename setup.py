"""The one compiled part of conflict_opt: ``conflict_opt._native``, the CPU kernels of the
``"torch"`` primitives backend with the fused optimizer step (csrc/multi_tensor_cpu.c) and the
host solver's closed form and CAGrad active set (csrc/host_solve.c). Everything else is
declared in pyproject.toml; this file only adds the extension, which needs a C compiler with
POSIX threads (gcc or clang: Linux, macOS). It is not built on Windows, where the torch
backend runs on torch's own CPU ops instead (``conflict_opt.primitives.native_unavailable()``
says so).

On Linux the kernels are compiled with OpenMP when the compiler supports it, so that their
threads come from the OpenMP runtime torch itself runs on (csrc/multi_tensor_cpu.c,
``run_split``); otherwise they use POSIX threads, with the same results.
``conflict_opt._native.OPENMP`` says which.
"""

import os
import sys
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CompileError, LinkError

# Reassociation lets the compiler vectorise the reductions; -ffast-math is deliberately not
# used, since its -ffinite-math-only would break the propagation of NaN and Inf.
CFLAGS = [
    "-O3",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-fassociative-math",
    "-fno-signed-zeros",
    "-Wno-psabi",  # the AVX-512 vector type in the multi-versioned kernels: not an ABI boundary
    "-pthread",
]


class BuildExt(build_ext):
    """build_ext that adds -fopenmp on Linux where the compiler accepts it (a test program is
    compiled and linked first), and says so either way."""

    def build_extensions(self) -> None:
        openmp = sys.platform.startswith("linux") and self._compiles_with("-fopenmp")
        print(f"conflict_opt._native: {'OpenMP' if openmp else 'POSIX'} threads")
        if openmp:
            for ext in self.extensions:
                ext.extra_compile_args.append("-fopenmp")
                ext.extra_link_args.append("-fopenmp")
        super().build_extensions()

    def _compiles_with(self, flag: str) -> bool:
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "probe.c")
            with open(src, "w") as f:
                f.write("int main(void) {\n#pragma omp parallel\n{}\nreturn 0; }\n")
            try:
                objs = self.compiler.compile([src], output_dir=tmp, extra_postargs=[flag])
                self.compiler.link_executable(objs, "probe", output_dir=tmp, extra_postargs=[flag])
            except (CompileError, LinkError):  # no OpenMP with this compiler
                return False
        return True


extensions = []
if sys.platform != "win32":
    extensions.append(
        Extension(
            "conflict_opt._native",
            sources=["csrc/multi_tensor_cpu.c", "csrc/host_solve.c"],
            depends=["csrc/host_solve.h"],
            extra_compile_args=list(CFLAGS),
            extra_link_args=["-pthread"],
        )
    )

setup(ext_modules=extensions, cmdclass={"build_ext": BuildExt})
