"""The grader's closing table and its grades CSV.

The CSV has one row per submission with ``status`` (graded / needs review / failed to run) and
``reason`` columns, so a submission that could not be graded is never a bare 0, plus one column
per graded cell.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from course_lib.grading.pipeline import FAILED, GRADED, REVIEW, Outcome

__all__ = ["write_csv", "table", "summary_line"]


def _reason(outcome: Outcome) -> str:
    return "; ".join(outcome.reasons + outcome.notes)


def write_csv(path: Path, assignment: str, outcomes: list[Outcome], part_ids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["student_id", "assignment", "score", "max_score", "status", "reason",
                     *part_ids])
    for o in sorted(outcomes, key=lambda o: o.student):
        writer.writerow([o.student, assignment, f"{o.score:g}", f"{o.max_score:g}", o.status,
                         _reason(o), *(f"{o.parts.get(p, 0.0):g}" for p in part_ids)])
    tmp = path.with_suffix(".csv.tmp")
    tmp.write_text(buf.getvalue())
    tmp.replace(path)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def table(outcomes: list[Outcome], width: int = 110) -> str:
    """A plain-text table: the submissions needing a look first, then the rest."""
    order = {FAILED: 0, REVIEW: 1, GRADED: 2}
    rows = sorted(outcomes, key=lambda o: (order.get(o.status, 3), o.student))
    name_w = max([len("student")] + [len(o.student) for o in rows])
    lines = [f"{'student':<{name_w}}  {'score':>9}  {'status':<13}  reason",
             f"{'-' * name_w}  {'-' * 9}  {'-' * 13}  {'-' * 6}"]
    room = max(20, width - name_w - 30)
    for o in rows:
        score = f"{o.score:g}/{o.max_score:g}"
        reason = _reason(o) + (" (graded in an earlier run)" if o.skipped else "")
        lines.append(f"{o.student:<{name_w}}  {score:>9}  {o.status:<13}  {_cut(reason, room)}")
    return "\n".join(lines)


def summary_line(outcomes: list[Outcome], seconds: float) -> str:
    counts = {s: sum(o.status == s for o in outcomes) for s in (GRADED, REVIEW, FAILED)}
    fresh = [o for o in outcomes if not o.skipped]
    rate = len(fresh) / seconds * 60 if seconds > 0 and fresh else 0.0
    return (f"{len(outcomes)} submissions: {counts[GRADED]} graded, {counts[REVIEW]} need review, "
            f"{counts[FAILED]} failed to run; {len(fresh)} graded in this run in {seconds:.1f} s "
            f"({rate:.1f} per minute)")
