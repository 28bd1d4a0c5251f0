"""What every GaLore optimizer shares: group validation, the per-parameter projector state and its
refresh, the non-finite policy, and a dtype-preserving ``load_state_dict``.

Per-parameter state of a GaLore parameter (only tensors and plain numbers, so that
``torch.load(weights_only=True)`` reads a checkpoint):

- ``step`` (int): updates applied so far.
- ``proj_side`` (int): a ``galorekit.projection.Side``, recorded at the first projection.
- ``proj_left`` (m×r) and/or ``proj_right`` (r×n = Qᵀ): the projector, in the parameter's dtype.
- ``proj_refresh_step`` (int): the ``step`` at which the projector was last computed.
- ``proj_offset`` (int): how many steps early this matrix's refreshes come (``stagger``; else 0).
- ``nonfinite_skips`` (int, only with ``on_nonfinite="skip"``): updates skipped for NaN/Inf.
- ``moment_origin`` (int, only after ``moments="reset"``): the ``step`` at which the moments were
  last zeroed; bias corrections count from it.
- the inner optimizer's moments, shaped like the projected gradient.

The successors' group options (``galorekit.names.SUCCESSOR_DEFAULTS``) add:

- ``proj_seed`` (int, ``projection="random"``): the seed the projector is regenerated from at
  every step (``galorekit.projection.random``); no ``proj_left``/``proj_right`` is stored.
- ``proj_left_codes``/``proj_right_codes`` (uint8) and ``proj_left_absmax``/``proj_right_absmax``
  (float32, one per block of 256), instead of the projector, with ``projector_bits``
  (``galorekit.projection.quantize``).
- ``proj_gap`` (int), ``proj_next`` (int) and ``proj_similarity`` (list of floats) with
  ``lazy_refresh``: this matrix's refresh period, the step of its next refresh, and the last
  similarities of successive projectors.
- ``limiter_norm`` (0-d float32) with ``residual`` or ``scaling``: the norm-growth limiter's
  reference, the norm of the previous full-rank term.

At a refresh the group key ``moments`` decides what happens to the moments (``galorekit.names.
MOMENT_POLICIES``, ``galorekit.projection.alignment``): every policy but ``"keep"`` first matches
the new basis's columns to the old ones; the default ``"project"`` then carries the moments into
the new basis (M ← C·M, V ← |(C∘C)(V − M²) + (C·M)²|, C = P_newᵀP_old: LDAdam's transfer),
``"align"`` keeps them as they are.

FSDP2 parameters (DTensors sharded on dim 0) are updated on their local shard
(``galorekit.optim.sharding``): a GaLore matrix is projected on the right, its projector is
refreshed by a subspace iteration whose sketches are summed over the shards, and the state holds
this process's rows only. The non-finite checks are summed over the shards too, so that every
process takes the same decision.
"""

from __future__ import annotations

import difflib
import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from galorekit.names import (
    GALORE_DEFAULTS,
    SUCCESSOR_DEFAULTS,
)
from galorekit.optim.refresh import ProjectorRefresh
from galorekit.optim.rounding import rounds_stochastically, stochastically_rounded
from galorekit.optim.sharding import (
    all_reduce_sum_,
    check_row_sharded,
    is_sharded,
    local,
    row_shard,
)
from galorekit.optim.state_checks import check_state_dict
from galorekit.optim.successors import apollo_update, fira_residual
from galorekit.optim.validation import (  # noqa: F401  (re-exported: the optimizers' public helpers)
    as_matrix,
    matrix_shape,
    normalize_state_dtype,
    param_name,
    state_dtype,
    validate_betas,
    validate_galore_group,
    validate_lr,
)
from galorekit.projection import (
    Side,
    add_projected_,
    choose_side,
    effective_rank,
    project_back,
)
from galorekit.projection.sharded import RowShard
from galorekit.projection.svd import nonfinite_error, nonfinite_probe

NONFINITE_POLICIES = ("raise", "skip")
#: the successors' state tensors that keep their dtype on load (float32 scales and norms)
SUCCESSOR_FLOAT_KEYS = frozenset({"proj_left_absmax", "proj_right_absmax", "limiter_norm"})


