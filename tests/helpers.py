"""Brute-force ground truth shared by the tests."""
import torch

import revgn


def make_model(d=8, k=3, depth=2, M=32, activation="tanh", first_activation=None, std=0.4,
               bias=True, bottleneck=True, dtype=torch.float64):
    model = revgn.RevMLP(d, k, depth=depth, bottleneck=M, activation=activation,
                         first_activation=first_activation or activation, init_std=std,
                         bias=bias, inverted_bottleneck=bottleneck).to(dtype)
    with torch.no_grad():
        for p in model.parameters():  # non-trivial biases too
            if p.dim() == 1:
                p.normal_(0, std)
    return model


def output_jvp(model, x, deltas):
    """``J(theta) delta``: the first-order change of the outputs, by forward-mode AD."""
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach() for _, p in model.named_parameters())

    def f(*ps):
        return torch.func.functional_call(model, dict(zip(names, ps)), (x,))

    return torch.func.jvp(f, params, tuple(deltas))[1]


def rel_err(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def labels(n, k, generator=None):
    y = torch.randint(0, k, (n,), generator=generator)
    y[:k] = torch.arange(min(k, n))  # every class present
    return y


def plant_gram_error(table_module, factor=1 + 1e-3):
    """Make the op tables bound from now on return ``factor`` times the compiled ``gram``: the
    kernel mismatch ``revgn check`` must report. Returns the original resolver, to restore."""
    real = table_module.implementation

    def off(op_name, reference, name, device):
        fn = real(op_name, reference, name, device)
        if op_name != "gram" or fn is reference:
            return fn
        return lambda A, bias: fn(A, bias) * factor
    table_module.implementation = off
    table_module._bind_resolved.cache_clear()  # tables bound before hold the real kernel
    return real
