"""Build script: the package itself is described in pyproject.toml.

The compiled kernels (C++ always, CUDA when torch has CUDA and nvcc exists) are added
by the fused-kernels work; without them dpfast runs on its torch reference path.
"""
from setuptools import setup

setup()
