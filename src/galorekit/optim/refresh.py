"""The projector's life in a GaLore optimizer: its refresh (GaLore's SVD or a successor's random
basis), where it is kept (as it is, block-quantized, or only as a seed), Q-GaLore's lazy schedule,
and what a refresh does to the moments. A mixin of ``GaLoreOptimizer`` (``galorekit.optim.base``,
whose module docstring lists the state keys); it uses the optimizer's helpers (``_nonfinite``,
``_effective_rank``, ``_choose_side``, ...)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from galorekit.names import LAZY_REFRESH_THRESHOLD, LAZY_REFRESH_WINDOW, PROJECTOR_BLOCK
from galorekit.optim.sharding import all_reduce_sum_, is_sharded, local
from galorekit.optim.successors import basis_similarity, limit_norm_growth_
from galorekit.optim.validation import as_matrix, matrix_shape
from galorekit.projection import Side, effective_rank, project, refresh_projector
from galorekit.projection.alignment import rank_changed, transitions
from galorekit.projection.quantize import dequantize, quantize
from galorekit.projection.random import (
    gaussian_projector,
    orthonormal_projector,
    projection_seed_for,
)


def _is_identity(c_left: Tensor | None, c_right: Tensor | None) -> bool:
    """Whether a refresh left the basis where it was (each transition within 1e-6 of I): the
    moments then need no carrying over (for 8-bit states a de-quantize/quantize round trip would
    even change them: a block whose largest entry is negative shrinks by 0.7%)."""
    return all(
        c is None or torch.allclose(c, torch.eye(c.shape[0], device=c.device), atol=1e-6)
        for c in (c_left, c_right)
    )


class ProjectorRefresh:
    """The refresh and storage of GaLore projectors, and the moments across a refresh."""

    _moment_keys: tuple[str, ...] = ()
    state: Any
    param_groups: list[dict[str, Any]]
    _live: dict[int, tuple]
    _index: dict[int, int]

    def _total(self, p: Tensor):
        """Sums a local sum of squares over a sharded ``p``'s shards (global norms)."""
        if not is_sharded(p):
            return lambda t: t

        def total(t: Tensor) -> Tensor:
            t = t.reshape(1).clone()
            all_reduce_sum_(t, p)
            return t.reshape(())

        return total

    def _limit(self, term: Tensor, p: Tensor, group: dict[str, Any], state: dict) -> None:
        """The norm-growth limiter on a full-rank term, in place (``limiter_norm`` remembers)."""
        if group["norm_growth_limit"] is None:
            return
        state["limiter_norm"] = limit_norm_growth_(
            term, state.get("limiter_norm"), group["norm_growth_limit"], total=self._total(p)
        )

    def _project_grad(
        self, p: Tensor, grad: Tensor, group: dict[str, Any], state: dict[str, Any]
    ) -> Tensor | None:
        """R = projection of ``grad``, refreshing the projector when due; None means skip."""
        state.setdefault("step", 0)
        grad = as_matrix(grad)
        low_rank = None
        if self._refresh_due(state, group):
            if self._nonfinite(grad, p, group, state):
                return None
            first = "proj_side" not in state
            if first:
                state["proj_offset"] = self._stagger_offset(p, group)
                state["proj_side"] = int(self._choose_side(p, group))
            side = Side(state["proj_side"])
            policy = group["moments"]
            previous_left, previous_right = self._projectors(p, state, group)
            left, right, low_rank = self._new_projector(
                p, grad, group, state, side, previous_left, previous_right
            )
            if group["projector_bits"] is not None:  # projected with what is stored, de-quantized
                left, right, low_rank = *self._store_projector(state, group, left, right), None
            if rank_changed(left, right, previous_left, previous_right):
                # the rank changed (a group edited mid-run): the moments are of the old shape
                # and cannot be carried over; they start again at the new one
                self._drop_moments(state)
            elif self._has_moments(state):
                if policy == "project":
                    moved = transitions(side, left, right, previous_left, previous_right)
                    if moved is not None and not _is_identity(*moved):
                        self._rotate_moments(state, group, *moved)
                elif policy == "reset":
                    self._reset_moments(state)
            if group["lazy_refresh"]:
                self._lazy_schedule(
                    state, group, first, (previous_left, previous_right), (left, right)
                )
            if group["projector_bits"] is None:
                self._store_projector(state, group, left, right)
            state["proj_refresh_step"] = state["step"]
        else:
            left, right = self._projectors(p, state, group)
        if low_rank is None:  # a refresh may have computed R on the way (warm, randomized)
            low_rank = project(grad, Side(state["proj_side"]), left, right)
        # a NaN that appears between refreshes is caught on the small projected gradient; under
        # step() every full gradient was checked first, but a finite fp16 one can still overflow
        # in its projection
        if self._nonfinite(low_rank, p, group, state, force=low_rank.dtype == torch.float16):
            return None
        if self._full_rank_update(group):
            self._live[id(p)] = (left, right, grad, low_rank)
        elif "proj_left" not in state and "proj_right" not in state:
            self._live[id(p)] = (left, right, None, None)
        return low_rank

    # ---- where the projector comes from (GaLore's SVD, or the successors') -------------------
    def _param_index(self, p: Tensor) -> int:
        """``p``'s position among the optimizer's parameters (seeds its random projections)."""
        if id(p) not in self._index:
            params = (q for g in self.param_groups for q in g["params"])
            self._index = {id(q): i for i, q in enumerate(params)}
        return self._index[id(p)]

    def _new_projector(
        self,
        p: Tensor,
        grad: Tensor,
        group: dict[str, Any],
        state: dict[str, Any],
        side: Side,
        previous_left: Tensor | None,
        previous_right: Tensor | None,
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """``(left, right, R or None)`` of a refresh: the SVD's subspace (``svd`` method), a
        Gaussian projection (``projection="random"``, APOLLO) or, from step ``random_after``
        on, a random orthonormal basis (GoLore)."""
        rank = self._effective_rank(p, group)
        golore = group["random_after"] is not None and state["step"] >= group["random_after"]
        if group["projection"] == "random" or golore:
            seed = projection_seed_for(
                group["projection_seed"], self._param_index(p), state["step"]
            )
            draw = gaussian_projector if group["projection"] == "random" else orthonormal_projector
            if group["projection"] == "random":
                state["proj_seed"] = seed
            left, right = draw(
                matrix_shape(p.shape), rank, side, seed, device=grad.device, dtype=p.dtype
            )
            return left, right, None
        return refresh_projector(
            grad,
            rank,
            side,
            method=group["svd"],
            previous_left=previous_left,
            previous_right=previous_right,
            out_dtype=p.dtype,
            shard=self._row_shard(p),
            align=group["moments"] != "keep",
        )

    def _projectors(
        self, p: Tensor, state: dict[str, Any], group: dict[str, Any]
    ) -> tuple[Tensor | None, Tensor | None]:
        """``(left, right)`` as the projection uses them: stored, de-quantized from their codes,
        or regenerated from their seed; ``(None, None)`` before the first refresh."""
        if "proj_seed" in state:
            side = Side(state["proj_side"])
            return gaussian_projector(
                matrix_shape(p.shape),
                self._effective_rank(p, group),
                side,
                state["proj_seed"],
                device=local(p).device,
                dtype=p.dtype,
            )
        factors = []
        for key in ("proj_left", "proj_right"):
            if f"{key}_codes" in state:
                factors.append(
                    dequantize(
                        state[f"{key}_codes"],
                        state[f"{key}_absmax"],
                        self._projector_shape(p, group, key),
                        group["projector_bits"],
                        PROJECTOR_BLOCK,
                        p.dtype,
                    )
                )
            else:
                factors.append(state.get(key))
        return factors[0], factors[1]

    def _projector_shape(self, p: Tensor, group: dict[str, Any], key: str) -> tuple[int, int]:
        m, n = matrix_shape(p.shape)  # a DTensor's shape is the whole parameter's
        rank = effective_rank(group["rank"], (m, n))
        return (m, rank) if key == "proj_left" else (rank, n)

    def _store_projector(
        self,
        state: dict[str, Any],
        group: dict[str, Any],
        left: Tensor | None,
        right: Tensor | None,
    ) -> tuple[Tensor | None, Tensor | None]:
        """Keep the new projector as the group says: nothing (regenerated from ``proj_seed``),
        block-quantized codes (``projector_bits``) or the tensors themselves; returns it as the
        projection will use it (de-quantized)."""
        if group["projection"] == "random":
            return left, right
        used = []
        for key, factor in (("proj_left", left), ("proj_right", right)):
            if factor is not None and group["projector_bits"] is not None:
                bits = group["projector_bits"]
                codes, absmax = quantize(factor, bits, PROJECTOR_BLOCK)
                state[f"{key}_codes"], state[f"{key}_absmax"] = codes, absmax
                factor = dequantize(
                    codes, absmax, factor.shape, bits, PROJECTOR_BLOCK, factor.dtype
                )
            elif factor is not None:
                state[key] = factor
            used.append(factor)
        return used[0], used[1]

    def _lazy_schedule(
        self,
        state: dict[str, Any],
        group: dict[str, Any],
        first: bool,
        previous: tuple[Tensor | None, Tensor | None],
        new: tuple[Tensor | None, Tensor | None],
    ) -> None:
        """Q-GaLore's adaptive lazy refresh: the matrix's period doubles when the similarity of
        its successive projectors averages ≥ ``LAZY_REFRESH_THRESHOLD`` over the last
        ``LAZY_REFRESH_WINDOW`` refreshes (the window then starts again)."""
        gap = state.setdefault("proj_gap", group["update_proj_gap"])
        if not first:
            sims = [*state.get("proj_similarity", []), basis_similarity(*previous, *new)]
            sims = sims[-LAZY_REFRESH_WINDOW:]
            if len(sims) == LAZY_REFRESH_WINDOW and sum(sims) / len(sims) >= LAZY_REFRESH_THRESHOLD:
                gap = state["proj_gap"] = 2 * gap
                sims = []
            state["proj_similarity"] = sims
        # the first period is shortened by the stagger offset, as the fixed schedule's is
        state["proj_next"] = state["step"] + gap - (state.get("proj_offset", 0) if first else 0)

    # ---- moments across a refresh (subclasses know their moments) ------------------------------
    def _has_moments(self, state: dict[str, Any]) -> bool:
        """Whether ``state`` holds moments yet (not before the first update)."""
        return any(key in state for key in self._moment_keys)

    def _rotate_moments(
        self,
        state: dict[str, Any],
        group: dict[str, Any],
        c_left: Tensor | None,
        c_right: Tensor | None,
    ) -> None:
        """Carry the low-rank moments into the new basis, in place
        (``galorekit.projection.alignment.rotate_first``/``rotate_second``)."""
        raise NotImplementedError

    def _mean_weight(self, state: dict[str, Any], group: dict[str, Any]) -> float:
        """(1−β₂ᵗ)/(1−β₁ᵗ)²: the weight of M² in V when both carry Adam's bias (m̂² = M²/(1−β₁ᵗ)²,
        v̂ = V/(1−β₂ᵗ)); 1 without bias correction."""
        if not group.get("correct_bias", True) or "betas" not in group:
            return 1.0
        beta1, beta2 = group["betas"]
        t = max(1, self._moment_step(state))
        return (1.0 - beta2**t) / (1.0 - beta1**t) ** 2

    def _drop_moments(self, state: dict[str, Any]) -> None:
        for key in self._moment_keys:
            state.pop(key, None)
        state["moment_origin"] = state["step"]

    def _reset_moments(self, state: dict[str, Any]) -> None:
        """Zero the moments in place and restart their bias correction (``moment_origin``)."""
        for key in self._moment_keys:
            if key in state:
                state[key].zero_()
        state["moment_origin"] = state["step"]

    @staticmethod
    def _moment_step(state: dict[str, Any]) -> int:
        """Updates since the moments were last zeroed: what bias corrections count."""
        return state["step"] - state.get("moment_origin", 0)
