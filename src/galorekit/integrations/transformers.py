"""Run a transformers ``Trainer`` script's ``optim="galore_*"`` on galorekit's optimizers.

One added line after the transformers import; the ``TrainingArguments`` stay as they are::

    from transformers import Trainer, TrainingArguments
    from galorekit.integrations.transformers import GaLoreTrainer as Trainer

    args = TrainingArguments(..., optim="galore_adamw_layerwise", optim_target_modules=["attn", "mlp"],
                             optim_args="rank=64, update_proj_gap=100, scale=0.25, proj_type=std")

For another Trainer class (TRL's ``SFTTrainer``, a subclass of one's own):
``MyTrainer = with_galore(MyTrainer)``. Any other loop: ``galore_optimizer(args, model)``.

Against transformers' own GaLore path (which imports galore-torch) this gives galorekit's
optimizers (warm-started refreshes, moments carried into the new basis, NaN-safe SVD,
``weights_only``-loadable state), and layer-wise mode that works with gradient accumulation and
DDP, logs the real ``grad_norm``, clips with ``max_grad_norm`` (using the previous step's global
norm: the current one is known only after every parameter was updated) and resumes bit-identically.

Only public ``Trainer`` methods are overridden (``create_optimizer``, ``training_step``, ``log``)
and one callback is added; ``SUPPORTED_TRANSFORMERS`` is the range tested
(tests/test_integration_transformers.py checks each behaviour relied on).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from galorekit.extras import needs_extra
from galorekit.integrations.deepspeed import check_deepspeed
from galorekit.integrations.optim_args import parse_optim_args
from galorekit.models.targets import TargetSpec, resolve_target_modules
from galorekit.optim.factory import optimizer_class
from galorekit.optim.layerwise import LayerwiseOptimizer
from galorekit.optim.param_groups import param_groups

#: transformers versions this integration is tested with (major 5; 5.25 in CI)
SUPPORTED_TRANSFORMERS = ("5.0", "6.0")
#: transformers' ``optim`` names → galorekit's optimizer names
GALORE_OPTIMS = {
    "galore_adamw": "galore_adamw",
    "galore_adamw_8bit": "galore_adamw8bit",
    "galore_adafactor": "galore_adafactor",
}
LAYERWISE_SUFFIX = "_layerwise"


def _optim_value(args: Any) -> str:
    optim = getattr(args, "optim", "")
    return str(getattr(optim, "value", optim))


def galore_optim(args: Any) -> tuple[str, bool] | None:
    """``(galorekit optimizer name, layer-wise)`` for ``args.optim``, or None when it is not GaLore."""
    value = _optim_value(args)
    layerwise = value.endswith(LAYERWISE_SUFFIX)
    base = value.removesuffix(LAYERWISE_SUFFIX)
    return (GALORE_OPTIMS[base], layerwise) if base in GALORE_OPTIMS else None


def _target_spec(spec: Any) -> TargetSpec:
    if isinstance(spec, str) and spec.replace("_", "-") == "all-linear":
        return "all-linear"  # transformers also takes "all_linear"
    if spec is None or isinstance(spec, str):
        return spec
    if isinstance(spec, Iterable):
        return list(spec)
    raise TypeError(
        f"optim_target_modules must be a list of strings, a regular expression or 'all-linear', "
        f"got {spec!r}"
    )


def _deepspeed_config(args: Any) -> Mapping[str, Any] | None:
    if not getattr(args, "deepspeed", None):
        return None
    hf_config = getattr(args, "hf_deepspeed_config", None)
    config = getattr(hf_config, "config", None)
    if isinstance(config, Mapping):
        return config
    if isinstance(args.deepspeed, Mapping):
        return args.deepspeed
    import json

    with open(args.deepspeed, encoding="utf-8") as f:
        return json.load(f)


def _split_decay(
    group: dict[str, Any], decay_names: set[str], weight_decay: float
) -> list[dict[str, Any]]:
    """The plain group as transformers builds it: weight decay on its decay parameters only."""
    parts: list[dict[str, Any]] = []
    for decay in (True, False):
        picked = [
            (n, p)
            for n, p in zip(group["param_names"], group["params"])
            if (n in decay_names) == decay
        ]
        if picked:
            parts.append(
                {
                    "params": [p for _, p in picked],
                    "param_names": [n for n, _ in picked],
                    "weight_decay": weight_decay if decay else 0.0,
                }
            )
    return parts


def galore_optimizer(
    args: Any, model: nn.Module, *, decay_parameter_names: Iterable[str] | None = None
) -> torch.optim.Optimizer:
    """galorekit's optimizer for a ``TrainingArguments`` with ``optim="galore_*"``.

    Reads ``optim`` (``galore_adamw``, ``galore_adamw_8bit``, ``galore_adafactor``, each also with
    ``_layerwise``), ``optim_target_modules`` (resolved by ``galorekit.models.
    resolve_target_modules``; None: the attention and MLP projections), ``optim_args`` (see
    ``galorekit.integrations.optim_args.OPTIM_ARG_KEYS``), ``learning_rate``, ``weight_decay``
    (on ``decay_parameter_names`` only, when given, as the Trainer does), ``adam_beta1/2``,
    ``adam_epsilon``, and for layer-wise mode ``gradient_accumulation_steps`` and
    ``max_grad_norm``. Raises ``ValueError`` for an unknown ``optim_args`` key, a target that
    matches nothing, or a DeepSpeed configuration GaLore cannot run under.
    """
    found = galore_optim(args)
    if found is None:
        raise ValueError(
            f"optim={_optim_value(args)!r} is not a GaLore optimizer; valid: "
            + ", ".join(f"{n}, {n}{LAYERWISE_SUFFIX}" for n in GALORE_OPTIMS)
        )
    name, layerwise = found
    options = parse_optim_args(getattr(args, "optim_args", None))
    ds_config = _deepspeed_config(args)
    if ds_config is not None:
        check_deepspeed(ds_config, layerwise=layerwise)
    # optim_target_modules read as the HF Trainer reads it (substrings too); the names the
    # resolver selects are then matched exactly (a list entry must not match its siblings
    # by substring: layers.1 would select layers.11)
    names = resolve_target_modules(
        model, _target_spec(getattr(args, "optim_target_modules", None)), rules="transformers"
    )
    exact = "^(?:" + "|".join(re.escape(n) for n in names) + ")$"
    galore_keys = ("rank", "update_proj_gap", "scale", "proj_type", "svd", "moments", "stagger")
    plain, galore = param_groups(
        model, target_modules=exact, **{k: options[k] for k in galore_keys if k in options}
    )
    weight_decay = float(getattr(args, "weight_decay", 0.0))
    if decay_parameter_names is not None:
        groups = [*_split_decay(plain, set(decay_parameter_names), weight_decay), galore]
    else:
        groups = [plain, galore] if plain["params"] else [galore]
    kwargs: dict[str, Any] = {"lr": args.learning_rate, "weight_decay": weight_decay}
    if "state_dtype" in options:
        kwargs["state_dtype"] = options["state_dtype"]
    if name == "galore_adafactor":
        kwargs.update(relative_step=False, scale_parameter=False)  # transformers' settings
    else:
        kwargs.update(betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
    cls = optimizer_class(name)
    if not layerwise:
        return cls(groups, **kwargs)
    max_norm = getattr(args, "max_grad_norm", None)
    return LayerwiseOptimizer(
        groups,
        cls,
        accumulation_steps=int(args.gradient_accumulation_steps),
        max_grad_norm=max_norm if max_norm and max_norm > 0 else None,
        **kwargs,
    )


def check_transformers_version(version: str) -> None:
    """``RuntimeError`` unless ``version`` is in ``SUPPORTED_TRANSFORMERS`` [low, high)."""
    from packaging.version import Version

    low, high = SUPPORTED_TRANSFORMERS
    if not Version(low) <= Version(version) < Version(high):
        raise RuntimeError(
            f"galorekit's Trainer integration supports transformers >={low},<{high}; "
            f"transformers {version} is installed"
        )


def _layerwise_of(optimizer: Any) -> LayerwiseOptimizer | None:
    """The LayerwiseOptimizer inside accelerate's wrapper, if that is what trains."""
    while optimizer is not None and not isinstance(optimizer, LayerwiseOptimizer):
        optimizer = getattr(optimizer, "optimizer", None)
    return optimizer


