"""The row-space Jacobian products EGN needs: the Gram ``J J^T`` (bc x bc) and ``J^T u``.

``J`` (bc x P) is the Jacobian of the outputs ``f`` (b, c) with respect to the trainable
parameters; rows are indexed by (sample i, output c).

``structured`` (an ``nn.Sequential`` of ``nn.Linear`` and elementwise activations): ``J`` is never
formed. With ``a_(l,i)`` the input of Linear ``l`` for sample ``i`` and ``g_(l,i,c) = d f_(i,c) /
d z_(l,i)`` the backprop of output unit ``c`` to its pre-activation ``z_l = W_l a_l + b_l``,
``d f_(i,c) / d W_l = g_(l,i,c) a_(l,i)^T`` and ``d f_(i,c) / d b_l = g_(l,i,c)``, so

    (J J^T)[(i,c), (j,c')] = sum_l (a_(l,i) . a_(l,j) + 1) (g_(l,i,c) . g_(l,j,c'))
    J^T u:   dW_l = V_l^T A_l,   db_l = 1^T V_l,   V_(l,i) = sum_c u_(i,c) g_(l,i,c)

(the ``+ 1`` is the bias; frozen weights or biases drop their term). ``g`` is obtained by pushing
the ``c`` unit vectors back through the stack by hand: ``G <- G * s'(z)`` through an activation,
``G <- G W`` through a Linear; cost ``b c`` times one backward pass, memory ``b c`` times the
widest layer. The Gram costs ``(b c)^2 (width + 1)`` per layer, ``J^T u`` one matmul per layer.

``explicit`` (any model): the full Jacobian from ``torch.func.jacrev`` (vmap over the ``b c``
output rows), kept per parameter tensor: ``J J^T = sum_p J_p J_p^T``, ``J^T u = (u^T J_p)_p``.
It is the reference; its memory is ``b c P`` numbers.
"""
from __future__ import annotations

import torch
from torch import nn


ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.GELU, nn.SiLU, nn.Sigmoid, nn.LeakyReLU, nn.Identity,
               nn.ELU, nn.Softplus)
JACOBIAN_MODES = ("auto", "structured", "explicit")


def _flatten(module: nn.Module):
    for m in module:
        if isinstance(m, nn.Sequential):
            yield from _flatten(m)
        else:
            yield m


def structure(model: nn.Module, x: torch.Tensor):
    """``(layers, None)`` when ``model`` applied to ``x`` qualifies for the structured path, else
    ``(None, reason)``. ``layers`` is the flat module list, a leading ``nn.Flatten`` removed."""
    if not isinstance(model, nn.Sequential):
        return None, f"the model is a {type(model).__name__}, not an nn.Sequential"
    layers = list(_flatten(model))
    flattens = bool(layers) and isinstance(layers[0], nn.Flatten) and \
        layers[0].start_dim == 1 and layers[0].end_dim == -1
    if flattens:
        layers = layers[1:]
    for m in layers:
        if isinstance(m, nn.Linear):
            continue
        if not isinstance(m, ELEMENTWISE) or any(True for _ in m.parameters()):
            return None, (f"{type(m).__name__} is neither nn.Linear nor a parameter-free "
                          f"elementwise activation ({', '.join(t.__name__ for t in ELEMENTWISE)})")
    if not any(isinstance(m, nn.Linear) for m in layers):
        return None, "the model has no nn.Linear layer"
    if not flattens and x.dim() != 2:
        return None, (f"the input has shape {tuple(x.shape)}; it needs (b, features) or a "
                      f"leading nn.Flatten()")
    return layers, None


def resolve_path(model: nn.Module, x: torch.Tensor, mode: str = "auto") -> str:
    """``"structured"`` or ``"explicit"``: which path ``mode`` runs for ``model`` on ``x``."""
    if mode not in JACOBIAN_MODES:
        raise ValueError(f"jacobian={mode!r} is not one of {JACOBIAN_MODES}")
    if mode == "explicit":
        return "explicit"
    layers, reason = structure(model, x)
    if layers is not None:
        return "structured"
    if mode == "structured":
        raise ValueError(f"jacobian='structured' cannot run: {reason}; use jacobian='auto' or "
                         f"'explicit'")
    return "explicit"


def _slope(module: nn.Module, z: torch.Tensor) -> torch.Tensor:
    # elementwise, so the derivative is the forward-mode tangent along the all-ones direction
    return torch.func.jvp(module, (z,), (torch.ones_like(z),))[1]


def _trainable(p) -> bool:
    return p is not None and p.requires_grad


