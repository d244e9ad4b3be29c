"""Triton kernels for shiftnas, installed as the subpackage ``shiftnas.kernels``.

The ops of the ``triton`` backend (``shiftnas.ops.backends``), forward and backward, each reading
the active prefix of the max-size weights in place: ``linear`` (bias and GELU fused, optional
output mask), ``mlp`` (fc1 -> GELU -> mask -> fc2), ``attention`` (flash-style, optional per-head
mask), ``layer_norm`` and ``dwconv`` (depthwise conv, kernel 3/5/7). ``_common`` holds what they
share. The backend imports a module at its op's first call.

The package has no references of its own: the pure-PyTorch definitions the tests hold the kernels
to, masked variants included, are ``shiftnas.ops.ref``'s (``linear``, ``linear_masked``, ``mlp``,
``mlp_masked``, ``layer_norm``, ``attention``, ``attention_heads``, ``dwconv``, ``dwconv_masked``).

The package is a leaf: it imports torch, triton and its own modules, never the rest of
``shiftnas`` (tests/test_layers.py checks).

This module must stay import-light: it imports nothing (in particular not triton or torch), so
``import shiftnas.kernels`` is always cheap and safe on machines without a GPU.
"""
