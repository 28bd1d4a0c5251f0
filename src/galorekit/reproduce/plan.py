"""What ``galore reproduce`` runs: one dataclass per run, and the quick and full plans.

Every run trains the same model from the same initialisation (``seed``) on the same data in the same
order (the loader's order depends on ``seed`` only); runs differ in method, rank, T, learning rate
and length. A plan has four kinds of runs:

- **grid**: per tuned method, one run per learning rate of ``lr_grid`` (``grid_steps``, by default
  as long as a table row); a method's final runs take the grid point with the lowest validation
  perplexity, and a table row that is its grid's winner is that grid run, not trained again.
  Rows that share an algorithm share its tuned LR (``tune_as``): GaLore at rank d/2,
  galore-torch's GaLoreAdamW and every GaLore ablation use GaLore-d/4's.
- **table** (the paper's Table 2 at laptop scale): one run per row, ``steps`` steps each;
- **ablations** (Fig. 5): GaLore d/4 with T ∈ ``ablation_gaps``, ranks d/``k`` for k ∈
  ``ablation_rank_divisors``, and rank d/``long_rank_divisor`` for ``long_factor``× the steps
  (against rank d/2 for 1×); runs identical to a table row are the same run (cached once);
- **theory**: one instrumented GaLore-d/4 training run (``galorekit.reproduce.theory``).

Sizing the full plan (measured on this machine, torch 2.13 CPU, 1 thread per process)
------------------------------------------------------------------------------------------------
One step of ``llama_9m`` (hidden d = 128, 4 layers) on 8 sequences × 128 tokens with the 4096-token
BPE of the default corpus costs 0.43–0.53 CPU-seconds whatever the method (AdamW 0.45, GaLore 0.43,
8-bit Adam 0.51, 8-bit GaLore 0.48, LoRA 0.53, ReLoRA 0.48, Low-Rank 0.34, galore-torch 0.47);
with the default 8192-token BPE it is 0.63 (8 × 128) and 1.30 (8 × 256), the output layer
dominating. Why this configuration:

- vocabulary 4096: the embeddings and output head (plain Adam in every method) are then 1.05M of
  the model's 1.85M parameters, so the matrices GaLore acts on are 43% of the parameters — the
  share of the paper's 60M model (25M of 58M) — instead of 28% with 8192 tokens, and a step is
  1.4× cheaper;
- 8 × 128 tokens a step (1,024): twice the optimizer steps of 8 × 256 for the same tokens, since
  what GaLore does depends on steps (T, the number of subspaces);
- ``steps`` = 400 (410K tokens a row, 15% of the corpus's 2.73M training tokens: no repetition):
  the largest budget for which the whole plan fits below.

Steps: grid 7 methods × 4 LRs × 400 = 11,200 (seven table rows are their grid's winners); the
other table rows (GaLore d/2, galore-torch) 800; ablations T ∈ {10, 200, 1000} (T = 50 is the
table's row) 3 × 400 + rank d/8 400 + rank d/8 for 4× 1,600 = 3,200; theory 400. Total 15,600
steps × ~0.48 s = 7,500 CPU-s, plus evaluations (128 validation sequences ≈ 2.4 CPU-s each, every
50 steps: ~750 CPU-s) and start-up (~3 s a run): ≈ 8,300 CPU-s = 70 minutes on 2 idle cores with 2
worker processes (more on a machine shared with other jobs).

Why the grid runs are full-length: a first version tuned on 100-step runs (¼ of a row, its own
warm-up and cosine decay) and picked 0.01 for full-rank AdamW, which then ended at perplexity 181
after 400 steps where 0.001 reaches 142 and 0.003 lower still: the best LR of a short run is not
that of the run it stands for. 0.0025 is added to the paper's points for the same reason.

Those CPU-seconds belong to one host: on the machine of the per-group runs (Dec 4, another
virtual machine: kernel fc-v1272 against fc-v782) a 400-step run takes ~64 CPU-s, the same for the
Nov 30 code (100 steps of AdamW: 16.0 CPU-s at commit 64b1ca8, 16.3 now, identical perplexity):
the host, not the code or the measurement (``getrusage`` of the worker; one thread). Each run's
``worker`` entry records its host and CPU model since.

The successors section (``successors``) adds, per successor, its own 4-point LR grid, 2 ratio
points and 2 neighbours (40 runs), and the LR's neighbours (``lr_neighbour_factor`` 2) 14 runs
for the table's seven groups; the per-group theory and 4×-longer runs 5 run-lengths more.

The quick plan: 60 steps, rows AdamW, GaLore d/4, Low-Rank, LoRA, T ∈ {10, 50}, ranks d/8 and d/4,
the theory run, no LR grid: 7 runs, 420 steps ≈ 250 CPU-s with evaluations, about 2–3 minutes on 2
idle cores (6 minutes measured while other jobs loaded the machine). Its fixed LRs are the best of
{0.01, 0.005, 0.001} in a 60-step pilot of this plan (validation perplexity at 0.01 / 0.005 /
0.001): AdamW 467 / 459 / 534, GaLore d/4 302 / 348 / –, LoRA 627 / 610 / 598, Low-Rank
638 / 493 / 577.
"""

