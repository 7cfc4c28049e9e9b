"""Triton kernel sources, importable as ``conflict_opt.kernels`` (filled by the primitives issue).

This folder maps to ``conflict_opt.kernels`` through setuptools' ``package-dir``; it is never a
top-level ``kernels`` package, which would collide with the PyPI package of that name.
"""
