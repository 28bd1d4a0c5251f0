"""Run logging shared by the training commands: ``metrics.jsonl``, TensorBoard, wandb, run config,
tables.

``MetricsLogger.log({"event": "eval", "step": 100, "eval_accuracy": 0.91})`` appends one JSON
object per line to ``OUTPUT_DIR/metrics.jsonl`` (flushed at once, so ``tail -f`` and a crashed
run both see every event) and mirrors its numeric values as ``<event>/<key>`` at ``step`` to the
trackers of ``--report-to`` (``REPORT_TARGETS``: TensorBoard event files in
``OUTPUT_DIR/tensorboard``, a wandb run whose local files are in ``OUTPUT_DIR/wandb``).
A command opens its logger with one call, ``MetricsLogger.for_run(output_dir, cfg)``.
"""

from __future__ import annotations

import dataclasses
import enum
import io
import json
import math
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from galorekit.atomic import atomic_write_json, atomic_write_text
from galorekit.extras import needs_extra

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"
#: the trackers ``--report-to`` takes (comma-separated), besides ``none``
REPORT_TARGETS = ("tensorboard", "wandb")
#: ``--report-to``'s help (the commands' config fields share it)
REPORT_TO_HELP = (
    "where metrics go besides metrics.jsonl: tensorboard, wandb (a comma-separated list; wandb "
    "reads WANDB_PROJECT, WANDB_MODE=offline, …) or none"
)


def parse_report_to(value: str | Sequence[str]) -> tuple[str, ...]:
    """``"tensorboard,wandb"`` → ``("tensorboard", "wandb")``; ``"none"`` → ``()``. Raises
    ``ValueError`` naming the valid values."""
    items = value.split(",") if isinstance(value, str) else list(value)
    names = [str(item).strip().lower() for item in items if str(item).strip()]
    if names == ["none"]:
        return ()
    wrong = [n for n in names if n not in REPORT_TARGETS]
    if wrong or not names:
        raise ValueError(
            f"--report-to {','.join(map(str, items)) if not isinstance(value, str) else value!r}: "
            f"valid are {', '.join(REPORT_TARGETS)} (comma-separated) or none"
        )
    return tuple(dict.fromkeys(names))


def report_to_error(value: str | Sequence[str]) -> str | None:
    """What is wrong with a ``--report-to`` value, or None (for the configs' checks)."""
    try:
        parse_report_to(value)
    except ValueError as err:
        return str(err)
    return None