# size: ~570 lines — about 60 of them the measurements behind the plan's settings (module
# docstring and comments a reader of the report needs); the rest is one plan builder, each
# kind of run (grid, table, ablations, per-group, batch) a screen or less

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from galorekit.names import (
    ALL_METHODS,
    DEFAULT_LR,
    GALORE_DEFAULTS,
    SUCCESSOR_METHODS,
    is_galore,
    method_info,
)

#: the sections of a plan, in report order (``--only`` picks among them)
SECTIONS = ("table", "batch", "ablations", "theory", "successors")
#: the paper's learning-rate grid (§5.1: tuned over this set)
PAPER_LR_GRID = (0.01, 0.005, 0.001, 0.0005, 0.0001)
#: measured CPU-seconds a step of the full plan's model and batch (module docstring: 0.48 on
#: the Nov 30 host; the same code takes 0.16 on the Dec 4 one, evaluations included)
FULL_PLAN_CPU_S_PER_STEP = 0.16


@dataclass(frozen=True)
class TableRow:
    """One row of the laptop Table 2: a method at a rank (``rank_divisor`` k: rank d/k)."""

    label: str
    method: str
    rank_divisor: int | None = None
    tune_as: str | None = None  # the grid whose LR this row takes; None: its own method's

    @property
    def lr_group(self) -> str:
        return self.tune_as or self.method


FULL_TABLE: tuple[TableRow, ...] = (
    TableRow("Full-rank AdamW", "adamw"),
    TableRow("GaLore", "galore_adamw", 4),
    TableRow("GaLore", "galore_adamw", 2, tune_as="galore_adamw"),
    TableRow("Low-Rank", "low_rank", 4),
    TableRow("LoRA", "lora", 4),
    TableRow("ReLoRA", "relora", 4),
    TableRow("8-bit Adam", "adamw8bit"),
    TableRow("8-bit GaLore", "galore_adamw8bit", 4),
    TableRow("galore-torch GaLoreAdamW", "galore_torch_adamw", 4, tune_as="galore_adamw"),
)
QUICK_TABLE: tuple[TableRow, ...] = (
    TableRow("Full-rank AdamW", "adamw"),
    TableRow("GaLore", "galore_adamw", 4),
    TableRow("Low-Rank", "low_rank", 4),
    TableRow("LoRA", "lora", 4),
)


