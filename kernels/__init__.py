"""Triton kernels for shiftnas, installed as the subpackage ``shiftnas.kernels``.

The Triton kernels live here and are added by a later issue. This module must
stay import-light: it imports nothing (in particular not triton or torch), so
``import shiftnas.kernels`` is always cheap and safe on machines without a GPU.
"""
