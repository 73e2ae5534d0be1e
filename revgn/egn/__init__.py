"""EGN: exact row-space Gauss-Newton for any nn.Module (Korbit et al.; DESIGN §4), and SGN,
its truncated-CG baseline."""
from revgn.egn.optimizer import EGN, EGNResult
from revgn.egn.sgn import SGN

__all__ = ["EGN", "EGNResult", "SGN"]
