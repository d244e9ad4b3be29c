"""Triton kernels for shiftnas, installed as the subpackage ``shiftnas.kernels``.

The ops of the ``triton`` backend (``shiftnas.ops.backends``), forward and backward, each reading
the active prefix of the max-size weights in place: ``linear`` (bias and GELU fused, optional
output mask), ``mlp`` (fc1 -> GELU -> mask -> fc2), ``attention`` (flash-style, optional per-head
mask), ``layer_norm`` and ``dwconv`` (depthwise conv, kernel 3/5/7). Each module also has a plain
PyTorch reference (``*_ref``) that the tests compare with, built on ``_ref`` (the definitions of
``linear``, ``layer_norm``, ``attention`` and ``dwconv``, which ``shiftnas.ops.ref`` imports);
``_common`` holds what they share. The backend imports a module at its op's first call.

The package is a leaf: it imports torch, triton and its own modules, never the rest of
``shiftnas`` (tests/test_layers.py checks).

This module must stay import-light: it imports nothing (in particular not triton or torch), so
``import shiftnas.kernels`` is always cheap and safe on machines without a GPU.
"""
