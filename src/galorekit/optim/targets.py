"""Which modules a ``target_modules`` spec selects: the one implementation of the matching rules,
shared by GaLore's parameter groups (here in ``optim``) and the adapter baselines
(``galorekit.models.targets`` builds on it). Torch only: transformers' ``Conv1D`` is recognised
without importing transformers (a model can hold one only if transformers is already loaded).

The rules are peft's (``LoraConfig.target_modules``), so one spec means the same thing in
galorekit, peft and Hugging Face's ``optim_target_modules``:

- a **list** of names selects a module whose qualified name *is* one of them or *ends with*
  ``"." + name`` (``["q_proj", "v_proj"]``, ``["attn.c_attn"]``, or full names);
- a **string** is a regular expression that must match the *whole* qualified name
  (``r".*\\.layers\\.1\\..*_proj"``), except
- ``"all-linear"``: every ``nn.Linear`` and GPT-2 ``Conv1D`` but the output head (and, for a
  classifier without output embeddings, its ``classifier``/``score`` head), as peft does;
- ``None``: the default, the linear layers inside the transformer blocks (see
  :func:`default_targets`).

``rules="transformers"`` reads a spec as Hugging Face's Trainer reads ``optim_target_modules``
(``transformers.trainer_utils.check_target_module_exists``): a list entry also matches as a
*substring* of the name or as a regex matching the whole name (``["attn", "mlp"]``,
``[r".*attn.*"]``), and only linear layers count (modules of other kinds that match are skipped,
as the Trainer skips them).

Module kinds that can be targeted: ``nn.Linear`` and ``Conv1D`` (``"linear"``, weight matrices;
``Conv1D`` stores its weight in×out), ``nn.Conv1d/2d/3d`` (``"conv"``, kernels GaLore projects as
their out × in·k unfolding) and ``nn.Embedding`` (``"embedding"``, only when a spec names it: the
default and ``"all-linear"`` never select one). Named modules of other kinds are an error.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Sequence

from torch import nn

#: what selects target modules: None (the default), "all-linear", a full-match regex, or names
TargetSpec = str | Sequence[str] | None
ALL_LINEAR = "all-linear"
#: the kinds of module a spec may select, and what each is
KINDS = {
    "linear": "nn.Linear or transformers' Conv1D",
    "conv": "nn.Conv1d/2d/3d",
    "embedding": "nn.Embedding",
}
# peft's names for a sequence classifier's head (its SEQ_CLS_HEAD_NAMES)
_CLASSIFIER_HEADS = ("score", "classifier")


def _hf_conv1d() -> type | None:
    """transformers' ``Conv1D`` if transformers is loaded (else no module can be one)."""
    utils = sys.modules.get("transformers.pytorch_utils")
    return getattr(utils, "Conv1D", None)


def is_conv1d(module: nn.Module) -> bool:
    """Whether ``module`` is GPT-2's ``Conv1D`` (a linear layer whose weight is stored in×out)."""
    conv1d = _hf_conv1d()
    return conv1d is not None and isinstance(module, conv1d)


def module_kind(module: nn.Module) -> str | None:
    """``"linear"``, ``"conv"``, ``"embedding"`` (see :data:`KINDS`) or None (not targetable)."""
    if isinstance(module, nn.Linear) or is_conv1d(module):
        return "linear"
    if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        return "conv"
    if isinstance(module, nn.Embedding):
        return "embedding"
    return None


def output_head(model: nn.Module) -> nn.Module | None:
    """The model's output projection (``get_output_embeddings()``, e.g. ``lm_head``), or None."""
    get_out = getattr(model, "get_output_embeddings", None)
    if not callable(get_out):
        return None
    try:
        return get_out()
    except (NotImplementedError, AttributeError):
        return None


def heads(model: nn.Module) -> set[int]:
    """ids of the modules ``"all-linear"`` leaves out, as peft does: the output head, or for a
    model without one its ``score``/``classifier`` head (the modules inside it included)."""
    head = output_head(model)
    if head is None:
        head = next(
            (
                getattr(model, n)
                for n in _CLASSIFIER_HEADS
                if isinstance(getattr(model, n, None), nn.Module)
            ),
            None,
        )
    return set() if head is None else {id(m) for m in head.modules()}


