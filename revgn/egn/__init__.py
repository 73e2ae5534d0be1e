"""EGN: exact row-space Gauss-Newton for any nn.Module (Korbit et al.; DESIGN §4)."""
from revgn.egn.optimizer import EGN, EGNResult

__all__ = ["EGN", "EGNResult"]
