"""An opt-in drop-in for code that imports ``galore_torch`` (LLaMA-Factory, axolotl, ms-swift,
transformers' ``optim="galore_*"``, user scripts): after ``install()``,
``from galore_torch import GaLoreAdamW, GaLoreAdamW8bit, GaLoreAdafactor`` returns galorekit's
optimizers with galore-torch 1.0's constructor signatures (same positional order and defaults,
``no_deprecation_warning``, ``correct_bias``, the 8-bit options) and its group keys (``rank``,
``update_proj_gap``, ``scale``, ``proj_type``)::

    import galorekit.integrations.galore_torch_compat as galore_torch_compat
    galore_torch_compat.install()          # before the code that imports galore_torch runs

or, for a program one does not edit (a console script or a module)::

    python -m galorekit.integrations.galore_torch_compat $(which llamafactory-cli) train cfg.yaml
    python -m galorekit.integrations.galore_torch_compat -m my_package.train --lr 1e-2

Nothing changes for a process that does not opt in: the installed galore-torch is untouched.
``uninstall()`` puts back what ``galore_torch`` was before.

What differs from galore-torch, on purpose: galorekit's numerics (warm-started refreshes, moments
carried into the new basis, NaN-safe SVD), unknown group keys are refused (galore-torch ignores a
typo such as ``ranks``), ``no_deprecation_warning`` only silences nothing (galorekit's AdamW is not
deprecated), and the 8-bit options galorekit cannot honour (``amsgrad=True`` — which galore-torch
silently ignores —, ``percentile_clipping``, ``block_wise=False``, ``is_paged=True``, a bitsandbytes
``args`` object) are refused instead of ignored.
"""

from __future__ import annotations

import importlib.machinery
import runpy
import sys
import types
from collections.abc import Iterable, Sequence
from typing import Any

from galorekit.optim.galore_adafactor import GaLoreAdafactor as _Adafactor
from galorekit.optim.galore_adamw import GaLoreAdamW as _AdamW

MODULE = "galore_torch"
#: the attribute that marks the drop-in module
MARKER = "__galorekit_drop_in__"


class GaLoreAdamW(_AdamW):
    """galorekit's GaLoreAdamW with galore-torch 1.0's ``AdamW`` signature."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        correct_bias: bool = True,
        no_deprecation_warning: bool = False,
    ) -> None:
        # galore-torch warns that its (transformers-derived) AdamW is deprecated; this one is not
        del no_deprecation_warning
        super().__init__(params, lr, betas, eps, weight_decay, correct_bias)


def _refuse(option: str, value: Any, why: str) -> None:
    raise ValueError(f"galore_torch.GaLoreAdamW8bit (galorekit): {option}={value!r} {why}")


def _adamw8bit_class() -> type:
    from galorekit.optim.galore_adamw8bit import GaLoreAdamW8bit as _AdamW8bit

    class GaLoreAdamW8bit(_AdamW8bit):
        """galorekit's GaLoreAdamW8bit with galore-torch 1.0's ``AdamW8bit`` signature."""

        def __init__(
            self,
            params: Iterable[Any],
            lr: float = 1e-3,
            betas: tuple[float, float] = (0.9, 0.999),
            eps: float = 1e-8,
            weight_decay: float = 1e-2,
            amsgrad: bool = False,
            optim_bits: int = 32,
            args: Any = None,
            min_8bit_size: int = 4096,
            percentile_clipping: int = 100,
            block_wise: bool = True,
            is_paged: bool = False,
        ) -> None:
            # optim_bits: galore-torch always keeps 8-bit states whatever it says; so does this
            del optim_bits
            if amsgrad:
                _refuse("amsgrad", amsgrad, "is not supported (galore-torch silently ignored it)")
            if args is not None:
                _refuse("args", args, "(a bitsandbytes override object) is not supported")
            if percentile_clipping != 100:
                _refuse(
                    "percentile_clipping",
                    percentile_clipping,
                    "is not supported; clip with max_grad_norm in the training loop",
                )
            if not block_wise:
                _refuse("block_wise", block_wise, "is not supported: the states are block-wise")
            if is_paged:
                _refuse("is_paged", is_paged, "is not supported: the states are not paged")
            super().__init__(params, lr, betas, eps, weight_decay, min_8bit_size=min_8bit_size)

    return GaLoreAdamW8bit


class GaLoreAdafactor(_Adafactor):
    """galorekit's GaLoreAdafactor with galore-torch 1.0's ``Adafactor`` signature (as there,
    ``relative_step`` defaults to True, so a manual ``lr`` needs ``relative_step=False``)."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | None = None,
        eps: tuple[float, float] = (1e-30, 1e-3),
        clip_threshold: float = 1.0,
        decay_rate: float = -0.8,
        beta1: float | None = None,
        weight_decay: float = 0.0,
        scale_parameter: bool = True,
        relative_step: bool = True,
        warmup_init: bool = False,
    ) -> None:
        super().__init__(
            params,
            lr,
            eps,
            clip_threshold,
            decay_rate,
            beta1,
            weight_decay,
            scale_parameter,
            relative_step,
            warmup_init,
        )