def default_targets(model: nn.Module) -> list[str]:
    """Qualified names of the linear layers inside the transformer blocks, in module order.

    For LLaMA every layer's ``q/k/v/o_proj`` and ``gate/up/down_proj`` — the matrices the paper
    trains with GaLore; GPT-2's ``c_attn/c_proj/c_fc`` (``Conv1D``), BERT's and ViT's
    ``query/key/value`` and attention/intermediate/output ``dense``. Only layers inside
    ``model.base_model`` (the backbone) count, not a BERT-style pooler there (a dense layer on
    [CLS], part of the classification head), and the output head never does: embeddings, norms,
    heads and convolutions next to linear layers (ViT's patch embedding) stay out. A backbone
    without linear layers (a CNN) has its convolutions as the default. A model without
    ``base_model`` (not a transformers model) has every linear layer but its output head.
    """
    backbone = getattr(model, "base_model", model)
    inside = {id(m) for m in backbone.modules()}
    pooler = getattr(backbone, "pooler", None)
    if isinstance(pooler, nn.Module):
        inside -= {id(m) for m in pooler.modules()}
    head = output_head(model)
    kinds = {
        name: module_kind(module)
        for name, module in model.named_modules()
        if id(module) in inside and module is not head
    }
    kind = "linear" if "linear" in kinds.values() else "conv"
    return [name for name, k in kinds.items() if k == kind]


#: the matching rules :func:`select_modules` accepts
RULES = ("peft", "transformers")


def name_matches(name: str, spec: str | Sequence[str], rules: str = "peft") -> bool:
    """peft's rule: ``spec`` a string is a full-match regex; a list matches a name equal to an
    entry or ending with ``"." + entry``. ``rules="transformers"``: a list entry also matches as a
    substring or a full-match regex (the Trainer's ``optim_target_modules``). (``"all-linear"``
    is decided by module kind, not here.)"""
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    if rules == "transformers":
        return any(t in name or re.fullmatch(t, name) is not None for t in spec)
    return any(name == t or name.endswith("." + t) for t in spec)


def _check_spec(target_modules: str | Sequence[str], what: str) -> str | list[str]:
    if isinstance(target_modules, str):
        if target_modules.lower().replace("_", "-") == ALL_LINEAR:  # transformers: all_linear
            return ALL_LINEAR
        try:
            re.compile(target_modules)
        except re.error as err:
            raise ValueError(
                f"{what} {target_modules!r} is not a valid regular expression ({err}); pass "
                f"{ALL_LINEAR!r}, a regular expression matching whole module names, or a list "
                "of module names"
            ) from None
        return target_modules
    targets = list(target_modules)
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(f"{what} must be a non-empty list of non-empty strings, got {targets!r}")
    return targets


def _suffixes(names: Sequence[str]) -> list[str]:
    """What a near miss can suggest for each name: its leaf, its last two parts and the whole
    name (``a.b.c.d`` → ``d``, ``c.d``, ``a.b.c.d``), never a suffix starting at a block number."""
    out = set(names)
    for name in names:
        parts = name.split(".")
        for k in (1, 2):
            if len(parts) > k and not parts[-k].isdigit():
                out.add(".".join(parts[-k:]))
    return sorted(out)


def near_misses(wanted: str, names: Sequence[str], n: int = 5) -> list[str]:
    """Module names (or their short suffixes) close to ``wanted`` (difflib), best first."""
    pool = names if len(names) <= 2000 else names[:2000]
    return difflib.get_close_matches(wanted, _suffixes(pool), n=n, cutoff=0.5)


def _kinds(rules: str) -> tuple[str, ...]:
    """The module kinds a rule set can target: the Trainer's rules take linear layers only."""
    return ("linear",) if rules == "transformers" else tuple(KINDS)


