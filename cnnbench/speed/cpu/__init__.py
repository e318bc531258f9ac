"""CPU kernels: fast 2x2 pooling and channels-last weight gradients (kernels), BatchNorm + sigmoid + pooling
in C (fused)."""