def to_jsonable(value: Any) -> Any:
    """``value`` as plain JSON data: dataclasses, paths, enums, tensors and numpy scalars are
    converted; NaN and infinities become ``None`` (strict JSON has no such numbers)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in value]
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value)
    item = getattr(value, "item", None)  # 0-d torch tensors and numpy scalars
    if callable(item) and getattr(value, "ndim", 0) == 0:
        return to_jsonable(item())
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return to_jsonable(tolist())
    return str(value)


def _scalars(event: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in event.items():
        if key in ("step", "time", "event"):
            continue
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            out[key] = float(value)
        elif getattr(value, "ndim", None) == 0 and callable(getattr(value, "item", None)):
            item = value.item()
            if isinstance(item, int | float) and not isinstance(item, bool):
                out[key] = float(item)
    return out


class _Wandb:
    """A wandb run mirroring the scalars; its files in ``OUTPUT_DIR/wandb``. A run directory keeps
    its wandb run id there, so a resumed run continues the same wandb run."""

    def __init__(self, output_dir: Path, config: Any, name: str | None) -> None:
        with needs_extra("integrations"):
            import wandb

        root = output_dir / WANDB_DIR
        root.mkdir(parents=True, exist_ok=True)
        id_file = root / "galorekit-run-id"
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
        try:
            self.run = wandb.init(
                project=os.environ.get("WANDB_PROJECT", "galorekit"),
                name=name or output_dir.resolve().name,
                id=run_id,
                resume="allow",
                dir=str(output_dir),
                config=to_jsonable(config) if config is not None else None,
                reinit="create_new",
            )
        except Exception as err:  # wandb's own errors (no login, no network) name no fix
            raise ValueError(
                f"--report-to wandb: wandb could not start a run ({err}); run `wandb login`, "
                "or set WANDB_MODE=offline to keep the run local"
            ) from err
        atomic_write_text(id_file, run_id)

    def log(self, prefix: str, step: int | None, scalars: dict[str, float]) -> None:
        tagged = {f"{prefix}/{k}": v for k, v in scalars.items()}
        if step is None:  # an event outside the step sequence (wandb's steps only increase)
            self.run.summary.update(tagged)
        else:
            self.run.log(tagged, step=step)

    def close(self) -> None:
        self.run.finish()


class MetricsLogger:
    """Append-only JSON-lines metrics log mirrored to TensorBoard and/or wandb.

    Each event gets a ``time`` (Unix seconds) unless it has one. An event's ``event`` field (default
    ``"metrics"``) prefixes its tags; its ``step`` is the trackers' step. ``report_to``
    (``REPORT_TARGETS`` or ``"none"``; default: TensorBoard) picks the trackers, ``tensorboard=
    False`` drops TensorBoard from them; ``run_config`` is the wandb run's config. Use as a
    context manager or call ``close()``.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike[str],
        tensorboard: bool = True,
        *,
        report_to: str | Sequence[str] = "tensorboard",
        run_config: Any = None,
        run_name: str | None = None,
    ) -> None:
        targets = parse_report_to(report_to)
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.output_dir / METRICS_FILE
        self._file: io.TextIOWrapper | None = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        self._writer: Any = None
        self._wandb: _Wandb | None = None
        if tensorboard and "tensorboard" in targets:
            # Imported here: tensorboard costs seconds to import and is optional for callers.
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.output_dir / TENSORBOARD_DIR))
        if "wandb" in targets:
            self._wandb = _Wandb(self.output_dir, run_config, run_name)

    @classmethod
    def for_run(cls, output_dir: str | os.PathLike[str], cfg: Any) -> MetricsLogger:
        """The logger of a command's run: ``cfg.report_to`` (default TensorBoard), without
        TensorBoard when ``cfg.tensorboard`` is False, ``cfg`` as the wandb run's config."""
        return cls(
            output_dir,
            tensorboard=getattr(cfg, "tensorboard", True),
            report_to=getattr(cfg, "report_to", "tensorboard"),
            run_config=cfg,
        )

    def log(self, event: Mapping[str, Any]) -> None:
        """Append ``event`` (a flat or nested dict) as one JSON line and mirror its scalars."""
        if self._file is None:
            raise RuntimeError(f"MetricsLogger for {self.path} is closed")
        record = {"time": time.time(), **event} if "time" not in event else dict(event)
        self._file.write(json.dumps(to_jsonable(record), allow_nan=False) + "\n")
        self._file.flush()
        if self._writer is None and self._wandb is None:
            return
        step = event.get("step")
        step = int(step) if isinstance(step, int | float) and not isinstance(step, bool) else None
        prefix = str(event.get("event", "metrics"))
        scalars = _scalars(event)
        if self._writer is not None:
            for key, value in scalars.items():
                self._writer.add_scalar(f"{prefix}/{key}", value, global_step=step)
        if self._wandb is not None and scalars:
            self._wandb.log(prefix, step, scalars)

    def close(self) -> None:
        """Flush and close the log (and the trackers); further ``log`` calls raise."""
        if self._wandb is not None:
            self._wandb.close()
            self._wandb = None
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The events of a ``metrics.jsonl`` file (or of ``OUTPUT_DIR/metrics.jsonl``)."""
    p = Path(path)
    if p.is_dir():
        p = p / METRICS_FILE
    return [event for _, event in metrics_lines(p)]


def metrics_lines(path: str | os.PathLike[str]) -> list[tuple[str, dict[str, Any]]]:
    """Each line of a ``metrics.jsonl`` file with its event. A torn last line (a crash in the
    middle of a write) is skipped; an unreadable line before it is an error naming the file."""
    p = Path(path)
    lines = [line for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    parsed = []
    for i, line in enumerate(lines):
        try:
            event = json.loads(line)
        except ValueError as err:
            if i == len(lines) - 1:  # torn by a crash: the event was never complete
                break
            raise ValueError(f"{p}: line {i + 1} is not a JSON event ({err})") from None
        parsed.append((line, event))
    return parsed


def write_run_config(output_dir: str | os.PathLike[str], config: Mapping[str, Any] | Any) -> Path:
    """Atomically write ``config`` (a dict or dataclass) to ``OUTPUT_DIR/config.json``."""
    path = Path(output_dir) / CONFIG_FILE
    atomic_write_json(path, to_jsonable(config), sort_keys=True)
    return path


def format_bytes(n: float | None) -> str:
    """``1536`` → ``"1.50 KiB"`` (binary units)."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def summary_table(
    rows: Sequence[Mapping[str, Any]], *, title: str | None = None, style: str = "plain"
) -> str:
    """Render ``rows`` (dicts; columns in first-seen key order) as a text table.

    ``style="plain"`` gives aligned ASCII (numbers right-aligned, ints with thousands separators,
    floats with 4 decimals, missing cells ``-``); ``style="rich"`` renders the same cells with
    ``rich``'s box drawing.
    """
    if style not in ("plain", "rich"):
        raise ValueError(f"style must be 'plain' or 'rich', got {style!r}")
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    numeric = [
        all(isinstance(row.get(c), int | float) or row.get(c) is None for row in rows)
        for c in columns
    ]
    if style == "rich":
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for c, is_num in zip(columns, numeric):
            table.add_column(c, justify="right" if is_num else "left")
        for line in cells:
            table.add_row(*line)
        buf = io.StringIO()
        Console(file=buf, width=max(80, sum(len(c) + 3 for c in columns) + 40)).print(table)
        return buf.getvalue().rstrip("\n")
    widths = [max([len(c), *(len(line[i]) for line in cells)]) for i, c in enumerate(columns)]

    def fmt(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if is_num else v.ljust(w) for v, w, is_num in zip(values, widths, numeric)
        ).rstrip()

    lines = [title] if title else []
    lines += [fmt(columns), "  ".join("-" * w for w in widths)]
    lines += [fmt(line) for line in cells]
    return "\n".join(lines)


class NullLogger:
    """The metrics logger of ranks other than 0: they log nothing."""

    def log(self, event: Mapping[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass
