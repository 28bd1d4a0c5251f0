"""Layer-wise (in-backward) updates: each parameter is updated as soon as its gradient is final,
during backward, and its gradient is freed at once — so the full set of weight gradients never
exists (the paper's 7B-in-22-GB setting).

Unlike the reference implementation (one optimizer and one scheduler per parameter, stepped from a
``register_post_accumulate_grad_hook``), this is one object used with the ordinary loop::

    opt = LayerwiseOptimizer(param_groups(model), GaLoreAdamW, accumulation_steps=4, lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup)
    for i, batch in enumerate(loader):
        (loss(batch) / 4).backward()      # the 4th backward updates every parameter
        if (i + 1) % 4 == 0:
            opt.step(); opt.zero_grad(); sched.step()

and it is correct where the reference is not:

- **Gradient accumulation.** A parameter's hook counts the backward passes it has seen since its
  last update; on the ``accumulation_steps``-th it updates on the accumulated gradient (exactly
  what ``.grad`` holds in ordinary training) and frees it. ``step()`` updates any parameter whose
  gradient did not arrive in every micro-batch (so nothing is lost), and raises when the number of
  backward passes does not match ``accumulation_steps``: too few at ``step()``, too many as soon
  as a parameter already updated in this step gets another gradient (inside that backward, before
  anything is applied twice). A parameter that gets no gradient in a step is not updated (no
  moment decay, no weight decay), as torch's optimizers do with ``zero_grad(set_to_none=True)``;
  each gradient is freed after its update, so ``zero_grad(set_to_none=False)`` has nothing to
  zero and does not change that. *Memory between micro-batches:* the
  accumulated ``.grad`` of every parameter lives from the first micro-batch to the last — the full
  gradient set exists during accumulation, as in ordinary training; only the last backward frees
  each gradient as soon as it is used. Without accumulation no full set ever exists.
- **LR schedules.** ``param_groups`` is the inner optimizer's, so any ``torch.optim.lr_scheduler``
  drives every parameter's lr once per optimizer step.
- **Clipping.** ``clip_grad_norm`` (per parameter: each gradient clipped to this norm on its own)
  and ``max_grad_norm`` (global norm) with ``global_clip``:
  ``"previous"`` (default) scales every gradient of step t by min(1, max_norm / ‖g_{t-1}‖), the
  global norm of the previous step (the norm of step t is unknown until its backward is over, and
  the update cannot wait for it without keeping every gradient); the first step is not clipped.
  ``"exact"`` needs ``step(closure)``: the closure (which runs the forward/backward of all
  micro-batches) is run twice, first to measure the global norm without updating, then to update
  with exactly the coefficient ``torch.nn.utils.clip_grad_norm_`` would use; it costs a second
  forward/backward, and the RNG state is restored between the runs so that dropout matches.
  ``grad_norm`` holds the global pre-clip norm of the last step for logging (not 0).
- **Checkpoints.** ``state_dict()`` holds the inner optimizer's state plus the step count and the
  clipping norm, only tensors and plain numbers: ``torch.load(weights_only=True)`` reads it and a
  resumed run is bit-identical.
- **Data parallelism.** Do not wrap the model in ``DistributedDataParallel``: its reduction runs
  after the hooks and would update each rank with its own gradient. With ``torch.distributed``
  initialized (``data_parallel=None`` detects it), each final gradient is all-reduced (averaged over
  the ranks) inside its hook before the update, so every rank applies the same update; broadcast the
  initial weights from rank 0 (``galorekit.optim.layerwise.broadcast_parameters``).
  Under FSDP2 (parameters are DTensors sharded on dim 0) the hooks fire after FSDP's
  reduce-scatter with this process's shard of the averaged gradient: nothing is reduced in the
  hooks, each shard is updated where it lies, and the global norm adds the shards' squares
  (one scalar all-reduce per step).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from galorekit.optim.base import GaLoreOptimizer
from galorekit.optim.sharding import all_reduce_sum_, is_sharded, local
from galorekit.optim.validation import param_name

GLOBAL_CLIP_MODES = ("previous", "exact")


def broadcast_parameters(module: torch.nn.Module, src: int = 0, group: Any = None) -> None:
    """Copy ``src``'s parameters and buffers to every rank (what DDP does at construction)."""
    import torch.distributed as dist

    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=src, group=group)


