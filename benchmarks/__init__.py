"""The benchmarks of tf-fixed-loss-scale, run from the repository root; not in the wheel.

    gradient_sets  the sets, read from gradient_sets.txt (plain Python)
    gpu_torch      the PyTorch arms of `make gpu-bench`
"""
