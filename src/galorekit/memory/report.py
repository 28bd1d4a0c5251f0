"""Plain-text tables of estimates, comparisons, measurements and fit results."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from galorekit.memory.estimator import COMPONENT_NAMES, COMPONENTS, MemoryEstimate
from galorekit.memory.fit import FitRow
from galorekit.memory.measure import Measurement
from galorekit.names import is_galore
from galorekit.units import format_bytes


def table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    """A fixed-width text table; ``align`` has one ``l``/``r`` per column (default: first left,
    the rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            str(c).ljust(w) if a == "l" else str(c).rjust(w)
            for c, w, a in zip(cells, widths, align)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def describe_setup(model: str, est: MemoryEstimate) -> str:
    s = est.setup
    parts = [f"model {model}", f"method {s.label()}", f"precision {s.precision}"]
    if s.state_dtype is not None:
        parts.append(f"{s.state_dtype} optimizer states")
    parts.append(f"batch {s.batch_size} × {s.seq_len} tokens")
    if s.accumulation_steps > 1:
        parts.append(f"accumulation {s.accumulation_steps}")
    if s.activation_checkpointing:
        parts.append("activation checkpointing")
    if s.attn_implementation != "sdpa":
        parts.append(f"{s.attn_implementation} attention")
    if is_galore(s.method) and s.proj_type != "std":
        parts.append(f"proj_type {s.proj_type}")
    params = (
        f"{est.parameters / 1e6:,.1f}M parameters, {est.trainable_parameters / 1e6:,.1f}M trained"
    )
    return ", ".join(parts) + f"\n{params}"


def breakdown_table(model: str, est: MemoryEstimate, unit: str = "GB") -> str:
    """The estimate of one configuration, component by component."""
    rows = []
    for key in COMPONENTS:
        rows.append([COMPONENT_NAMES[key], format_bytes(getattr(est, key), unit), _share(est, key)])
        if key == "optimizer_states" and est.projectors:
            rows.append(["  of which projectors", format_bytes(est.projectors, unit), ""])
    rows.append(["Total", format_bytes(est.total, unit), "100.0%"])
    return describe_setup(model, est) + "\n\n" + table(["component", "memory", "share"], rows)


def _share(est: MemoryEstimate, key: str) -> str:
    return f"{100 * getattr(est, key) / est.total:.1f}%" if est.total else "-"


def compare_table(estimates: Sequence[MemoryEstimate], unit: str = "GB") -> str:
    """Every configuration side by side, one row each."""
    header = ["method", "weights", "gradients", "opt. states", "activations", "total"]
    rows = [
        [
            e.setup.label(),
            *(format_bytes(getattr(e, k), unit) for k in COMPONENTS),
            format_bytes(e.total, unit),
        ]
        for e in estimates
    ]
    return table(header, rows)


def measure_table(est: MemoryEstimate, meas: Measurement, unit: str = "GB") -> str:
    """Estimate beside measurement, with the difference (measured − estimated)."""
    rows = []
    for key in COMPONENTS:
        e, m = getattr(est, key), getattr(meas, key)
        rows.append(
            [COMPONENT_NAMES[key], format_bytes(e, unit), format_bytes(m, unit), _diff(m, e, unit)]
        )
    rows.append(
        [
            "Total / measured peak",
            format_bytes(est.total, unit),
            format_bytes(meas.peak, unit),
            _diff(meas.peak, est.total, unit),
        ]
    )
    logits = ""
    acts = est.activation_detail
    vocab_terms = [t for t in acts.terms if t.name.startswith("log-softmax")] if acts else []
    if vocab_terms:
        # the log-softmax output is T×V float32: the loss's backward allocates two more like it
        logits = (
            f" (here the loss's backward alone allocates about "
            f"{format_bytes(2 * vocab_terms[0].nbytes, unit)}: two tokens × vocabulary float32 "
            "buffers)"
        )
    note = textwrap.fill(
        f"Measured over {meas.steps} training step(s) on {meas.device}. The peak is the "
        "allocator's; it differs from the summed estimate by transient buffers (logits and their "
        f"gradient{logits}, optimizer and SVD temporaries), and because gradients and activations "
        "do not peak at the same moment.",
        width=96,
    )
    return table(["component", "estimate", "measured", "difference"], rows) + "\n\n" + note


def _diff(measured: int, estimated: int, unit: str) -> str:
    delta = measured - estimated
    sign = "+" if delta >= 0 else "-"
    pct = f" ({100 * delta / estimated:+.1f}%)" if estimated else ""
    return f"{sign}{format_bytes(abs(delta), unit)}{pct}"


def fit_table(rows: Sequence[FitRow], budget: int, seq_len: int, unit: str = "GB") -> str:
    """The configurations that fit ``budget``, grouped by method; then those that never fit."""
    by_key: dict[tuple, dict[bool, FitRow]] = {}
    for r in rows:
        by_key.setdefault((r.method, r.layerwise, r.rank), {})[r.activation_checkpointing] = r
    fitting, failing = [], []
    for (_method, _lw, _rank), pair in by_key.items():
        plain, ckpt = pair.get(False), pair.get(True)
        ref = plain or ckpt
        if not any(r.fits for r in pair.values() if r is not None):
            failing.append(
                f"{ref.label()} (needs {format_bytes(min(r.total_at_max for r in pair.values()), unit)} at batch 1)"
            )
            continue
        fitting.append(
            [
                ref.label(),
                _batch_cell(plain, unit),
                _batch_cell(ckpt, unit),
                format_bytes(ref.static, unit),
            ]
        )
    header = [
        "method",
        "max batch (total)",
        "with act. ckpt (total)",
        "weights+grads+states",
    ]
    out = [f"budget {format_bytes(budget, unit)}; batch sizes in sequences of {seq_len} tokens\n"]
    out.append(table(header, fitting) if fitting else "nothing fits this budget")
    if failing:
        out.append("\ndo not fit even at batch size 1:\n  " + "\n  ".join(failing))
    return "\n".join(out)


def _batch_cell(row: FitRow | None, unit: str) -> str:
    if row is None:
        return "-"
    if not row.fits:
        return "does not fit"
    return f"{row.max_batch_size} ({format_bytes(row.total_at_max, unit)})"


def detail_tables(est: MemoryEstimate, unit: str = "GB") -> str:
    """Where the memory goes: one decoder layer's saved tensors, the head's, and the optimizer
    state by kind (shared tensors counted once)."""
    out = []
    acts = est.activation_detail
    if acts is not None:
        for scopes, title in (
            (("layer 0",), "activations saved by one decoder layer (layer 0)"),
            (("head", "shared"), "activations saved once per model"),
        ):
            terms = [t for t in acts.terms if t.scope in scopes]
            if terms:
                rows = [[t.name, format_bytes(t.nbytes, unit)] for t in terms]
                out.append(f"{title}:\n" + table(["tensor", "memory"], rows))
        if acts.checkpointed_inputs:
            out.append(
                "activation checkpointing keeps the layer inputs: "
                + format_bytes(acts.checkpointed_inputs, unit)
            )
    kinds: dict[str, list[int]] = {}
    seen: set[str] = set()
    for t in est.state_tensors:
        if t.shared is not None:
            if t.shared in seen:
                continue
            seen.add(t.shared)
        entry = kinds.setdefault(t.key, [0, 0])
        entry[0] += 1
        entry[1] += t.nbytes
    if kinds:
        rows = [[k, str(n), format_bytes(b, unit)] for k, (n, b) in kinds.items()]
        out.append("optimizer states by kind:\n" + table(["state", "tensors", "memory"], rows))
    return "\n\n".join(out)
