"""Row-sharded matrices: what a subspace refresh needs to know about a matrix split by rows over
processes (FSDP2 shards every parameter and gradient on dim 0).

With G split into row blocks G_i, the right factor Q of G is computable without ever gathering G,
because every product the subspace iteration forms with Gᵀ is a sum over the blocks:
Gᵀ(G Y) = Σ_i G_iᵀ(G_i Y), Gᵀ Ω = Σ_i G_iᵀ Ω_i, ‖G‖² = Σ_i ‖G_i‖², and the Rayleigh–Ritz Gram
(G Y)ᵀ(G Y) = Σ_i (G_i Y)ᵀ(G_i Y). Each is formed locally and summed over the processes: the only
traffic is n×l sketches, l×l Grams and scalars. The exact method sums the n×n Gram GᵀG instead
and takes its top eigenvectors. The projection R_i = G_i·Q and the back-projection N_i·Qᵀ are then
local to each shard. (The left factor P would need the columns of G, which no shard holds.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class RowShard:
    """This process holds rows ``[row_offset, row_offset + local rows)`` of a matrix with
    ``total_rows`` rows; ``reduce(t)`` sums ``t`` over the processes in place (the same call order
    on every process) and returns it."""

    row_offset: int
    total_rows: int
    reduce: Callable[[Tensor], Tensor]

    def global_shape(self, local: Tensor) -> tuple[int, int]:
        return (self.total_rows, local.shape[1])


def global_shape(matrix: Tensor, shard: RowShard | None) -> tuple[int, int]:
    """The whole matrix's shape: ``matrix``'s own, or that of the matrix it is a row shard of."""
    return tuple(matrix.shape) if shard is None else shard.global_shape(matrix)


def sum_over(shard: RowShard | None, tensor: Tensor) -> Tensor:
    """``tensor`` summed over the shards (itself for an unsharded matrix)."""
    return tensor if shard is None else shard.reduce(tensor)
