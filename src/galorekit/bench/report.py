"""``galore bench``'s reports: the markdown table of timings, state bytes and quality, the
real-gradient table and the profile of a refresh step. Reads the JSON-ready result only."""

from __future__ import annotations

from typing import Any

from galorekit.bench.config import PROFILE_CATEGORIES


def format_profile_table(profiles: dict[str, dict[str, float]]) -> str:
    """Seconds and shares of one refresh step by category (``profile_refresh_step``)."""
    categories = [*PROFILE_CATEGORIES, "other"]
    lines = [
        "| refresh step | total s | " + " | ".join(categories) + " |",
        "|---|---|" + "---|" * len(categories),
    ]
    for name, row in profiles.items():
        cells = [f"{row[c]:.3f} ({100 * row[c] / row['total']:.0f}%)" for c in categories]
        lines.append(f"| {name} | {row['total']:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---- reports -----------------------------------------------------------------------------------
def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "–" if x is None else format(x, spec)


def _shapes_of(cfg: dict[str, Any]) -> str:
    """``LLaMA-60m shapes (2 layers)``, or another family's ``cnn_digits shapes``."""
    if cfg["model"][0].isdigit():  # a LLaMA size: bench's short name
        return f"LLaMA-{cfg['model']} shapes ({cfg['layers']} layers)"
    return f"{cfg['model']} shapes"


def format_table(result: dict[str, Any]) -> str:
    """The main table (markdown): medians, then the paired ratios (see ``paired_ratios``)."""
    cfg = result["config"]
    ratios = result["ratios"]
    lines = [
        f"| {_shapes_of(cfg)}, rank {cfg['rank']}, T={cfg['T']} "
        "| steady s | refresh s | amortized s | state MiB | captured energy | ÷ exact (mean / min) "
        "| column alignment | steady ×galore-torch | amortized ×galore-torch | amortized ×AdamW "
        "| refresh speed-up vs galore-torch | refresh-overhead speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["results"]:
        r = ratios.get(row["optimizer"], {})
        q = row["quality"]
        cells = [
            row["optimizer"],
            _fmt(row["steady_s"]),
            _fmt(row["refresh_s"]),
            _fmt(row["amortized_s"]),
            f"{row['state_bytes'] / 2**20:.1f}",
            _fmt(q and q["captured"], ".4f"),
            "–" if not q else f"{q['vs_exact_mean']:.4f} / {q['vs_exact_min']:.4f}",
            _fmt(q and q.get("aligned"), ".2f"),
            _fmt(r.get("steady_vs_reference"), ".2f"),
            _fmt(r.get("amortized_vs_reference"), ".2f"),
            _fmt(r.get("amortized_vs_adamw"), ".2f"),
            _fmt(r.get("refresh_speedup_vs_reference"), ".1f"),
            _fmt(r.get("refresh_overhead_speedup_vs_reference"), ".1f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_real_table(real: dict[str, Any]) -> str:
    """Real-gradient quality per rank and method: captured / exact (mean / min), then the
    column alignment of the refreshed projector with the previous one (mean)."""
    ranks = list(real["by_rank"])
    methods = list(real["by_rank"][ranks[0]]["methods"])
    lines = [
        "| rank | exact captures | "
        + " | ".join(methods)
        + " | column alignment: "
        + " / ".join(m.removeprefix("galorekit (svd=").removesuffix(")") for m in methods)
        + " |",
        "|---|---|" + "---|" * (len(methods) + 1),
    ]
    for rank in ranks:
        entry = real["by_rank"][rank]
        cells = [
            f"{entry['methods'][m]['vs_exact_mean']:.4f} / {entry['methods'][m]['vs_exact_min']:.4f}"
            for m in methods
        ]
        aligned = " / ".join(_fmt(entry["methods"][m].get("aligned"), ".2f") for m in methods)
        lines.append(
            f"| {rank} | {entry['exact_captured']:.4f} | " + " | ".join(cells) + f" | {aligned} |"
        )
    return "\n".join(lines)


def format_markdown(result: dict[str, Any], command: str | None = None) -> str:
    cfg, machine = result["config"], result["machine"]
    parts = [f"# Optimizer step: {_shapes_of(cfg)}, rank {cfg['rank']}, T={cfg['T']}", ""]
    if command:
        parts += ["Command:", "", f"    {command}", ""]
    parts += [
        f"{result['shapes']['matrices']} matrices, {result['shapes']['weights'] / 1e6:.1f}M "
        f"weights; {machine['cpus']} CPUs, {machine['torch_threads']} torch threads, torch "
        f"{machine['torch']}; load average {machine['load_avg_before'][0]:.1f} before, "
        f"{machine['load_avg_after'][0]:.1f} after. Times are medians of {cfg['cycles']} refresh "
        f"steps and {cfg['cycles'] * cfg['steady_steps']} steady steps per optimizer; the "
        "optimizers step in turn (rotating order), and the ratios are paired: medians of the "
        "ratios between steps run back to back (amortized and refresh: per cycle), so that a "
        "shared machine's changing load cancels.",
        "",
        format_table(result),
        "",
    ]
    if result.get("exact_captured") is not None:
        parts += [
            f"Quality on the first {cfg['quality_layers']} layer(s)' synthetic gradients "
            f"(exact top-{cfg['rank']} SVD captures {result['exact_captured']:.4f} of ‖G‖²).",
            "",
        ]
    if "profile" in result:
        parts += [
            "## Where a refresh step's time goes (torch.profiler, one more refresh step each, "
            "CPU self time)",
            "",
            format_profile_table(result["profile"]),
            "",
        ]
    if "real_gradients" in result:
        real = result["real_gradients"]
        rc = real["config"]
        parts += [
            f"## Real gradients: LLaMA hidden {rc['hidden']}, {rc['layers']} layers, KJV bytes, "
            f"{rc['steps']} steps (batch {rc['batch']}×{rc['seq_len']}), gradients every "
            f"{rc['every']} steps; captured energy ÷ exact SVD's (mean / min over "
            f"{real['pairs']} matrices)",
            "",
            format_real_table(real),
            "",
        ]
    return "\n".join(parts)