def _no_match(
    spec_text: str, wanted: Sequence[str], model: nn.Module, what: str, rules: str = "peft"
) -> ValueError:
    kinds = _kinds(rules)
    targetable = [name for name, m in model.named_modules() if module_kind(m) in kinds]
    containers = [
        (name, m)
        for name, m in model.named_modules()
        if name and module_kind(m) is None and any(name_matches(name, [w]) for w in wanted)
    ]
    other = [f"{name} ({type(m).__name__})" for name, m in containers]
    inside = [
        n.rsplit(".", 1)[-1]
        for _, m in containers[:1]
        for n, child in m.named_modules()
        if n and module_kind(child) in kinds
    ]
    close = list(dict.fromkeys(c for w in wanted for c in near_misses(w, targetable)))
    leaves = sorted({n.rsplit(".", 1)[-1] for n in targetable})
    parts = [f"{what} {spec_text} matches no {' / '.join(KINDS[k] for k in kinds)} module"]
    if other:
        parts.append(
            f"it names {', '.join(other[:2])}{' …' if len(other) > 2 else ''}, which cannot "
            f"be targeted: name the layers inside"
            f"{' (' + ', '.join(dict.fromkeys(inside)) + ')' if inside else ''} or use a regex"
        )
    if close:
        parts.append(f"did you mean {', '.join(close)}?")
    how = (
        "a list entry matches a name, a part of it or, as a regex, the whole name"
        if rules == "transformers"
        else "a list entry matches a whole name or a suffix after a dot"
    )
    parts.append(
        f"targetable module names end in: {', '.join(leaves) if leaves else '(none)'} "
        f"({how}; a string is a regex that must match the whole name)"
    )
    return ValueError("; ".join(parts))


def select_modules(
    model: nn.Module,
    target_modules: TargetSpec = None,
    *,
    exclude_modules: str | Sequence[str] | None = None,
    what: str = "target_modules",
    rules: str = "peft",
) -> list[str]:
    """Qualified names of the modules ``target_modules`` selects, in module order (see the
    module docstring for the rules; ``rules``: ``"peft"`` or ``"transformers"``).
    ``exclude_modules`` (same rules) drops modules again, as peft's ``exclude_modules`` does.

    Raises ``ValueError`` for a malformed spec, a named module of a kind that cannot be targeted,
    or a spec (or one list entry) matching nothing, listing near misses and the names that exist.
    """
    if rules not in RULES:
        raise ValueError(f"unknown target rules {rules!r}; valid: {', '.join(RULES)}")
    if target_modules is None:
        selected = default_targets(model)
        if not selected:
            raise _no_match("(the default: linear layers in the blocks)", [], model, what)
    else:
        spec = _check_spec(target_modules, what)
        if spec == ALL_LINEAR:
            skip = heads(model)
            selected = [
                n
                for n, m in model.named_modules()
                if module_kind(m) == "linear" and id(m) not in skip
            ]
            if not selected:
                raise _no_match(repr(target_modules), [], model, what)
        else:
            selected = _select_named(model, spec, what, rules)
    if exclude_modules is not None:
        drop = _check_spec(exclude_modules, "exclude_modules")
        selected = [n for n in selected if not name_matches(n, drop, rules)]
        if not selected:
            raise ValueError(f"exclude_modules {exclude_modules!r} excludes every target module")
    return selected


def _select_named(model: nn.Module, spec: str | list[str], what: str, rules: str) -> list[str]:
    # a name that also matches containers (BERT's ``output``) selects only the targetable ones
    kinds = _kinds(rules)
    selected = [
        n
        for n, m in model.named_modules()
        if n and module_kind(m) in kinds and name_matches(n, spec, rules)
    ]
    if isinstance(spec, str):
        if not selected:
            raise _no_match(repr(spec), [spec], model, what, rules)
    else:
        missing = [t for t in spec if not any(name_matches(n, [t], rules) for n in selected)]
        if missing:
            raise _no_match(repr(missing), missing, model, what, rules)
    return selected
