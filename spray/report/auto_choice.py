"""How ``--method auto`` chose its correction, in the report's words: its record (the run's ``auto`` attr, written
by spray.clarc.auto, which the report reads as data: the report sits below clarc in the layering) as a table of
candidates with their validation worst groups named for a reader, the original model's, and the note where one
validation sample decided the choice."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

TRANSFORMED = {"local": "the artifact pasted", "global": "the artifact's intensity map applied",
               "spectral": "the artifact's spectral map applied", "moving": "a group image's artifact transplanted"}
"""How a counterfactual group's images were changed, by the kind in its name (``3+local``: class 3, the patch
pasted)."""


@dataclass(frozen=True)
class CandidateRow:
    """One candidate: its ``name``, whether auto ``chosen`` it, and its figures as the report prints them."""

    name: str
    chosen: bool
    epochs: str
    worst_group: str
    clean_loss: str
    guard: str
    seconds: str


@dataclass(frozen=True)
class AutoChoiceView:
    """auto's choice for the report: the artifact's ``kind``, the ``n`` validation images, every candidate, the
    original model's worst group on the same groups, and the ``note`` where the choice was within sampling noise."""

    kind: str
    n: int
    candidates: list[CandidateRow]
    original: str
    note: str | None


def group_name(name: str, names: Sequence[str]) -> str:
    """A worst group's name (spray.clarc.groups) in words: ``8:cluster`` the corrected group, ``8:rest`` the rest
    of its class, ``3`` another class, ``3+local`` another class with the artifact pasted (``names``: the
    classes' names, by label)."""
    base, _, kind = name.partition("+")
    label, _, part = base.partition(":")
    try:
        cls = f"class ‘{names[int(label)]}’"
    except (ValueError, IndexError):
        cls = f"class ‘{label}’"
    if part == "cluster":
        return "the corrected group"
    if part == "rest":
        return f"the rest of {cls}"
    return f"{cls}, {TRANSFORMED.get(kind, kind)}" if kind else cls


def worst_group_text(figures: Mapping[str, Any], names: Sequence[str]) -> str:
    """``89.5 % (34 of 38: class ‘9’)``; a run recorded before spray kept the worst group's size, the share only."""
    share = f"{100 * figures['worst_group']:.1f} %"
    if "worst_group_size" not in figures:
        return share
    return (f"{share} ({figures['worst_group_correct']} of {figures['worst_group_size']}: "
            f"{group_name(figures['worst_group_name'], names)})")


def auto_choice_view(record: Mapping[str, Any], names: Sequence[str]) -> AutoChoiceView:
    """The view of auto's ``record`` (a run's ``auto`` attr), its groups named with the classes' ``names``. A run
    recorded before auto kept its candidates' order, the guard's level and budget and the close call shows its
    candidates as read, their guard p alone and no note."""
    candidates = record["candidates"]
    alpha = record.get("alpha")
    rows = []
    for name in record.get("listed", candidates):  # a store's attributes sort their keys: the order is recorded
        f = candidates[name]
        chosen = name == record["chosen"]
        if "skipped" in f:
            rows.append(CandidateRow(name, chosen, "–", f"not fitted: {f['skipped']}", "–", "–",
                                     f"{f['seconds']:.0f} s"))
            continue
        p = f"p = {f['p_value']:.3f}"
        guard = p if alpha is None else (f"kept ({p})" if f["p_value"] >= alpha else
                                         f"dropped: loses more than {100 * record['max_clean_loss']:g} points ({p})")
        rows.append(CandidateRow(name, chosen, "–" if f.get("epochs") is None else str(f["epochs"]),
                                 worst_group_text(f, names), f"{100 * f['clean_loss']:+.1f} points", guard,
                                 f"{f['seconds']:.0f} s"))
    n = next(f["n"] for f in candidates.values() if "skipped" not in f)  # auto fits one candidate at least
    close = record.get("close_call")
    note = None if close is None else (
        f"{close['chosen']} was chosen over {close['over']}, a cheaper candidate, by one validation image of their "
        "worst groups or less: the choice is within sampling noise.")
    original = record.get("original")  # runs recorded before spray kept it lack it
    return AutoChoiceView(record["kind"], n, rows, "–" if original is None else worst_group_text(original, names),
                          note)
