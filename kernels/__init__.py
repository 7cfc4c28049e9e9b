"""Triton kernel sources, importable as ``conflict_opt.kernels``.

This folder maps to ``conflict_opt.kernels`` through setuptools' ``package-dir``; it is never a
top-level ``kernels`` package, which would collide with the PyPI package of that name.

* :mod:`conflict_opt.kernels.multi_tensor`: the multi-tensor Gram and combination kernels
  behind ``conflict_opt.gram`` / ``conflict_opt.combine_`` with ``backend="triton"``. It
  imports triton (the ``[triton]`` extra); this package itself does not.
"""
