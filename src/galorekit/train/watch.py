"""A loss that goes wrong without becoming non-finite: a warning, not a stop.

Two signs, each reported once per run: the loss climbs past ``EXPLODED`` × its first value (an
LR far too high: ``--lr 1000`` reaches 1e8), or, once the warm-up is over, it is still no better
than predicting every token of the vocabulary uniformly (``ln V``, where a run starts; a run
"stuck at ln V" learns nothing).
"""

from __future__ import annotations

import math

#: the loss is "exploded" at this multiple of its first value
EXPLODED = 10.0
#: "no better than uniform": at least this fraction of ln V, after the warm-up
UNIFORM_FRACTION = 0.98


class LossWatch:
    """``warn = watch.check(step, loss)``: a one-line warning the first time a sign appears."""

    def __init__(self, vocab_size: int, settle_step: int) -> None:
        self.uniform = math.log(max(vocab_size, 2))
        self.settle_step = max(settle_step, 10)
        self.first: float | None = None
        self.warnings: list[str] = []
        self._seen: set[str] = set()

    def check(self, step: int, loss: float) -> str | None:
        if not math.isfinite(loss):
            return None  # the loop stops on it
        if self.first is None:
            self.first = loss
            return None
        if loss > EXPLODED * self.first and "exploded" not in self._seen:
            return self._warn(
                "exploded",
                f"step {step}: the training loss exploded to {loss:.4g}, over {EXPLODED:g}× its "
                f"first value {self.first:.4g}; the learning rate is probably too high",
            )
        if (
            step >= self.settle_step
            and loss >= UNIFORM_FRACTION * self.uniform
            and "uniform" not in self._seen
        ):
            return self._warn(
                "uniform",
                f"step {step}: the training loss {loss:.4g} is still at ln V = "
                f"{self.uniform:.4g} (uniform guessing): the run is not learning; the learning "
                "rate is probably too high (or far too low)",
            )
        return None

    def _warn(self, kind: str, message: str) -> str:
        self._seen.add(kind)
        self.warnings.append(message)
        return message