@dataclass(frozen=True)
class ProjectionView:
    """The projector the next update of a parameter uses (read-only: the tensors are the
    optimizer state's, or regenerated / de-quantized from it). ``refresh_due``: that update
    needs the full gradient (it recomputes the projector from it; or, with Fira's residual or
    APOLLO's scaling, reads it at every step; or the projector is not orthonormal — a random
    Gaussian or a quantized one — so a gradient projected and projected back would not give the
    optimizer the same R)."""

    side: Side
    left: Tensor | None
    right: Tensor | None
    refresh_due: bool


class GaLoreOptimizer(ProjectorRefresh, torch.optim.Optimizer):
    """Base class: subclasses implement ``_update_param(p, grad, group)`` for one parameter.

    ``step()`` applies it to every parameter with a gradient (through ``_update_params``, which a
    subclass may override to batch them); ``galorekit.LayerwiseOptimizer`` calls it from backward
    hooks instead, one parameter at a time.
    """

    #: state keys whose tensors keep their own dtype on load (8-bit codes, their absmax and maps);
    #: every other floating state tensor follows the parameter's dtype, as in torch.
    _keep_dtype_keys: frozenset[str] = frozenset()
    #: the inner optimizer's moment tensors in a parameter's state (zeroed by a reset; they keep
    #: their dtype on load when the group has a ``state_dtype``)
    _moment_keys: tuple[str, ...] = ()

    def __init__(
        self, params: Iterable[Any], defaults: dict[str, Any], *, on_nonfinite: str = "raise"
    ) -> None:
        if on_nonfinite not in NONFINITE_POLICIES:
            raise ValueError(
                f"on_nonfinite must be one of {', '.join(NONFINITE_POLICIES)}, got {on_nonfinite!r}"
            )
        self.on_nonfinite = on_nonfinite
        self._rank_warned = False
        self._prechecked = False
        self._shards: dict[int, RowShard] = {}  # id(param) -> its row shard (FSDP2)
        # id(param) -> (left, right, grad, R) between a parameter's projection and its update,
        # where the update needs them again: a projector that is not stored as it is used
        # (regenerated, de-quantized), and the gradients Fira's and APOLLO's updates read
        self._live: dict[int, tuple] = {}
        self._index: dict[int, int] = {}  # id(param) -> its position in the optimizer
        super().__init__(params, defaults)

    # ---- groups -------------------------------------------------------------------------------
    #: group keys any galorekit optimizer takes besides its defaults' ("initial_lr" is what
    #: torch's LR schedulers add)
    _COMMON_GROUP_KEYS = frozenset(
        {"params", "param_names", "rank", "initial_lr", "weight_rounding"}
    )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if isinstance(param_group, dict):
            self._check_group_keys(param_group)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self._validate_group(group)
        if "rank" in group:
            validate_galore_group(group)

    def _check_group_keys(self, group: dict[str, Any]) -> None:
        """Refuse a key no galorekit optimizer reads: a typo such as ``ranks`` would otherwise
        turn a GaLore group into a plain one without a word."""
        known = (
            self._COMMON_GROUP_KEYS
            | self.defaults.keys()
            | GALORE_DEFAULTS.keys()
            | SUCCESSOR_DEFAULTS.keys()
        )
        for key in group:
            if key not in known:
                close = difflib.get_close_matches(str(key), sorted(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else "."
                raise ValueError(
                    f"unknown param group key {key!r} for {type(self).__name__}{hint} Valid: "
                    f"{', '.join(sorted(known - {'params', 'initial_lr'}))}"
                )

    def _validate_group(self, group: dict[str, Any]) -> None:
        validate_lr(group["lr"])
        if "state_dtype" in group:
            group["state_dtype"] = normalize_state_dtype(group["state_dtype"])
        names = group.get("param_names") or []
        for i, p in enumerate(group["params"]):
            if is_sharded(p):
                check_row_sharded(p, names[i] if i < len(names) else f"parameter {i}")

    # ---- the step -----------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        pairs = [(p, g) for g in self.param_groups for p in g["params"] if p.grad is not None]
        # Check every gradient before touching any state (one host sync for all of them): "raise"
        # must never leave a half-applied step behind, and both policies must protect every
        # parameter — a NaN loss reaches biases, norms and embeddings too, not only the GaLore
        # matrices.
        bad = self._nonfinite_params(pairs)
        self._prechecked = True
        try:
            for p in bad:
                state = self.state[p]
                state.setdefault("step", 0)
                state["nonfinite_skips"] = state.get("nonfinite_skips", 0) + 1
            self._update_params([(p, group) for p, group in pairs if p not in bad])
        finally:
            self._prechecked = False
        return loss

    def _update_params(self, pairs: list[tuple[Tensor, dict[str, Any]]]) -> None:
        """Update every ``(parameter, its group)`` from its gradient: one at a time here;
        subclasses may batch the work (``GaLoreAdamW``'s foreach path)."""
        for p, group in pairs:
            self._update_param(p, p.grad, group)

    def _nonfinite_params(self, pairs: list[tuple[Tensor, dict[str, Any]]]) -> set[Tensor]:
        """The parameters among ``pairs`` whose gradient holds NaN/Inf; with the "raise" policy
        the first such one raises ``NonFiniteGradientError`` naming it."""
        if not pairs:
            return set()
        device = pairs[0][0].device
        # a sharded gradient's probes and counts are summed over its shards: every process must
        # take the same decision, or one would skip (or raise) while the others wait for it
        sharded = next((p for p, _ in pairs if is_sharded(p)), None)
        # one reduction per gradient and one host sync for all: isfinite().all() costs three
        # element-wise passes and a bool temporary per gradient, as much as an AdamW update
        probes = torch.stack([nonfinite_probe(local(p.grad)).float().to(device) for p, _ in pairs])
        if sharded is not None:
            all_reduce_sum_(probes, sharded)
        if bool(torch.isfinite(probes).all()):
            return set()
        # confirmed element-wise: the sum of a finite gradient can overflow
        suspects = [i for i, probe in enumerate(probes.tolist()) if not math.isfinite(probe)]
        counts = torch.stack(
            [(~torch.isfinite(local(pairs[i][0].grad))).sum().float().to(device) for i in suspects]
        )
        if sharded is not None:
            all_reduce_sum_(counts, sharded)
        bad: set[Tensor] = set()
        for i, count in zip(suspects, counts.tolist()):
            if count == 0:
                continue
            p, group = pairs[i]
            if self.on_nonfinite == "raise":
                raise nonfinite_error(self._param_name(p, group), int(count))
            bad.add(p)
        return bad

    def _update_param(self, p: Tensor, grad: Tensor, group: dict[str, Any]) -> None:
        raise NotImplementedError

    # ---- GaLore machinery shared by the subclasses -------------------------------------------
    def _param_name(self, p: Tensor, group: dict[str, Any]) -> str:
        return param_name(p, group, f"a parameter of shape {tuple(p.shape)}")

    def _effective_rank(self, p: Tensor, group: dict[str, Any]) -> int:
        shape = matrix_shape(p.shape)
        rank = effective_rank(group["rank"], shape)
        if group["rank"] >= min(shape) and not self._rank_warned:
            warnings.warn(
                f"GaLore rank {group['rank']} ≥ min(m, n) = {rank} for "
                f"{self._param_name(p, group)} (and possibly others): clamped to min(m, n); such "
                "a matrix gets no memory saving. This warning is shown once.",
                UserWarning,
                stacklevel=4,
            )
            self._rank_warned = True
        return rank

    def _refresh_due(self, state: dict[str, Any], group: dict[str, Any]) -> bool:
        if "proj_side" not in state:
            return True
        if "proj_next" in state:  # lazy refresh: this matrix's own period
            return state.get("step", 0) >= state["proj_next"]
        step = state.get("step", 0) + state.get("proj_offset", 0)
        return step % group["update_proj_gap"] == 0

    @staticmethod
    def _full_rank_update(group: dict[str, Any]) -> bool:
        """Whether the group's updates read the full gradient at every step (Fira's residual,
        APOLLO's scaling)."""
        return group.get("residual") is not None or group.get("scaling") is not None

    @staticmethod
    def _stagger_offset(p: Tensor, group: dict[str, Any]) -> int:
        """With ``stagger``, the i-th of a group's N matrices refreshes ⌊i·T/N⌋ steps early (after
        the first projection at its first step), so that a step carries ⌈N/T⌉ refreshes instead
        of N: no step stalls on every SVD at once. 0 (the paper's schedule) without."""
        if not group["stagger"]:
            return 0
        params = group["params"]
        index = next(i for i, q in enumerate(params) if q is p)
        return (index * group["update_proj_gap"]) // len(params)

    def projection(self, p: Tensor, group: dict[str, Any] | None = None) -> ProjectionView | None:
        """The projector of ``p``'s next update, for code that must project a gradient before the
        optimizer sees it (low-rank gradient communication); None outside GaLore groups.
        ``group``: ``p``'s param group when the caller knows it (saves searching every group)."""
        if group is None:
            group = next((g for g in self.param_groups if any(q is p for q in g["params"])), None)
        if group is None or "rank" not in group:
            return None
        state = self.state.get(p, {})
        if "proj_side" not in state:
            return ProjectionView(Side.LEFT, None, None, refresh_due=True)
        left, right = self._projectors(p, state, group)
        # Fira's and APOLLO's updates read the full gradient at every step, as a refresh does;
        # and G' = P·R̄ projects back to R̄ only for an orthonormal P, which neither a Gaussian
        # nor a quantized projector is: code that would project first gets the full gradient
        needs_full = (
            self._full_rank_update(group)
            or group["projection"] == "random"
            or group["projector_bits"] is not None
        )
        return ProjectionView(
            Side(state["proj_side"]), left, right, self._refresh_due(state, group) or needs_full
        )

    def _nonfinite(
        self, tensor: Tensor, p: Tensor, group: dict[str, Any], state: dict, *, force: bool = False
    ) -> bool:
        """True when ``tensor`` (local to this process for a sharded ``p``) is not finite and the
        update must be skipped; raises by default. Under ``step()``, which checked every gradient
        up front, only a ``force``d check runs."""
        if self._prechecked and not force:
            return False
        probe = nonfinite_probe(tensor).float()
        if is_sharded(p):
            all_reduce_sum_(probe.reshape(1), p)
        if bool(torch.isfinite(probe)):
            return False
        count = (~torch.isfinite(tensor)).sum().float()
        if is_sharded(p):
            all_reduce_sum_(count.reshape(1), p)
        if int(count) == 0:  # a finite tensor whose sum overflowed
            return False
        if self.on_nonfinite == "raise":
            raise nonfinite_error(self._param_name(p, group), int(count))
        state["nonfinite_skips"] = state.get("nonfinite_skips", 0) + 1
        return True

    def _inner_grad(
        self, p: Tensor, grad: Tensor, group: dict[str, Any]
    ) -> tuple[dict[str, Any], Tensor | None]:
        """``(state, g)``: the gradient the inner optimizer updates on — the projection for a
        GaLore group, ``grad`` itself otherwise (this process's shard of a sharded one); ``g`` is
        None when the update is skipped. ``state`` is keyed by ``p`` itself."""
        if grad.is_sparse:
            raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
        grad = local(grad)
        state = self.state[p]
        if "rank" in group:
            grad = self._project_grad(p, grad, group, state)
        elif self._nonfinite(grad, p, group, state):
            grad = None
        state.setdefault("step", 0)
        return state, grad

    def _apply_update(
        self, p: Tensor, update: Tensor, group: dict[str, Any], state: dict, alpha: float
    ) -> None:
        """p += alpha · update, projected back (and scaled) for a GaLore group; with Fira's
        residual, plus alpha · φ⊙(G − P·R); with APOLLO's scaling, alpha · scale · φ⊙G instead
        (``update`` is then only read for φ: it must be the update in R's orientation, N, not
        −N)."""
        weight = local(p)
        if rounds_stochastically(group, weight):  # bf16: w + Δ exact in fp32, rounded randomly
            with stochastically_rounded(weight) as exact:
                self._add_update(p, exact, update, group, state, alpha)
        else:
            self._add_update(p, weight, update, group, state, alpha)

    def _add_update(
        self,
        p: Tensor,
        weight: Tensor,
        update: Tensor,
        group: dict[str, Any],
        state: dict,
        alpha: float,
    ) -> None:
        """:meth:`_apply_update` on ``weight``, the local tensor of ``p`` (or its exact float32
        copy under stochastic rounding)."""
        update = update.to(weight.dtype)  # moments may be kept in another dtype (state_dtype)
        if "rank" not in group:
            weight.add_(update, alpha=alpha)
            return
        side = Side(state["proj_side"])
        live = self._live.pop(id(p), None)
        if live is not None:
            left, right, grad, low_rank = live
        else:
            left, right, grad, low_rank = (
                state.get("proj_left"),
                state.get("proj_right"),
                None,
                None,
            )
        left, right = (t if t is None else t.to(weight.dtype) for t in (left, right))
        if group["scaling"] is not None:  # APOLLO: the full gradient, scaled
            full = apollo_update(
                grad, low_rank, update, side, group["scaling"], total=self._total(p)
            )
            self._limit(full, p, group, state)
            weight.add_(full.reshape(weight.shape), alpha=alpha * group["scale"])
            return
        if weight.dim() == 2 or weight.is_contiguous():
            add_projected_(as_matrix(weight), update, side, left, right, alpha * group["scale"])
        else:  # e.g. channels_last: no matrix view of it to update in place
            full = project_back(update, side, left, right, alpha * group["scale"])
            weight.add_(full.reshape(weight.shape))
        if group["residual"] == "fira":  # Fira: plus the scaled residual, not multiplied by α
            residual = fira_residual(
                grad, low_rank, update, side, left, right, total=self._total(p)
            )
            self._limit(residual, p, group, state)
            weight.add_(residual.reshape(weight.shape), alpha=alpha)

    def _state_shapes(self, shape: tuple[int, ...], group: dict[str, Any]) -> dict[str, tuple]:
        """The shape of each moment tensor of a parameter whose (projected) gradient has
        ``shape``; keys absent here are not checked on load."""
        raise NotImplementedError

    def _choose_side(self, p: Tensor, group: dict[str, Any]) -> Side:
        if not is_sharded(p):
            return choose_side(group["proj_type"], matrix_shape(p.shape))
        # a row shard holds whole rows: only G_i·Q is local to it (projection.sharded)
        if group["proj_type"] not in ("std", "right"):
            raise ValueError(
                f"{self._param_name(p, group)} is sharded by rows (FSDP2), where GaLore projects "
                f"on the right; proj_type {group['proj_type']!r} is not available there — use "
                "'std' (projects every sharded matrix on the right) or 'right'"
            )
        return Side.RIGHT

    def _row_shard(self, p: Tensor) -> RowShard | None:
        if not is_sharded(p):
            return None
        shard = self._shards.get(id(p))
        if shard is None:
            shard = self._shards[id(p)] = row_shard(p)
        return shard

    # ---- checkpoints --------------------------------------------------------------------------
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's load, checked first (``check_state_dict``: nothing changes when it refuses),
        except that the tensors named in ``_keep_dtype_keys``, non-floating tensors and, in a group
        with a ``state_dtype``, the moments keep their dtype (torch would cast 8-bit codes or
        float32 moments to the parameter's dtype)."""
        self.check_state_dict(state_dict)
        saved_ids = [pid for g in state_dict["param_groups"] for pid in g["params"]]
        kept: dict[Any, dict[str, Tensor]] = {}
        for saved in state_dict["param_groups"]:
            own_dtype = self._keep_dtype_keys | SUCCESSOR_FLOAT_KEYS
            if saved.get("state_dtype") is not None:
                own_dtype = own_dtype | frozenset(self._moment_keys)
            for pid in saved["params"]:
                kept[pid] = {
                    k: v
                    for k, v in state_dict["state"].get(pid, {}).items()
                    if isinstance(v, Tensor)
                    and k != "step"
                    and (k in own_dtype or not v.is_floating_point())
                }
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        for pid, p in zip(saved_ids, params):
            for key, value in kept.get(pid, {}).items():
                self.state[p][key] = value.to(device=p.device, copy=True)
        for group in self.param_groups:
            if "rank" in group:
                validate_galore_group(group)

    def check_state_dict(self, state_dict: Any) -> None:
        """Refuse (``ValueError`` naming the first mismatch) a state dict that does not belong to
        this optimizer's parameters; see ``galorekit.optim.state_checks``."""
        check_state_dict(self, state_dict)
