"""histocore.progress: libraries report progress; nothing shows unless a caller asks."""

from __future__ import annotations

import contextlib

from histocore.progress import Task, reporting, task


class Recorder(Task):
    def __init__(self, events: list, description: str) -> None:
        self.events, self.description = events, description

    def advance(self, n: int = 1) -> None:
        self.events.append((self.description, "advance", n))

    def update(self, *, completed=None, total=None, description="") -> None:
        self.events.append((self.description, "update", completed, total))


def test_task_without_a_display_does_nothing() -> None:
    with task("reading", 10) as shown:
        shown.advance(5)
        shown.update(completed=10, total=10)
    assert type(shown) is Task


def test_reporting_sends_tasks_to_the_display_and_restores_on_exit() -> None:
    events: list = []

    @contextlib.contextmanager
    def display(description, total, unit):
        events.append((description, "start", total, unit))
        yield Recorder(events, description)
        events.append((description, "end"))

    with reporting(display):
        with task("download", None, unit="bytes") as shown:
            shown.update(total=100, completed=0)
            shown.advance(40)
        with reporting(None), task("inner", 2) as quiet:  # a nested block can silence it
            quiet.advance()
    with task("after", 1) as after:
        assert type(after) is Task
    assert events == [
        ("download", "start", None, "bytes"),
        ("download", "update", 0, 100),
        ("download", "advance", 40),
        ("download", "end"),
    ]
