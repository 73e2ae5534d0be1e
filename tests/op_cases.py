"""Fresh random inputs for the ops, shared by the tests of every backend."""
import torch

ACTIVATIONS = ["identity", "relu", "leaky_relu", "tanh", "gelu", "silu"]
# (n, h, M): tails and non-powers of two
COUPLING_SHAPES = [(1, 3, 7), (5, 17, 40), (33, 3, 130)]
TOL = {torch.float32: 1e-4, torch.float64: 1e-10}


def rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-30)) if b.numel() else 0.0


def coupling_inputs(n, h, M, dtype, bottleneck=True, bias=True, device="cpu"):
    g = dict(dtype=dtype, device=device)
    u, du, y, dy = (torch.randn(n, h, **g) for _ in range(4))
    C = torch.randn(h, M, **g) / M ** 0.5 if bottleneck else None
    W = torch.randn(h, M if bottleneck else h, **g) * 0.5
    b = torch.randn(h, **g) if bias else None
    return u, du, y, dy, C, W, b


def spd_batch(B, n, k, dtype, device="cpu"):
    X = torch.randn(B, n, n + 3, dtype=dtype, device=device)
    return X @ X.mT + 0.1 * torch.eye(n, dtype=dtype, device=device), torch.randn(
        B, n, k, dtype=dtype, device=device)