def _module() -> types.ModuleType:
    module = types.ModuleType(MODULE, "galorekit's optimizers under galore-torch's name")
    # a spec, so that importlib.util.find_spec (transformers' is_galore_torch_available) finds it
    module.__spec__ = importlib.machinery.ModuleSpec(MODULE, None)
    setattr(module, MARKER, True)
    module.GaLoreAdamW = GaLoreAdamW
    module.GaLoreAdafactor = GaLoreAdafactor

    def __getattr__(name: str) -> Any:
        # bitsandbytes is imported when the 8-bit optimizer is asked for
        if name == "GaLoreAdamW8bit":
            cls = _adamw8bit_class()
            module.GaLoreAdamW8bit = cls
            return cls
        raise AttributeError(f"module {MODULE!r} (galorekit's drop-in) has no attribute {name!r}")

    module.__getattr__ = __getattr__
    return module


_previous: list[types.ModuleType | None] = []


def installed() -> bool:
    """Whether ``galore_torch`` is galorekit's drop-in in this process."""
    return getattr(sys.modules.get(MODULE), MARKER, False)


def install() -> None:
    """Make ``import galore_torch`` return galorekit's drop-in in this process (idempotent).
    Code that already did ``from galore_torch import X`` keeps its X: install first."""
    if installed():
        return
    _previous.append(sys.modules.get(MODULE))
    sys.modules[MODULE] = _module()


def uninstall() -> None:
    """Undo ``install()``: ``galore_torch`` is again what it was before (or imports afresh)."""
    if not installed():
        return
    previous = _previous.pop() if _previous else None
    if previous is None:
        del sys.modules[MODULE]
    else:
        sys.modules[MODULE] = previous


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m galorekit.integrations.galore_torch_compat SCRIPT|-m MODULE [ARGS...]``: run a
    program with the drop-in installed."""
    args = list(sys.argv[1:] if argv is None else argv)
    usage = (
        "usage: python -m galorekit.integrations.galore_torch_compat SCRIPT [ARGS...] "
        "| -m MODULE [ARGS...]"
    )
    if not args or args[0] in ("-h", "--help") or (args[0] == "-m" and len(args) < 2):
        print(usage, file=sys.stderr if not args or args[0] == "-m" else sys.stdout)
        raise SystemExit(0 if args and args[0] in ("-h", "--help") else 2)
    install()
    if args[0] == "-m":
        sys.argv = [args[1], *args[2:]]
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = args
        runpy.run_path(args[0], run_name="__main__")


if __name__ == "__main__":
    # run the importable copy of this module, so that the classes are named after it (not __main__)
    from galorekit.integrations.galore_torch_compat import main as _main

    _main()
