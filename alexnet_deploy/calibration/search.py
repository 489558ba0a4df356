"""The search stage of calibration, shared by INT8 (layers kept in float) and INT4 (FC layers kept in INT8):
given layers ranked most costly first, keep them one more at a time at the higher precision until the held-out
drop fits the budget (greedy; the ranking comes from the per-layer sensitivity)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from alexnet_deploy.calibration.evaluate import Evaluation


def needs_search(ev: Evaluation, max_drop: float | None) -> bool:
    """Whether ``ev`` misses the ``max_drop`` budget (points); no budget: never."""
    return max_drop is not None and ev.drop > max_drop


def keep_until_within(ranked: Sequence[str], build: Callable[[list[str]], tuple[Path, Evaluation]],
                      max_drop: float, start: tuple[Path, Evaluation], kept_as: str,
                      echo=print) -> tuple[list[str], Path, Evaluation]:
    """Keep ``ranked[:1]``, ``ranked[:2]``, ... at the higher precision (``build(kept)`` -> (model, its
    evaluation)) until the drop is within ``max_drop``; -> (kept, model, evaluation) of the last one built, or
    ``start`` when ``ranked`` is empty. The caller says what a miss means (the budget may not be met)."""
    kept: list[str] = []
    path, ev = start
    for layer in ranked:
        kept.append(layer)
        path, ev = build(list(kept))
        echo(f"  keeping {', '.join(kept)} in {kept_as}: drop {ev.drop:+.2f} pts")
        if ev.drop <= max_drop:
            break
    return kept, path, ev