class GaLoreTrainerMixin:
    """The Trainer methods that put galorekit's GaLore behind ``optim="galore_*"``; mix it in
    before a ``transformers.Trainer`` subclass (``with_galore`` does)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        with needs_extra("train"):
            import transformers
            from transformers import TrainerCallback

        check_transformers_version(transformers.__version__)
        super().__init__(*args, **kwargs)
        mixin = self

        class _RestoreAccumulation(TrainerCallback):
            def on_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                layerwise = _layerwise_of(mixin.optimizer)
                if layerwise is not None:
                    layerwise.accumulation_steps = int(args.gradient_accumulation_steps)

        self.add_callback(_RestoreAccumulation())

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None and galore_optim(self.args) is not None:
            opt_model = self.model if model is None else model
            self.optimizer = galore_optimizer(
                self.args,
                opt_model,
                decay_parameter_names=self.get_decay_parameter_names(opt_model),
            )
            return self.optimizer
        return super().create_optimizer(model) if model is not None else super().create_optimizer()

    def training_step(self, model: nn.Module, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        layerwise = _layerwise_of(self.optimizer)
        if layerwise is None:
            return super().training_step(model, inputs, *args, **kwargs)
        # the last step of an epoch may have fewer micro-batches: the layer-wise hooks must
        # update on its last backward (the callback restores the configured count)
        layerwise.accumulation_steps = int(
            getattr(
                self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps
            )
        )
        # the hooks average each final gradient over the ranks themselves, before updating;
        # DDP's reduction would come after them (and again), so it is switched off
        sync_off = (
            model.no_sync()
            if isinstance(model, nn.parallel.DistributedDataParallel)
            else nullcontext()
        )
        with sync_off:
            return super().training_step(model, inputs, *args, **kwargs)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        layerwise = _layerwise_of(self.optimizer)
        if layerwise is not None and "grad_norm" in logs and layerwise.grad_norm is not None:
            # the gradients were freed inside backward: the Trainer measured none (0)
            logs["grad_norm"] = layerwise.grad_norm
        super().log(logs, *args, **kwargs)


def with_galore(trainer_cls: type) -> type:
    """``trainer_cls`` (``transformers.Trainer`` or a subclass) with ``GaLoreTrainerMixin``."""
    return type(f"GaLore{trainer_cls.__name__}", (GaLoreTrainerMixin, trainer_cls), {})


def lazy_trainer(
    namespace: dict[str, Any], name: str, load: Callable[[], type]
) -> Callable[[str], Any]:
    """A module ``__getattr__`` that builds ``name`` = ``with_galore(load())`` on first use (the
    trainer's library is imported then, not with the module)."""

    def __getattr__(attr: str) -> Any:
        if attr != name:
            raise AttributeError(f"module {namespace['__name__']!r} has no attribute {attr!r}")
        namespace[attr] = cls = with_galore(load())
        return cls

    return __getattr__


def _trainer() -> type:
    with needs_extra("train"):
        from transformers import Trainer
    return Trainer


__getattr__ = lazy_trainer(globals(), "GaLoreTrainer", _trainer)
