"""The row-space Jacobian products EGN needs: ``J J^T`` (b c x b c) and ``J^T u``.

``structured``: for an ``nn.Sequential`` of ``Linear`` layers and elementwise activations,
``J`` is never formed. With ``a_(l,i)`` the input of layer ``l`` for sample ``i`` and
``g_(l,i,c) = d f_(i,c) / d z_(l,i)`` the output-side vector of its pre-activation ``z``,

    (J J^T)[(i,c), (j,c')] = sum_l (a_(l,i) . a_(l,j) + 1) (g_(l,i,c) . g_(l,j,c'))
    J^T u  =  per layer  dW_l = v_l^T A_l,  db_l = 1^T v_l,   v_(l,i) = sum_c u_(i,c) g_(l,i,c)

(the ``+ 1`` is the bias). ``explicit``: the full Jacobian from ``torch.func.jacrev``, the
reference for any model.
"""
from __future__ import annotations

import torch
from torch import nn

ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.GELU, nn.SiLU, nn.Sigmoid, nn.LeakyReLU, nn.Identity,
               nn.ELU, nn.Softplus)
JACOBIAN_MODES = ("auto", "structured", "explicit")


def structured_layers(model: nn.Module):
    """The module list when ``model`` qualifies for the structured path, else None."""
    if not isinstance(model, nn.Sequential):
        return None
    layers = list(model)
    if layers and isinstance(layers[0], nn.Flatten):
        layers = layers[1:]
    if not any(isinstance(m, nn.Linear) for m in layers):
        return None
    if not all(isinstance(m, (nn.Linear,) + ELEMENTWISE) for m in layers):
        return None
    return layers


def _slope(module: nn.Module, z: torch.Tensor) -> torch.Tensor:
    # elementwise: the derivative is the forward-mode tangent along ones
    return torch.func.jvp(module, (z,), (torch.ones_like(z),))[1]


class StructuredJacobian:
    path = "structured"

    def __init__(self, model: nn.Module, x: torch.Tensor):
        layers = structured_layers(model)
        a = x.reshape(x.shape[0], -1)
        self.linears, self.inputs, trace = [], [], []
        for module in layers:
            if isinstance(module, nn.Linear):
                self.linears.append(module)
                self.inputs.append(a)
                trace.append(("linear", module, None))
                a = module(a)
            else:
                trace.append(("act", module, _slope(module, a)))
                a = module(a)
        self.outputs = a
        b, c = a.shape
        G = torch.eye(c, dtype=a.dtype, device=a.device).expand(b, c, c)
        grads = []
        for kind, module, slope in reversed(trace):
            if kind == "act":
                G = G * slope[:, None, :]
            else:
                grads.append(G)
                G = G @ module.weight
        self.grads = grads[::-1]  # (b, c, out_l) per Linear, forward order

    def gram(self) -> torch.Tensor:
        """``J J^T`` as (b, c, b, c)."""
        total = None
        for linear, a, G in zip(self.linears, self.inputs, self.grads):
            Ka = a @ a.t()
            if linear.bias is not None:
                Ka = Ka + 1
            term = torch.einsum("ico,jdo->icjd", G, G) * Ka[:, None, :, None]
            total = term if total is None else total + term
        return total

    def transpose_apply(self, u: torch.Tensor) -> dict:
        """``J^T u`` for ``u`` (b, c), as ``{parameter: tensor}``."""
        out = {}
        for linear, a, G in zip(self.linears, self.inputs, self.grads):
            v = torch.einsum("ic,ico->io", u, G)
            out[linear.weight] = v.t() @ a
            if linear.bias is not None:
                out[linear.bias] = v.sum(dim=0)
        return out


class ExplicitJacobian:
    path = "explicit"

    def __init__(self, model: nn.Module, x: torch.Tensor):
        self.named = {n: p for n, p in model.named_parameters() if p.requires_grad}
        params = {n: p.detach() for n, p in self.named.items()}

        def f(p):
            return torch.func.functional_call(model, p, (x,))
        self.outputs = f(params)
        jac = torch.func.jacrev(f)(params)
        b, c = self.outputs.shape
        self.shapes = [(n, p.shape) for n, p in params.items()]
        self.J = torch.cat([jac[n].reshape(b * c, -1) for n, _ in self.shapes], dim=1)

    def gram(self) -> torch.Tensor:
        b, c = self.outputs.shape
        return (self.J @ self.J.t()).reshape(b, c, b, c)

    def transpose_apply(self, u: torch.Tensor) -> dict:
        flat = self.J.t() @ u.reshape(-1)
        out, offset = {}, 0
        for n, shape in self.shapes:
            size = shape.numel()
            out[self.named[n]] = flat[offset:offset + size].reshape(shape)
            offset += size
        return out


def row_jacobian(model: nn.Module, x: torch.Tensor, mode: str = "auto"):
    """Build the structured path when the model allows it (``auto``), else the explicit one."""
    if mode not in JACOBIAN_MODES:
        raise ValueError(f"jacobian={mode!r} is not one of {JACOBIAN_MODES}")
    if mode == "structured" and structured_layers(model) is None:
        raise ValueError("jacobian='structured' needs an nn.Sequential of nn.Linear layers and "
                         "elementwise activations; use jacobian='auto' or 'explicit'")
    if mode == "explicit" or (mode == "auto" and structured_layers(model) is None):
        return ExplicitJacobian(model, x)
    return StructuredJacobian(model, x)
