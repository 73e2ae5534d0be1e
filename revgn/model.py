"""The reversible MLP with a fixed random inverted bottleneck (DESIGN §2).

Row convention: a batch is ``n x features``. The stream is the flattened input ``X in R^{n x d}``,
split into halves ``X1 = X[:, :h]``, ``X2 = X[:, h:]``. Block ``l`` is an additive coupling pair

    Y1 = X1 + F(X2),     F(u) = s_l(u C_F) W_F^T + b_F
    Y2 = X2 + G(Y1),     G(u) = s_l(u C_G) W_G^T + b_G

with ``C in R^{h x M}`` fixed (entries N(0, 1/M)), ``W in R^{h x M}`` and ``b in R^h`` trainable.
The readout is ``logits = X_L U`` with ``U in R^{d x k}`` fixed, orthonormal columns.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from revgn.activations import get_activation
from revgn.validation import all_finite


class Coupling(nn.Module):
    """One half of a reversible block: ``u -> s(u C) W^T + b``.

    Without the inverted bottleneck ``C`` is None and ``F(u) = s(u) W^T + b`` with ``W in R^{h x h}``.
    """

    def __init__(self, half: int, bottleneck: int | None, activation: str, init_std: float,
                 bias: bool):
        super().__init__()
        self.activation = activation
        self._act = get_activation(activation)
        width = half if bottleneck is None else bottleneck
        if bottleneck is not None:
            C = torch.randn(half, bottleneck, dtype=torch.float64) / math.sqrt(bottleneck)
            self.register_buffer("C", C.to(torch.get_default_dtype()))
        else:
            self.C = None
        W = torch.randn(half, width, dtype=torch.float64) * init_std
        self.W = nn.Parameter(W.to(torch.get_default_dtype()))
        self.b = nn.Parameter(torch.zeros(half)) if bias else None

    @property
    def width(self) -> int:
        """Columns of ``A = s(u C)``: the bottleneck ``M`` (or ``h`` without one)."""
        return self.W.shape[1]

    def preactivation(self, u: torch.Tensor) -> torch.Tensor:
        return u @ self.C if self.C is not None else u

    def activations(self, u: torch.Tensor) -> torch.Tensor:
        """``A = s(u C)``, the matrix whose pseudoinverse gives the update of ``W``."""
        return self._act.fn(self.preactivation(u))

    def forward(self, u: torch.Tensor, fold: torch.Tensor | None = None) -> torch.Tensor:
        """``s(u C) W^T + b``; with ``fold = folded()`` of a linear coupling, ``u (C W^T) + b``."""
        if fold is None:
            out = self.activations(u) @ self.W.t()
        else:
            out = u @ fold
        return out + self.b if self.b is not None else out

    # -- what the GN sweep asks of a coupling (revgn.sweep); a split coupling
    #    (revgn.distributed.ShardedCoupling) completes the partial sums of the same products --

    def forward_kept(self, u: torch.Tensor, fold: torch.Tensor | None = None):
        """``(P, A, F(u))`` with ``P = u C`` and ``A = s(P)`` kept for the sweep (both None when
        ``fold`` is given: a folded coupling keeps no ``A``)."""
        if fold is not None:
            return None, None, self(u, fold)
        P = self.preactivation(u)
        A = self._act.fn(P)
        out = torch.addmm(self.b, A, self.W.t()) if self.b is not None else A @ self.W.t()
        return P, A, out

    def push(self, pre: torch.Tensor, du: torch.Tensor, ops, fold: torch.Tensor | None = None,
             C: torch.Tensor | None = None) -> torch.Tensor:
        """``k = (s'(P) * (du C)) W^T``, the push of a tangent ``du`` of the input through the
        coupling, given ``pre = P``; ``du C W^T`` when folded. ``C`` replaces the coupling's own
        for a thin ``du``: ``T = e R`` is pushed as ``e`` through ``R C``."""
        if fold is not None:
            return du @ fold
        return ops.coupling_tangent(pre, du, self.C if C is None else C, self.W, self.activation)

    def invert_with_tangent(self, u: torch.Tensor, du: torch.Tensor, y: torch.Tensor,
                            dy: torch.Tensor, ops, fold: torch.Tensor | None = None):
        """``(x, dx, A, k)`` from ``y = x + F(u)`` and its tangent (DESIGN §3 steps 1-2):
        ``x = y - s(u C) W^T - b``, ``k = (s'(u C) * (du C)) W^T``, ``dx = dy - k``; ``A`` is
        None when folded."""
        if fold is None:
            return ops.coupling_inverse_with_tangent(u, du, y, dy, self.C, self.W, self.b,
                                                     self.activation)
        x = torch.addmm(self.b, u, fold, beta=-1, alpha=-1).add_(y) if self.b is not None \
            else y - u @ fold
        k = du @ fold
        return x, dy - k, None, k

    def foldable(self) -> bool:
        """A linear coupling with a bottleneck: ``A = u C`` for a fixed ``C``, so every product
        through ``A`` can go through the ``h x h`` ``C W^T`` and ``C C^T`` instead."""
        return self._act.linear and self.C is not None

    def folded(self) -> torch.Tensor:
        """``C W^T`` (h x h) of a ``foldable()`` coupling: ``u C W^T`` then costs ``h^2 M`` once
        and ``n h^2`` per batch instead of ``2 n h M``."""
        return self.C @ self.W.t()

    def max_rank(self) -> int | None:
        """Upper bound on ``rank([A, 1])`` known in advance (linear activation), else None."""
        if not self._act.linear:
            return None
        rank = min(self.C.shape[0], self.width) if self.C is not None else self.width
        return rank + (1 if self.b is not None else 0)


class RevBlock(nn.Module):
    """``Y1 = X1 + F(X2)``, ``Y2 = X2 + G(Y1)``; inverted exactly by ``X2 = Y2 - G(Y1)``,
    ``X1 = Y1 - F(X2)``."""

    def __init__(self, half: int, bottleneck: int | None, activation: str, init_std: float,
                 bias: bool):
        super().__init__()
        self.F = Coupling(half, bottleneck, activation, init_std, bias)
        self.G = Coupling(half, bottleneck, activation, init_std, bias)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, folds: dict | None = None):
        """``folds`` maps a coupling to its ``folded()`` product, used in its place."""
        folds = folds or {}
        y1 = x1 + self.F(x2, folds.get(self.F))
        y2 = x2 + self.G(y1, folds.get(self.G))
        return y1, y2

    def inverse(self, y1: torch.Tensor, y2: torch.Tensor):
        x2 = y2 - self.G(y1)
        x1 = y1 - self.F(x2)
        return x1, x2


class ReversibleStack(nn.Module):
    """What every reversible model here shares: ``blocks`` of ``RevBlock``s over the stream halves
    (``half`` wide, ``in_features`` in all) and a fixed orthonormal readout ``U`` that must stay
    orthonormal in the dtype the model runs in (the GN lift ``E = e U^T``).

    The GN step (``revgn.sweep``, ``revgn.exact_gn``) asks the model for what goes beyond one
    coupling: ``linear_folds``, ``gram_reduce`` and ``all_finite``. The versions here are for
    couplings held whole by this process; ``revgn.distributed.ShardedRevMLP`` sums them over
    the ranks that share the couplings' columns.
    """

    #: sums a Gram matrix over the shards of ``A`` (``SolverConfig.gram_reduce``); None: whole
    gram_reduce = None

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def _apply(self, fn, *args, **kwargs):
        # A dtype change rounds U; re-orthonormalize so that U^T U = I holds again.
        out = super()._apply(fn, *args, **kwargs)
        self.U = orthonormalize(self.U)
        return out

    def flatten(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 1 or x.shape[0] == 0:
            raise ValueError("expected a non-empty batch with the batch dimension first")
        x = x.reshape(x.shape[0], -1)
        if x.shape[1] != self.in_features:
            raise ValueError(f"expected {self.in_features} features per example after "
                             f"flattening; got {x.shape[1]}")
        return x

    def split(self, x: torch.Tensor):
        return x[:, :self.half], x[:, self.half:]

    def stream(self, x: torch.Tensor) -> torch.Tensor:
        """The output stream ``X_L`` (n x d) before the readout."""
        return self.stream_with_anchors(x)[0]

    def stream_with_anchors(self, x: torch.Tensor, every: int | None = None,
                            blocks: int | None = None, folds: dict | None = None):
        """``(X, anchors)``: the stream after the first ``blocks`` blocks (all by default), and
        ``anchors[l]``, the input ``(X1, X2)`` of block ``l`` for every ``l`` that is a positive
        multiple of ``every`` (none when ``every`` is None). The GN sweep snaps its rebuilt stream
        to these to stop inversion drift accumulating. ``folds`` goes to every block
        (``RevBlock.forward``)."""
        x1, x2 = self.split(self.flatten(x))
        anchors = {}
        for l, block in enumerate(self.blocks[:blocks]):
            if every and l and l % every == 0:
                anchors[l] = (x1, x2)
            x1, x2 = block(x1, x2, folds)
        return torch.cat([x1, x2], dim=1), anchors

    def block_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The stream after every block, ``[X_1, ..., X_L]``, each (n x d)."""
        x1, x2 = self.split(self.flatten(x))
        outs = []
        for block in self.blocks:
            x1, x2 = block(x1, x2)
            outs.append(torch.cat([x1, x2], dim=1))
        return outs

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Rebuild the (flattened) input from the output stream by inverting every block."""
        y1, y2 = self.split(y)
        for block in reversed(self.blocks):
            y1, y2 = block.inverse(y1, y2)
        return torch.cat([y1, y2], dim=1)

    def readout(self, stream: torch.Tensor) -> torch.Tensor:
        return stream @ self.U

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(self.stream(x))

    def couplings(self):
        """``(block index, name, coupling)`` for every coupling, in forward order."""
        for l, block in enumerate(self.blocks):
            yield l, "F", block.F
            yield l, "G", block.G

    def linear_folds(self) -> dict:
        """``{coupling: C W^T}`` for every ``foldable()`` coupling, at the current ``W`` (taken
        before any update of a GN step, so that its forward and its sweep share them)."""
        return {c: c.folded() for _, _, c in self.couplings() if c.foldable()}

    def all_finite(self, *tensors) -> bool:
        """Whether every entry of ``tensors`` (None ones skipped) is finite."""
        return all(all_finite(t) for t in tensors if t is not None)


class RevMLP(ReversibleStack):
    """Reversible MLP (Buffelli et al., NeurIPS 2024); see the module docstring.

    Only ``W`` and ``b`` of every coupling are parameters; ``C`` and ``U`` are buffers (fixed, saved
    in ``state_dict``). The stream width is ``in_features``, which must be even.
    """

    def __init__(self, in_features: int, num_classes: int, depth: int = 2, bottleneck: int = 8000,
                 activation: str = "relu", first_activation: str = "identity",
                 init_std: float = 1e-3, bias: bool = True, inverted_bottleneck: bool = True):
        super().__init__()
        if in_features < 2 or in_features % 2:
            raise ValueError(
                f"RevMLP needs an even in_features >= 2 (the stream is split into two halves); "
                f"got {in_features}. Zero-pad the input by one feature to make it even.")
        if num_classes < 1 or num_classes > in_features:
            raise ValueError(f"num_classes must be in [1, in_features={in_features}]; "
                             f"got {num_classes}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1; got {depth}")
        if inverted_bottleneck and bottleneck < 1:
            raise ValueError(f"bottleneck must be >= 1; got {bottleneck}")
        get_activation(activation), get_activation(first_activation)  # validate names early
        self.in_features = in_features
        self.num_classes = num_classes
        self.half = in_features // 2
        self.inverted_bottleneck = inverted_bottleneck
        self.bottleneck = bottleneck if inverted_bottleneck else self.half
        width = bottleneck if inverted_bottleneck else None
        self.blocks = nn.ModuleList(
            RevBlock(self.half, width, first_activation if l == 0 else activation, init_std, bias)
            for l in range(depth))
        U, _ = torch.linalg.qr(torch.randn(in_features, num_classes, dtype=torch.float64))
        self.register_buffer("U", U.to(torch.get_default_dtype()))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, num_classes={self.num_classes}, "
                f"depth={self.depth}, bottleneck={self.bottleneck if self.inverted_bottleneck else None}")


def orthonormalize(U: torch.Tensor) -> torch.Tensor:
    """Nearest orthonormal-column matrix to ``U`` (sign-fixed QR in float64, cast back)."""
    Q, R = torch.linalg.qr(U.detach().to(torch.float64))
    signs = torch.sign(torch.diagonal(R))
    signs[signs == 0] = 1
    return (Q * signs).to(U.dtype)
