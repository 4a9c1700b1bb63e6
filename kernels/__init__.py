"""Packed low-bit weight formats and GEMM kernels (AWQ GEMM layout, Triton W4A16)."""
