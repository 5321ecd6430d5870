"""Patch ids that name one patch each: checked the same way for every reader that takes them
from a file (an encoded ``.h5``'s ``patch_id``, a PCam pair's ``<stem>_meta.csv``, the Kaggle
``train_labels.csv``)."""

from __future__ import annotations

from pathlib import Path

from histomodels.data.errors import DatasetError

#: what :func:`id_problem` refuses, as the messages say it
UNPRINTABLE = "holds a control or invisible character"


def shown_id(pid: str) -> str:
    """``pid`` as a message quotes it: its repr, cut at 200 characters with ``…`` after a
    cut one, control characters escaped (:func:`histocore.io.text_shown`, as the run
    store's row keys are)."""
    from histocore.io import text_shown

    return text_shown(repr(pid))


def id_problem(pid: str) -> str | None:
    """Why ``pid`` cannot be an id, or None. Not printable text (``str.isprintable``): a
    control character (a newline, ``\\x1b``...) would reach predictions.csv, the report's
    pages and the terminal as it is; an invisible one (a zero-width space, a bidi override,
    U+2028, a no-break space) makes two ids that read the same, or text that reads as other
    text."""
    if pid.isprintable():
        return None
    return f"{UNPRINTABLE} ({shown_id(pid)}); ids must be printable text"


def check_ids(ids: list[str], path: Path, *, first_line: int | None = None) -> None:
    """Refuse ids that cannot name one patch each: a value given twice (two patches under
    one id were merged by every check that goes by id: the overlap of train and test,
    predictions joined back to labels), and one :func:`id_problem` refuses. The line names
    the first such row (``of row N`` in a dataset; ``path:LINE`` when ``first_line``, the
    file line of ``ids[0]``, is given: a CSV), the value escaped."""
    first: dict[str, int] = {}
    for row, pid in enumerate(ids):
        if first_line is None:
            at, of, earlier = f"{path}: 'patch_id'", f" of row {row}", "row"
        else:
            at, of, earlier = f"{path}:{row + first_line}: 'patch_id'", "", "line"
        problem = id_problem(pid)
        if problem is not None:
            raise DatasetError(f"{at}{of} {problem}")
        if pid in first:
            before = first[pid] if first_line is None else first[pid] + first_line
            raise DatasetError(
                f"{at} {shown_id(pid)}{of} repeats {earlier} {before}; each patch needs its own id"
            )
        first[pid] = row
