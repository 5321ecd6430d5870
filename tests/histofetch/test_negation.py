"""NegEx-style assertion of findings in caption text."""

from __future__ import annotations

import pytest

from histofetch.negation import Assertion, assertion


def _status(text: str, finding: str) -> tuple[Assertion, str | None]:
    start = text.index(finding)
    status, trig = assertion(text, start, start + len(finding))
    return status, text[trig[0] : trig[1]] if trig else None


@pytest.mark.parametrize(
    ("text", "finding", "status", "trigger"),
    [
        ("Metastatic carcinoma in the node.", "Metastatic carcinoma", Assertion.AFFIRMED, None),
        ("No evidence of metastatic carcinoma.", "metastatic carcinoma", Assertion.NEGATED,
         "No evidence of"),
        ("Node negative for metastasis.", "metastasis", Assertion.NEGATED, "negative for"),
        ("Metastases were not identified.", "Metastases", Assertion.NEGATED,
         "were not identified"),
        ("Non-metastatic node.", "metastatic", Assertion.NEGATED, "Non-"),
        # the window stops at a clause end and at "but"
        ("No necrosis. Metastatic carcinoma.", "Metastatic carcinoma", Assertion.AFFIRMED, None),
        ("No necrosis but metastatic carcinoma.", "metastatic carcinoma", Assertion.AFFIRMED,
         None),
        # too far from the trigger (over six words)
        ("No capsule thickening of the large reactive node with metastatic tumour.",
         "metastatic tumour", Assertion.AFFIRMED, None),
        # pseudo-negation
        ("Not only metastatic carcinoma but also necrosis.", "metastatic carcinoma",
         Assertion.AFFIRMED, None),
        # not asserted about this image
        ("Distinction from metastatic carcinoma.", "metastatic carcinoma",
         Assertion.NOT_ASSERTED, "Distinction from"),
        ("Risk of nodal metastasis by grade.", "nodal metastasis", Assertion.NOT_ASSERTED,
         "Risk of"),
        ("Metastatic carcinoma or reactive change?", "Metastatic carcinoma",
         Assertion.NOT_ASSERTED, "?"),
    ],
)  # fmt: skip
def test_assertion(text: str, finding: str, status: Assertion, trigger: str | None) -> None:
    assert _status(text, finding) == (status, trigger)
