"""The one compiled part of conflict_opt: ``conflict_opt._native``, the CPU kernels of the
``"torch"`` primitives backend (csrc/multi_tensor_cpu.c). Everything else is declared in
pyproject.toml; this file only adds the extension, which needs a C compiler with POSIX threads
(gcc or clang: Linux, macOS). It is not built on Windows, where the torch backend runs on
torch's own CPU ops instead (``conflict_opt.primitives.native_unavailable()`` says so).
"""

import sys

from setuptools import Extension, setup

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

extensions = []
if sys.platform != "win32":
    extensions.append(
        Extension(
            "conflict_opt._native",
            sources=["csrc/multi_tensor_cpu.c"],
            extra_compile_args=CFLAGS,
            extra_link_args=["-pthread"],
        )
    )

setup(ext_modules=extensions)