class StructuredJacobian:
    """Per-layer inputs ``A_l`` from the forward; output-side ``G_l`` (b, c, out_l) on demand."""
    path = "structured"

    def __init__(self, model: nn.Module, x: torch.Tensor, ops):
        layers, reason = structure(model, x)
        if layers is None:
            raise ValueError(f"the structured Jacobian needs a Linear stack: {reason}")
        self.ops = ops
        self._trace = []  # ("linear", module, input) or ("act", module, slope)
        with torch.no_grad():
            a = x.reshape(x.shape[0], -1)
            for m in layers:
                if isinstance(m, nn.Linear):
                    self._trace.append(("linear", m, a))
                else:
                    self._trace.append(("act", m, _slope(m, a)))
                a = m(a)
        self.outputs = a
        self._grads = None

    def _layers(self):
        """``(linear, A_l, G_l)`` for every Linear with a trainable weight or bias."""
        if self._grads is None:
            self._grads = self._backprop_units()
        return self._grads

    def _backprop_units(self):
        b, c = self.outputs.shape
        trainable = [i for i, (kind, m, _) in enumerate(self._trace) if kind == "linear" and
                     (_trainable(m.weight) or _trainable(m.bias))]
        if not trainable:
            return []
        G = torch.eye(c, dtype=self.outputs.dtype, device=self.outputs.device).expand(b, c, c)
        out = []
        with torch.no_grad():
            # walk back only as far as the lowest trainable Linear
            for i in range(len(self._trace) - 1, trainable[0] - 1, -1):
                kind, m, saved = self._trace[i]
                if kind == "act":
                    G = G * saved[:, None, :]
                    continue
                if i in trainable:
                    out.append((m, saved, G))
                if i > trainable[0]:
                    G = G @ m.weight
        return out[::-1]

    def gram(self) -> torch.Tensor:
        """``J J^T`` as (b, c, b, c)."""
        b, c = self.outputs.shape
        total = torch.zeros(b * c, b * c, dtype=self.outputs.dtype, device=self.outputs.device)
        with torch.no_grad():
            for m, a, G in self._layers():
                if _trainable(m.weight):
                    Ka = self.ops.gram(a, _trainable(m.bias))
                else:  # only the bias moves: a . a drops out
                    Ka = torch.ones(b, b, dtype=a.dtype, device=a.device)
                Gf = G.reshape(b * c, -1)
                total += (Gf @ Gf.t()).view(b, c, b, c).mul_(Ka[:, None, :, None]).view(b * c,
                                                                                      b * c)
        return total.view(b, c, b, c)

    def transpose_apply(self, u: torch.Tensor) -> dict:
        """``J^T u`` for ``u`` (b, c), as ``{parameter: tensor of its shape}``."""
        out = {}
        with torch.no_grad():
            for m, a, G in self._layers():
                V = torch.einsum("ic,ico->io", u.to(G.dtype), G)
                if _trainable(m.weight):
                    dW, db = self.ops.jt_product(a, V)
                    out[m.weight] = dW
                else:
                    db = V.sum(dim=0)
                if _trainable(m.bias):
                    out[m.bias] = db
        return out


class ExplicitJacobian:
    """The full Jacobian, one block ``J_p`` (bc x numel p) per trainable parameter tensor."""
    path = "explicit"

    def __init__(self, model: nn.Module, x: torch.Tensor, ops=None):
        # the explicit Jacobian is the reference path: it runs no op of the table
        self._model, self._x = model, x
        self._trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self._frozen = {n: p.detach() for n, p in model.named_parameters()
                        if not p.requires_grad}
        with torch.no_grad():
            self.outputs = self._forward({n: p.detach() for n, p in self._trainable.items()})
        self._blocks = None

    def _forward(self, trainable):
        return torch.func.functional_call(self._model, {**self._frozen, **trainable}, (self._x,))

    def blocks(self) -> dict:
        """``{parameter: J_p}`` with ``J_p`` of shape (b c, numel p)."""
        if self._blocks is None:
            params = {n: p.detach() for n, p in self._trainable.items()}
            jac = torch.func.jacrev(self._forward)(params)
            rows = self.outputs.numel()
            self._blocks = {p: jac[n].reshape(rows, -1) for n, p in self._trainable.items()}
        return self._blocks

    def gram(self) -> torch.Tensor:
        b, c = self.outputs.shape
        total = torch.zeros(b * c, b * c, dtype=self.outputs.dtype, device=self.outputs.device)
        for Jp in self.blocks().values():
            total.addmm_(Jp, Jp.t())
        return total.view(b, c, b, c)

    def transpose_apply(self, u: torch.Tensor) -> dict:
        flat = u.reshape(1, -1)
        return {p: (flat.to(Jp.dtype) @ Jp).reshape(p.shape) for p, Jp in self.blocks().items()}


def row_jacobian(model: nn.Module, x: torch.Tensor, mode: str, ops):
    """Runs the forward only; ``gram`` and ``transpose_apply`` do the Jacobian work on demand,
    the structured path on the op table ``ops`` (``revgn.ops.bind``)."""
    cls = StructuredJacobian if resolve_path(model, x, mode) == "structured" else ExplicitJacobian
    return cls(model, x, ops)
