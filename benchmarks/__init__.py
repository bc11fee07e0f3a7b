"""Benchmarks: scratchnet against PyTorch, on CPU and GPU."""