class LayerwiseOptimizer(torch.optim.Optimizer):
    """Updates each parameter inside backward; see the module docstring.

    Args:
        params_or_groups: parameters or param groups, as for ``optimizer_cls``.
        optimizer_cls: a galorekit optimizer (one instance updates parameter by parameter), or any
            ``torch.optim.Optimizer`` class, e.g. ``torch.optim.AdamW`` or bitsandbytes'
            ``AdamW8bit`` (then one instance per parameter, its hyper-parameters synced from
            ``param_groups`` before each update).
        accumulation_steps: backward passes per optimizer step.
        clip_grad_norm: per-parameter gradient norm clip (None: off).
        max_grad_norm: global gradient norm clip (None: off), see ``global_clip``.
        global_clip: ``"previous"`` or ``"exact"`` (module docstring).
        data_parallel: average gradients over ``torch.distributed`` ranks in the hooks; None: when
            the default process group is initialized with more than one rank.
        process_group: the group to reduce over (default: the world).
        **optimizer_kwargs: passed to ``optimizer_cls``.
    """

    def __init__(
        self,
        params_or_groups: Iterable[Any],
        optimizer_cls: type[torch.optim.Optimizer],
        *,
        accumulation_steps: int = 1,
        clip_grad_norm: float | None = None,
        max_grad_norm: float | None = None,
        global_clip: str = "previous",
        data_parallel: bool | None = None,
        process_group: Any = None,
        **optimizer_kwargs: Any,
    ) -> None:
        if not isinstance(accumulation_steps, int) or accumulation_steps < 1:
            raise ValueError(
                f"accumulation_steps must be an integer ≥ 1, got {accumulation_steps!r}"
            )
        for name, value in (("clip_grad_norm", clip_grad_norm), ("max_grad_norm", max_grad_norm)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 or None, got {value!r}")
        if global_clip not in GLOBAL_CLIP_MODES:
            raise ValueError(
                f"global_clip must be one of {', '.join(GLOBAL_CLIP_MODES)}, got {global_clip!r}"
            )
        if isinstance(optimizer_cls, torch.optim.Optimizer) or not (
            isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.Optimizer)
        ):
            raise TypeError(
                "optimizer_cls must be an optimizer class (e.g. galorekit.GaLoreAdamW), "
                f"got {optimizer_cls!r}"
            )
        self.optimizer_cls = optimizer_cls
        self.optimizer_kwargs = optimizer_kwargs
        self.accumulation_steps = accumulation_steps
        self.clip_grad_norm = clip_grad_norm
        self.max_grad_norm = max_grad_norm
        self.global_clip = global_clip
        self.process_group = process_group
        self._data_parallel = data_parallel

        # one inner optimizer owns the groups (with their defaults filled in) and, for galorekit
        # classes, the state; other classes get one instance per parameter, made lazily
        self.inner = optimizer_cls(params_or_groups, **optimizer_kwargs)
        self._galore = isinstance(self.inner, GaLoreOptimizer)
        self._per_param: dict[int, torch.optim.Optimizer] = {}

        # what torch.optim.Optimizer's own __init__ would set (schedulers and hooks rely on it)
        self.defaults = self.inner.defaults
        self._optimizer_step_pre_hooks: OrderedDict = OrderedDict()
        self._optimizer_step_post_hooks: OrderedDict = OrderedDict()
        self._optimizer_state_dict_pre_hooks: OrderedDict = OrderedDict()
        self._optimizer_state_dict_post_hooks: OrderedDict = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks: OrderedDict = OrderedDict()
        self._optimizer_load_state_dict_post_hooks: OrderedDict = OrderedDict()

        self.steps = 0
        self.grad_norm: float | None = None  # global pre-clip norm of the last step
        self._prev_grad_norm: float | None = None
        self._sq_norm: Tensor | None = None
        self._pending: dict[int, int] = {}  # param index -> backward passes since its update
        self._passes = 0  # backward passes of the current step, counted once per backward
        self._graph_task: int | None = None  # the autograd graph task of the last pass counted
        self._mode = "update"  # "update" | "measure" (first pass of exact clipping)
        self._clip_coef = 1.0
        self._params: list[Tensor] = []
        self._group_index: list[int] = []  # by index: load_state_dict replaces the group dicts
        self._handles: list[Any] = []
        for index in range(len(self.param_groups)):
            self._register(index)
        # a sharded parameter (FSDP2) whose process group sums the shards' squared norms
        self._sharded = next((p for p in self._params if is_sharded(p)), None)
        if self._sharded is not None and data_parallel:
            raise ValueError(
                "data_parallel=True all-reduces gradients in the hooks, but these parameters are "
                "FSDP2-sharded: FSDP has already reduce-scattered them; leave data_parallel=None"
            )

    # ---- torch.optim.Optimizer surface -------------------------------------------------------
    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        """The inner optimizer's groups (schedulers set ``lr`` here)."""
        return self.inner.param_groups

    @property
    def state(self) -> Any:  # type: ignore[override]
        if self._galore:
            return self.inner.state
        merged: dict[Tensor, Any] = {}
        for opt in self._per_param.values():
            merged.update(opt.state)
        return merged

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.inner.add_param_group(param_group)
        self._register(len(self.param_groups) - 1)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clears gradients (those left by a partial accumulation too) and the pass counters."""
        for p in self._params:
            if p.grad is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_().zero_()
        self._pending.clear()
        self._reset_passes()

    def _param_name(self, index: int) -> str:
        p = self._params[index]
        group = self.param_groups[self._group_index[index]]
        return param_name(p, group, f"the parameter of shape {tuple(p.shape)} (index {index})")

    def __repr__(self) -> str:
        return (
            f"LayerwiseOptimizer({self.optimizer_cls.__name__}, "
            f"accumulation_steps={self.accumulation_steps}, groups={len(self.param_groups)})"
        )

    # ---- hooks -------------------------------------------------------------------------------
    def _register(self, group_index: int) -> None:
        for p in self.param_groups[group_index]["params"]:
            if not p.requires_grad:
                continue
            index = len(self._params)
            self._params.append(p)
            self._group_index.append(group_index)
            self._handles.append(p.register_post_accumulate_grad_hook(self._make_hook(index)))

    def _make_hook(self, index: int) -> Callable[[Tensor], None]:
        def hook(param: Tensor) -> None:
            if self._count_pass() > self.accumulation_steps:
                # raised by the pass's first hook, before any parameter is updated on it; the
                # refused pass is not counted, so step() then ends the step it belongs to
                self._passes = self.accumulation_steps
                raise RuntimeError(
                    f"LayerwiseOptimizer(accumulation_steps={self.accumulation_steps}): backward "
                    f"pass {self.accumulation_steps + 1} of this optimizer step reached "
                    f"{self._param_name(index)}"
                    f"; call step() and zero_grad() after every {self.accumulation_steps} "
                    "backward pass(es). Nothing of this pass was applied."
                )
            seen = self._pending.get(index, 0) + 1
            self._pending[index] = seen
            if seen >= self.accumulation_steps:
                self._finish(index)

        return hook

    def _count_pass(self) -> int:
        """Backward passes of this step so far, this one included: each autograd graph task
        (one ``backward()``) counts once, whichever parameters it reaches."""
        task = torch._C._current_graph_task_id()  # torch ≥ 2.1; -1 outside a backward
        if task >= 0 and task != self._graph_task:
            self._graph_task = task
            self._passes += 1
        return self._passes

    def _reset_passes(self) -> None:
        self._passes = 0
        self._graph_task = None

    def remove_hooks(self) -> None:
        """Detach from the parameters (the optimizer is unusable afterwards)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @property
    def data_parallel(self) -> bool:
        if self._data_parallel is not None:
            return self._data_parallel
        if self._sharded is not None:  # FSDP2 reduces before the hooks fire
            return False
        import torch.distributed as dist

        return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    @torch.no_grad()
    def _finish(self, index: int) -> None:
        """The gradient of parameter ``index`` is final for this step: reduce, measure, clip,
        update, free."""
        p = self._params[index]
        self._pending.pop(index, None)
        grad = p.grad
        if grad is None:
            return
        if self.data_parallel:
            import torch.distributed as dist

            dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=self.process_group)
            grad.div_(dist.get_world_size(self.process_group))
        # no full-size float32 copy of a bf16 gradient (for a 7B embedding that would be ~1 GB)
        shard = local(grad).detach()
        sq = torch.linalg.vector_norm(shard, dtype=torch.float32).square()
        self._sq_norm = sq if self._sq_norm is None else self._sq_norm + sq
        if self._mode == "measure":
            p.grad = None
            return
        if self.clip_grad_norm is not None:
            own = sq.clone()
            if is_sharded(p):
                all_reduce_sum_(own.reshape(1), p)
            coef = self.clip_grad_norm / (float(own.sqrt()) + 1e-6)  # clip_grad_norm_'s
            if coef < 1.0:
                shard.mul_(coef)
        if self._clip_coef != 1.0:
            shard.mul_(self._clip_coef)
        self._update(index, p, grad)
        p.grad = None

    def _update(self, index: int, p: Tensor, grad: Tensor) -> None:
        group = self.param_groups[self._group_index[index]]
        if self._galore:
            self.inner._update_param(p, grad, group)
            return
        opt = self._per_param.get(index)
        hyper = {k: v for k, v in group.items() if k not in ("params", "param_names")}
        if opt is None:
            opt = self.optimizer_cls([{"params": [p], **hyper}], **self.optimizer_kwargs)
            self._per_param[index] = opt
        else:
            opt.param_groups[0].update(hyper)
        opt.step()

    # ---- the step ----------------------------------------------------------------------------
    def _begin_step(self) -> None:
        self._sq_norm = None
        if self.max_grad_norm is not None and self.global_clip == "previous":
            norm = self._prev_grad_norm
            self._clip_coef = 1.0 if norm is None else min(1.0, self.max_grad_norm / (norm + 1e-6))
        else:
            self._clip_coef = 1.0

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Ends the optimizer step: parameters were updated during backward; this updates the
        ones whose gradient missed a micro-batch, records ``grad_norm`` and checks the pass count.

        With ``max_grad_norm`` and ``global_clip="exact"``, pass ``closure`` (running the
        forward/backward of every micro-batch and returning the loss); it is run twice.
        """
        exact = self.max_grad_norm is not None and self.global_clip == "exact"
        if exact and closure is None:
            raise ValueError(
                "global_clip='exact' needs step(closure): the closure runs the forward/backward of "
                "all micro-batches and is run twice (measure, then update)"
            )
        loss = None
        if closure is not None:
            if exact:
                loss = self._exact_clip_step(closure)
            else:
                self._begin_step()
                with torch.enable_grad():
                    loss = closure()
        self._end_step()
        return loss

    def _exact_clip_step(self, closure: Callable[[], Any]) -> Any:
        rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        self._mode = "measure"
        self._sq_norm = None
        try:
            with torch.enable_grad():
                closure()
            self._flush()
        finally:
            self._mode = "update"
        norm = self._global_norm()
        self._reset_passes()  # the closure's passes run again, now updating
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        self._sq_norm = None
        self._clip_coef = min(1.0, self.max_grad_norm / (norm + 1e-6))
        with torch.enable_grad():
            return closure()

    def _flush(self) -> None:
        for index in list(self._pending):
            self._finish(index)

    def _end_step(self) -> None:
        self._flush()
        seen = self._passes
        self._reset_passes()
        if seen not in (0, self.accumulation_steps):
            raise RuntimeError(
                f"LayerwiseOptimizer(accumulation_steps={self.accumulation_steps}) saw {seen} "
                "backward pass(es) before step(): call backward exactly accumulation_steps times "
                "per optimizer step (the last one performs the update)"
            )
        self.grad_norm = self._global_norm()
        self._prev_grad_norm = self.grad_norm
        self.steps += 1
        self._begin_step()

    def _global_norm(self) -> float:
        """√(sum of the squared gradient norms seen this step), over every shard."""
        sq = self._sq_norm if self._sq_norm is not None else torch.zeros(())
        if self._sharded is not None:
            sq = all_reduce_sum_(sq.reshape(1).to(self._sharded.device), self._sharded)
        return math.sqrt(float(sq.sum()))

    # ---- checkpoints -------------------------------------------------------------------------
    #: the param-shaped state keys of torch's and bitsandbytes' optimizers (others, such as
    #: 8-bit quantization maps and block scales, have shapes of their own)
    _PARAM_SHAPED_KEYS = frozenset(
        {"exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "square_avg", "state1",
         "state2", "acc_delta", "sum", "exp_inf"}
    )  # fmt: skip

    def _check_per_param(self, per_param: dict[int, dict[str, Any]]) -> None:
        """Refuse per-parameter states (a non-galorekit ``optimizer_cls``) that do not fit these
        parameters, before anything is loaded."""
        for index, sd in per_param.items():
            if not 0 <= index < len(self._params):
                raise ValueError(
                    f"cannot load the optimizer state: it holds parameter index {index}, this "
                    f"optimizer has {len(self._params)} parameters; nothing was loaded"
                )
            p = self._params[index]
            for pstate in sd.get("state", {}).values():
                for key, value in pstate.items():
                    shaped = key in self._PARAM_SHAPED_KEYS and isinstance(value, Tensor)
                    if shaped and tuple(value.shape) != tuple(local(p).shape):
                        raise ValueError(
                            f"cannot load the optimizer state: {self._param_name(index)} (shape "
                            f"{tuple(p.shape)}) has state {key!r} of shape "
                            f"{tuple(value.shape)} — it was saved for another model; nothing "
                            "was loaded"
                        )

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        layerwise = {
            "steps": self.steps,
            "prev_grad_norm": self._prev_grad_norm,
            "accumulation_steps": self.accumulation_steps,
        }
        if self._galore:
            return {"inner": self.inner.state_dict(), "layerwise": layerwise}
        per_param = {index: opt.state_dict() for index, opt in self._per_param.items()}
        return {
            "inner": self.inner.state_dict(),
            "per_param": per_param,
            "layerwise": layerwise,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        if not isinstance(state_dict, dict) or "inner" not in state_dict:
            raise ValueError(
                "not a LayerwiseOptimizer state dict (expected keys 'inner' and 'layerwise'); "
                "an ordinary optimizer's state dict cannot be loaded here"
            )
        meta = state_dict["layerwise"]
        saved_accumulation = meta.get("accumulation_steps", self.accumulation_steps)
        if saved_accumulation != self.accumulation_steps:
            raise ValueError(
                f"cannot load the optimizer state: it was saved with accumulation_steps="
                f"{saved_accumulation}, this LayerwiseOptimizer has {self.accumulation_steps} "
                "(the pass counting of a step in progress would not match); nothing was loaded"
            )
        per_param = {int(i): sd for i, sd in state_dict.get("per_param", {}).items()}
        self._check_per_param(per_param)
        self.inner.load_state_dict(state_dict["inner"])
        for index, sd in per_param.items():
            p = self._params[index]
            group = self.param_groups[self._group_index[index]]
            hyper = {k: v for k, v in group.items() if k not in ("params", "param_names")}
            opt = self.optimizer_cls([{"params": [p], **hyper}], **self.optimizer_kwargs)
            opt.load_state_dict(sd)
            self._per_param[index] = opt
        self.steps = int(meta["steps"])
        self._prev_grad_norm = meta["prev_grad_norm"]
        self.grad_norm = self._prev_grad_norm
        self._begin_step()