@dataclass(frozen=True)
class PlanConfig:
    """Everything a plan's results depend on (stored in ``plan.json``; a directory holding another
    plan's results is refused). ``steps`` is the token budget of a table row, in optimizer steps of
    ``batch_size`` × ``seq_len`` tokens."""

    name: str = "full"
    model: str = "llama_9m"
    dataset: str = "default"
    data_files: tuple[str, ...] | None = None
    vocab_size: int = 4096
    seq_len: int = 128
    batch_size: int = 8
    val_sequences: int = 128
    cache_dir: str | None = None
    device: str = "cpu"
    seed: int = 0
    steps: int = 400
    eval_points: int = 8  # evaluations per run of ``steps`` (every steps // eval_points)
    update_proj_gap: int = 50  # T of every GaLore run but the T ablation
    scale: float = GALORE_DEFAULTS["scale"]
    table: tuple[TableRow, ...] = FULL_TABLE
    lr_grid: tuple[float, ...] = (0.01, 0.005, 0.0025, 0.001)
    grid_fraction: float = 1.0  # grid runs are this fraction of ``steps``; 0: no grid
    fixed_lrs: tuple[tuple[str, float], ...] = ()  # without a grid: LR per method (else default)
    ablation_gaps: tuple[int, ...] = (10, 50, 200, 1000)
    ablation_rank_divisors: tuple[int, ...] = (8, 4, 2)
    long_rank_divisor: int | None = 8  # None: no "small rank for longer" run
    long_factor: int = 4
    theory_points: int = 40  # gradient measurements over the theory run
    # per-group protocol: the other parameters' LR (embeddings, head, norms) is tuned as a
    # multiple of the matrix LR over this grid (1 = the paper's protocol); (): not at all
    lr_other_ratios: tuple[float, ...] = (1.0, 4.0, 16.0)
    # then the matrix LR × and ÷ this factor at the chosen ratio (None: the LR is not revisited)
    lr_neighbour_factor: float | None = 2.0
    # tokens-per-step sensitivity: GaLore and AdamW at these multiples of batch_size for the same
    # tokens (steps // factor), per-group-tuned LRs; (): none
    batch_factors: tuple[int, ...] = (4, 16)
    # GaLore's successors, each tuned as the table's rows are (its own LR grid, ratio grid and
    # neighbours) and compared with the table's GaLore d/4 and AdamW rows; (): no such section
    successors: tuple[str, ...] = SUCCESSOR_METHODS

    def __post_init__(self) -> None:
        errors = []
        for name in ("steps", "seq_len", "batch_size", "eval_points", "theory_points"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                errors.append(f"{name} must be a positive integer, got {value!r}")
        if not 0.0 <= self.grid_fraction <= 1.0:
            errors.append(f"grid_fraction must be in [0, 1], got {self.grid_fraction}")
        if self.grid_fraction > 0 and not self.lr_grid:
            errors.append("lr_grid is empty but grid_fraction > 0")
        if any(not (isinstance(lr, float | int) and lr > 0) for lr in self.lr_grid):
            errors.append(f"lr_grid must hold positive numbers, got {self.lr_grid}")
        if not self.table:
            errors.append("the table needs at least one row")
        for row in self.table:
            if row.method not in ALL_METHODS:
                errors.append(f"table row {row.label!r}: unknown method {row.method!r}")
        if self.lr_other_ratios and (
            1.0 not in self.lr_other_ratios or any(not r > 0 for r in self.lr_other_ratios)
        ):
            errors.append(
                f"lr_other_ratios must be positive and include 1 (the paper's protocol), got "
                f"{self.lr_other_ratios}"
            )
        if self.lr_neighbour_factor is not None and not self.lr_neighbour_factor > 1:
            errors.append(
                f"lr_neighbour_factor must be > 1 or None, got {self.lr_neighbour_factor}"
            )
        if self.batch_factors and not self.lr_other_ratios:
            errors.append("batch_factors needs the per-group protocol (lr_other_ratios)")
        for factor in self.batch_factors:
            # steps // factor steps: the same tokens when factor divides steps (it does at 400)
            if not (isinstance(factor, int) and 1 < factor <= self.steps):
                errors.append(f"batch factor {factor!r} must be an integer in [2, steps]")
        for method in self.successors:
            if method not in SUCCESSOR_METHODS:
                errors.append(
                    f"unknown successor {method!r}; valid: {', '.join(SUCCESSOR_METHODS)}"
                )
        if self.long_factor < 1:
            errors.append(f"long_factor must be ≥ 1, got {self.long_factor}")
        if errors:
            raise ValueError("invalid reproduce plan: " + "; ".join(errors))

    @property
    def tuned(self) -> bool:
        return self.grid_fraction > 0

    @property
    def per_group(self) -> bool:
        """Whether the plan has the per-group protocol (needs the LR grid)."""
        return self.tuned and bool(self.lr_other_ratios)

    @property
    def grid_steps(self) -> int:
        return max(1, round(self.steps * self.grid_fraction))

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def eval_every(self) -> int:
        """Steps between evaluations: ``steps // eval_points`` of a table-length run, for every
        run (so that a longer run's curve is sampled alike; a grid run is evaluated at its end)."""
        return max(1, self.steps // self.eval_points)

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


def _jsonable(value: Any) -> Any:
    """Tuples → lists, recursively (so that a config compares equal to its JSON round trip)."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def full_plan_config(**overrides: Any) -> PlanConfig:
    """The committed plan (module docstring); ``overrides`` change fields (``steps``, ``seed``)."""
    return replace(PlanConfig(), **overrides)


#: what a --quick report says before its verdicts
QUICK_NOTE = (
    "**--quick is a smoke test** (a few dozen steps, a few rows, no LR tuning): it checks that "
    "every part runs, and its verdicts are not findings — see the full run's "
    "(`benchmarks/results/reproduce/`)."
)


def quick_plan_config(**overrides: Any) -> PlanConfig:
    """``--quick``: a few minutes — fewer steps, fewer rows, no LR grid."""
    base = PlanConfig(
        name="quick",
        steps=60,
        eval_points=3,
        table=QUICK_TABLE,
        grid_fraction=0.0,
        fixed_lrs=(("adamw", 0.005), ("galore_adamw", 0.01), ("low_rank", 0.005), ("lora", 0.001)),
        ablation_gaps=(10, 50),
        ablation_rank_divisors=(8, 4),
        long_rank_divisor=None,
        theory_points=12,
        lr_other_ratios=(),
        lr_neighbour_factor=None,
        batch_factors=(),
        # the successors are compared only under tuned LRs: a fixed-LR smoke run of them would
        # double --quick's time and say nothing
        successors=(),
    )
    return replace(base, **overrides)


# ---------------------------------------------------------------------------------------- runs
@dataclass(frozen=True)
class RunSpec:
    """One training run. ``lr`` None: the tuned LR of grid ``lr_group``; ``ratio``: the other
    parameters' LR as a multiple of it (``--lr-other-ratio``), None: the tuned one of
    ``lr_group``'s ratio grid; ``lr_step`` ±1: a neighbour of the tuned LR (the per-group
    search's last step); ``batch_size`` None: the plan's; ``kind`` "theory" is the
    instrumented loop, "pretrain" a ``galore pretrain`` run."""

    key: str
    method: str
    steps: int
    rank: int | None = None
    update_proj_gap: int | None = None  # GaLore methods only
    lr: float | None = None
    lr_group: str | None = None
    kind: str = "pretrain"
    ratio: float | None = 1.0
    batch_size: int | None = None
    lr_step: int = 0  # ±1: the tuned LR × / ÷ the plan's lr_neighbour_factor (at the tuned ratio)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def settings(self) -> tuple[Any, ...]:
        """What the run trains apart from its LRs (two runs with equal settings and LRs are
        the same run)."""
        return (
            self.method,
            self.steps,
            self.rank,
            self.update_proj_gap,
            self.kind,
            self.batch_size,
        )


def uses_gap(method: str) -> bool:
    return is_galore(method)


def run_key(
    method: str,
    steps: int,
    *,
    rank: int | None,
    gap: int | None,
    lr: float | None,
    kind: str = "pretrain",
    ratio: float | None = 1.0,
    batch_size: int | None = None,
    lr_step: int = 0,
) -> str:
    """A readable, unique file name for a run: ``galore_adamw-r32-T50-400steps-lr_tuned``,
    ``…-other4x`` (other parameters at 4× the LR), ``…-other_tuned``, ``…-b32`` (batch 32)."""
    parts = ["theory"] if kind == "theory" else []
    parts.append(method)
    if rank is not None:
        parts.append(f"r{rank}")
    if gap is not None:
        parts.append(f"T{gap}")
    if batch_size is not None:
        parts.append(f"b{batch_size}")
    parts.append(f"{steps}steps")
    parts.append("lr_tuned" if lr is None else f"lr{lr:g}")
    if lr_step:
        parts[-1] += "_up" if lr_step > 0 else "_down"
    if ratio is None:
        parts.append("other_tuned")
    elif ratio != 1:
        parts.append(f"other{ratio:g}x")
    return "-".join(parts)


def make_run(
    cfg: PlanConfig,
    method: str,
    steps: int,
    *,
    rank: int | None = None,
    gap: int | None = None,
    lr_group: str | None = None,
    kind: str = "pretrain",
    lr: float | None = None,
    ratio: float | None = 1.0,
    batch_size: int | None = None,
    lr_step: int = 0,
) -> RunSpec:
    """A run whose LR is ``lr``, else the tuned one of ``lr_group`` (default: ``method``'s), or,
    in an untuned plan, ``fixed_lrs``'s (else ``galore pretrain``'s default) for ``lr_group``;
    ``ratio`` None: the per-group-tuned ratio of ``lr_group``."""
    rank = rank if method_info(method).uses_rank else None
    gap = (gap if gap is not None else cfg.update_proj_gap) if uses_gap(method) else None
    group = lr_group or method
    if lr is None and not cfg.tuned:
        lr = dict(cfg.fixed_lrs).get(group, DEFAULT_LR[group])
    key = run_key(
        method,
        steps,
        rank=rank,
        gap=gap,
        lr=lr,
        kind=kind,
        ratio=ratio,
        batch_size=batch_size,
        lr_step=lr_step,
    )
    return RunSpec(
        key=key,
        method=method,
        steps=steps,
        rank=rank,
        update_proj_gap=gap,
        lr=lr,
        lr_group=None if lr is not None and ratio is not None else group,
        kind=kind,
        ratio=ratio,
        batch_size=batch_size,
        lr_step=lr_step,
    )


@dataclass
class Plan:
    """The runs of a ``PlanConfig`` and which result plays which part.

    ``runs``: every distinct run (key → spec); ``grid``: LR group → [(lr, key)]; ``ratio_grid``:
    LR group → [(ratio, key)] (the other parameters' LR multiple, at the group's tuned LR);
    ``neighbours``: LR group → [(±1, key)] (its LR × / ÷ the factor, at the chosen ratio);
    ``table`` / ``table_tuned``: [(row, key)] under the paper's protocol (one LR) / per-group
    LRs; ``gaps``, ``ranks`` (and their ``_tuned`` twins): [(T or divisor, key)]; ``long``:
    [(label, key)] (rank d/2 for 1× and the small rank for ``long_factor``×); ``batch``:
    [(method, factor, key)] (tokens per step × factor, same tokens); ``theory``: its key;
    ``long_tuned``, ``theory_tuned``: their per-group twins; ``successors`` /
    ``successors_tuned``: [(method, key)] under the paper's protocol / per-group LRs.
    """

    config: PlanConfig
    hidden_size: int
    runs: dict[str, RunSpec] = field(default_factory=dict)
    grid: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    ratio_grid: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    neighbours: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    table: list[tuple[TableRow, str]] = field(default_factory=list)
    table_tuned: list[tuple[TableRow, str]] = field(default_factory=list)
    gaps: list[tuple[int, str]] = field(default_factory=list)
    ranks: list[tuple[int, str]] = field(default_factory=list)
    gaps_tuned: list[tuple[int, str]] = field(default_factory=list)
    ranks_tuned: list[tuple[int, str]] = field(default_factory=list)
    long: list[tuple[str, str]] = field(default_factory=list)
    batch: list[tuple[str, int, str]] = field(default_factory=list)
    theory: str | None = None
    long_tuned: list[tuple[str, str]] = field(default_factory=list)
    theory_tuned: str | None = None
    successors: list[tuple[str, str]] = field(default_factory=list)
    successors_tuned: list[tuple[str, str]] = field(default_factory=list)

    def rank(self, divisor: int | None) -> int | None:
        return None if divisor is None else max(1, self.hidden_size // divisor)

    def _add(self, spec: RunSpec) -> str:
        self.runs.setdefault(spec.key, spec)
        return spec.key

    def section_keys(self, section: str) -> list[str]:
        """Run keys a section reports (grid runs excluded); per-group runs after the others,
        the rank ablation's before T's (the order in which they start)."""
        if section == "table":
            return list(dict.fromkeys(k for _, k in [*self.table, *self.table_tuned]))
        if section == "batch":
            return [k for _, _, k in self.batch]
        if section == "ablations":
            pairs = [
                *self.gaps,
                *self.ranks,
                *self.long,
                *self.ranks_tuned,
                *self.gaps_tuned,
                *self.long_tuned,
            ]
            return list(dict.fromkeys(k for _, k in pairs))
        if section == "theory":
            return [k for k in (self.theory, self.theory_tuned) if k]
        if section == "successors":
            if not self.successors:
                return []
            # the table's AdamW, GaLore d/4 and 8-bit GaLore rows are the reference (the same
            # runs, reused)
            pairs = [*self.reference_rows(self.table), *self.successors]
            pairs += [*self.reference_rows(self.table_tuned), *self.successors_tuned]
            return list(dict.fromkeys(k for _, k in pairs))
        raise ValueError(f"unknown section {section!r}; valid: {', '.join(SECTIONS)}")

    @staticmethod
    def reference_rows(table: list[tuple[TableRow, str]]) -> list[tuple[str, str]]:
        """[(method, key)] of a table's full-rank AdamW, GaLore d/4 and 8-bit GaLore d/4 rows
        (the successors' reference; 8-bit GaLore is Q-GaLore's control: its 8-bit moments
        without the projector's quantization and lazy refresh)."""
        wanted = {("adamw", None), ("galore_adamw", 4), ("galore_adamw8bit", 4)}
        return [(r.method, k) for r, k in table if (r.method, r.rank_divisor) in wanted]

    def group_rank(self, method: str) -> int | None:
        """The rank of ``method``'s runs: d/4, or the method's own (APOLLO-Mini: 1)."""
        if not method_info(method).uses_rank:
            return None
        return dict(method_info(method).group).get("rank", self.rank(4))

    def tuning_keys(self, group: str) -> list[str]:
        """The runs that tune ``group``: its LR grid, its ratio grid, its LR's neighbours."""
        points = [
            *self.grid.get(group, []),
            *self.ratio_grid.get(group, []),
            *self.neighbours.get(group, []),
        ]
        return list(dict.fromkeys(k for _, k in points))

    def select(self, sections: tuple[str, ...] | list[str]) -> list[RunSpec]:
        """The runs ``sections`` need, their LR and ratio grids included (grid runs first)."""
        chosen = list(dict.fromkeys(k for s in sections for k in self.section_keys(s)))
        groups = list(dict.fromkeys(g for k in chosen if (g := self.runs[k].lr_group)))
        lr_grid = [key for g in groups for _, key in self.grid.get(g, [])]
        per_group = {
            g for k in chosen if self.runs[k].ratio is None and (g := self.runs[k].lr_group)
        }
        ratio_grid = [key for g in groups if g in per_group for _, key in self.ratio_grid[g]]
        steps = [key for g in groups if g in per_group for _, key in self.neighbours.get(g, [])]
        return [self.runs[k] for k in dict.fromkeys([*lr_grid, *ratio_grid, *steps, *chosen])]

    def repeats_grid(self, spec: RunSpec) -> bool:
        """Whether ``spec``, once its LR (and ratio) is resolved, is one of its group's tuning
        runs whichever point wins (grid runs as long as table rows): the runner reuses that run
        instead of training it."""
        if spec.lr is not None:
            return False
        group = spec.lr_group or ""
        pool = self.grid.get(group, []) if spec.ratio == 1 else []
        if spec.ratio is None and not spec.lr_step:
            pool = [*self.ratio_grid.get(group, []), *self.neighbours.get(group, [])]
        return bool(pool) and all(self.runs[k].settings() == spec.settings() for _, k in pool)

    def cost(self, spec: RunSpec) -> int:
        """``spec``'s tokens in plan steps (a run at k× the batch costs k× a step)."""
        return spec.steps * (spec.batch_size or self.config.batch_size) // self.config.batch_size

    def total_steps(self, specs: list[RunSpec]) -> int:
        """Plan steps ``specs`` train (runs that repeat a grid run count once)."""
        return sum(self.cost(s) for s in specs if not self.repeats_grid(s))


def build_plan(cfg: PlanConfig) -> Plan:
    """Every run of ``cfg`` (the model's hidden size d sets the ranks d/k)."""
    # galorekit.models imports torch: this module is imported by ``galore --help``'s parser
    from galorekit.models.registry import NAMED_SHAPES, normalise_name

    shape = NAMED_SHAPES.get(normalise_name(cfg.model))
    if shape is not None:  # no transformers import for the named models (--dry-run stays quick)
        hidden = shape.hidden_size
    else:
        from galorekit.models import model_config

        hidden = int(model_config(cfg.model).hidden_size)
    plan = Plan(config=cfg, hidden_size=hidden)
    steps = cfg.steps
    galore_rank = plan.rank(4)

    # tables first, so that the grid covers exactly the LR groups the plan uses
    for row in cfg.table:
        spec = make_run(
            cfg, row.method, steps, rank=plan.rank(row.rank_divisor), lr_group=row.lr_group
        )
        plan.table.append((row, plan._add(spec)))
    for gap in cfg.ablation_gaps:
        spec = make_run(cfg, "galore_adamw", steps, rank=galore_rank, gap=gap)
        plan.gaps.append((gap, plan._add(spec)))
    for divisor in cfg.ablation_rank_divisors:
        spec = make_run(cfg, "galore_adamw", steps, rank=plan.rank(divisor))
        plan.ranks.append((divisor, plan._add(spec)))
    if cfg.long_rank_divisor is not None:
        short = make_run(cfg, "galore_adamw", steps, rank=plan.rank(2))
        long = make_run(
            cfg,
            "galore_adamw",
            steps * cfg.long_factor,
            rank=plan.rank(cfg.long_rank_divisor),
        )
        plan.long.append((f"rank d/2 = {plan.rank(2)}, {steps} steps", plan._add(short)))
        plan.long.append(
            (
                f"rank d/{cfg.long_rank_divisor} = {plan.rank(cfg.long_rank_divisor)}, "
                f"{steps * cfg.long_factor} steps",
                plan._add(long),
            )
        )
    theory = make_run(cfg, "galore_adamw", steps, rank=galore_rank, kind="theory")
    plan.theory = plan._add(theory)
    if cfg.tuned:  # the successors are compared only at tuned LRs (their own grids)
        for method in cfg.successors:
            spec = make_run(cfg, method, steps, rank=plan.group_rank(method))
            plan.successors.append((method, plan._add(spec)))
    if cfg.per_group:
        _add_per_group(plan)

    if cfg.tuned:
        groups = dict.fromkeys(s.lr_group for s in plan.runs.values() if s.lr_group)
        for group in groups:
            rank = plan.group_rank(group)
            points = []
            for lr in cfg.lr_grid:
                spec = make_run(cfg, group, cfg.grid_steps, rank=rank, lr=float(lr))
                points.append((float(lr), plan._add(spec)))
            plan.grid[group] = points
            if cfg.per_group:  # the other parameters' ratio, at the group's tuned LR
                plan.ratio_grid[group] = [
                    (float(r), plan._add(make_run(cfg, group, steps, rank=rank, ratio=float(r))))
                    for r in cfg.lr_other_ratios
                ]
            if cfg.per_group and cfg.lr_neighbour_factor:  # then the LR, at that ratio
                plan.neighbours[group] = [
                    (
                        step,
                        plan._add(make_run(cfg, group, steps, rank=rank, ratio=None, lr_step=step)),
                    )
                    for step in (1, -1)
                ]
    return plan


def _add_per_group(plan: Plan) -> None:
    """The per-group protocol's runs: the table, the rank and T ablations and the
    tokens-per-step rows, each at its group's tuned LR and ratio."""
    cfg, steps, galore_rank = plan.config, plan.config.steps, plan.rank(4)
    for row in cfg.table:
        spec = make_run(
            cfg,
            row.method,
            steps,
            rank=plan.rank(row.rank_divisor),
            lr_group=row.lr_group,
            ratio=None,
        )
        plan.table_tuned.append((row, plan._add(spec)))
    for divisor in cfg.ablation_rank_divisors:
        spec = make_run(cfg, "galore_adamw", steps, rank=plan.rank(divisor), ratio=None)
        plan.ranks_tuned.append((divisor, plan._add(spec)))
    for gap in cfg.ablation_gaps:
        spec = make_run(cfg, "galore_adamw", steps, rank=galore_rank, gap=gap, ratio=None)
        plan.gaps_tuned.append((gap, plan._add(spec)))
    for label, key in plan.long:  # rank d/2 for 1× against the small rank for long_factor×
        short_or_long = plan.runs[key]
        spec = make_run(
            cfg, "galore_adamw", short_or_long.steps, rank=short_or_long.rank, ratio=None
        )
        plan.long_tuned.append((label, plan._add(spec)))
    theory = make_run(cfg, "galore_adamw", steps, rank=galore_rank, kind="theory", ratio=None)
    plan.theory_tuned = plan._add(theory)
    for method in cfg.successors:
        spec = make_run(cfg, method, steps, rank=plan.group_rank(method), ratio=None)
        plan.successors_tuned.append((method, plan._add(spec)))
    for method in ("adamw", "galore_adamw"):
        rank = galore_rank if method_info(method).uses_rank else None
        for factor in cfg.batch_factors:
            spec = make_run(
                cfg,
                method,
                steps // factor,
                rank=rank,
                ratio=None,
                batch_size=cfg.batch_size * factor,
            )
            plan.batch.append((method, factor, plan._add(spec)))
