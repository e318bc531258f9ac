"""Speed settings: precision, autotune, torch.compile, the process's threads, allocator and garbage collector,
and CPU kernels (speed.cpu)."""
