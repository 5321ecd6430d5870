"""docs/python-api.md stays true: every ```python (or ```py) block runs, in order, in one
namespace, in an empty folder holding a small histofetch run at ``runs/mine`` (the page's own
first block makes its synthetic patches; nothing from /work/shared is needed), and what its
comments say a line gives is what it gives:

- ``print(...)  # ['pcam-cnn']``: the printed text (``…`` stands for any text);
- ``x = ...  # uint8 [64, 96, 96, 3]`` (or ``a, b = ...  # uint8 [..], int64 [..]``, an
  expression ``... # [N, 96, 96, 3] → float [N]``, a loop's ``# x: uint8 [B, 96, 96, 3]``):
  the value's dtype (``float``/``int``: any of that kind) and shape, a letter being any size
  (the same within one comment). Any other comment is prose and claims nothing."""

from __future__ import annotations

import ast
import io
import re
import sys
import tokenize
from pathlib import Path
from typing import Any

import pytest

from histocore.manifest import Image, Manifest, Record

PAGE = Path(__file__).resolve().parents[2] / "docs" / "python-api.md"
BLOCKS = re.findall(r"^```(?:python|py)\n(.*?)^```$", PAGE.read_text(), re.M | re.S)

#: a comment's claim of dtype and shape: ``[x: ]dtype [dims][, dtype [dims]]...``
SHAPES = re.compile(r"(?:(?P<name>\w+): )?(?P<items>(?:\w+ )?\[[^\]]*\](?:, (?:\w+ )?\[[^\]]*\])*)")
ITEM = re.compile(r"(?:(\w+) )?\[([^\]]*)\]")


def _comments(block: str) -> dict[int, str]:
    """Line → the text of its ``#`` comment (without the ``#``)."""
    tokens = tokenize.generate_tokens(io.StringIO(block).readline)
    return {t.start[0]: t.string[1:].strip() for t in tokens if t.type == tokenize.COMMENT}


def _shape_claim(comment: str) -> re.Match[str] | None:
    """The dtype/shape claim of a comment (what follows its last ``→``, before a ``;``)."""
    return SHAPES.fullmatch(comment.split(";")[0].split("→")[-1].strip())


def check_shapes(value: Any, claim: re.Match[str], where: str) -> None:
    """``value`` (one, or a tuple for several items) has the claimed dtypes and shapes."""
    items = ITEM.findall(claim["items"])
    values = value if isinstance(value, tuple) else (value,)
    assert len(values) == len(items), f"{where}: {len(items)} claimed, {len(values)} given"
    sizes: dict[str, int] = {}
    for v, (dtype, dims) in zip(values, items, strict=True):
        shape = tuple(getattr(v, "shape", ()))
        want = [d.strip() for d in dims.split(",")] if dims.strip() else []
        assert len(shape) == len(want), f"{where}: shape {shape}, the page says [{dims}]"
        for got, d in zip(shape, want, strict=True):
            if d.isdigit():
                assert got == int(d), f"{where}: shape {shape}, the page says [{dims}]"
            else:
                assert sizes.setdefault(d, got) == got, f"{where}: {d} is two sizes in {shape}"
        if dtype and dtype not in ("numpy", "one", "a"):
            have = str(getattr(v, "dtype", type(v).__name__)).removeprefix("torch.")
            kinds = {"float": "float", "int": "int"}
            ok = have.startswith(kinds[dtype]) if dtype in kinds else have == dtype
            assert ok, f"{where}: dtype {have}, the page says {dtype}"


class _Claims(ast.NodeTransformer):
    """Rewrites a block so that each line with a claim checks it: an expression's value,
    an assignment's targets, a loop's named variable on each pass."""

    def __init__(self, comments: dict[int, str]) -> None:
        self.comments = comments

    def _check(self, node: ast.AST, value: ast.expr) -> ast.Call:
        line = node.lineno  # type: ignore[attr-defined]
        return ast.Call(ast.Name("__claim__", ast.Load()), [ast.Constant(line), value], [])

    def _claim(self, node: ast.stmt) -> re.Match[str] | None:
        comment = self.comments.get(node.lineno)
        return _shape_claim(comment) if comment else None

    def visit_Expr(self, node: ast.Expr) -> ast.AST:
        if self._claim(node) and not _is_print(node):
            node.value = self._check(node, node.value)
        return node

    def visit_Assign(self, node: ast.Assign) -> Any:
        if not self._claim(node):
            return node
        targets = node.targets[0]
        load = ast.Tuple(
            [ast.Name(t.id, ast.Load()) for t in getattr(targets, "elts", [targets])],
            ast.Load(),
        )
        value = load.elts[0] if len(load.elts) == 1 else load
        return [node, ast.Expr(self._check(node, value))]

    def visit_For(self, node: ast.For) -> ast.AST:
        self.generic_visit(node)
        claim = self._claim(node)
        if claim and claim["name"]:
            node.body.insert(0, ast.Expr(self._check(node, ast.Name(claim["name"], ast.Load()))))
        return node


def _is_print(node: ast.stmt) -> bool:
    call = getattr(node, "value", None)
    return isinstance(call, ast.Call) and getattr(call.func, "id", None) == "print"


def run_block(block: str, namespace: dict[str, Any], name: str) -> None:
    """Run ``block`` in ``namespace``, checking what its comments claim (module docstring)."""
    comments = _comments(block)
    tree = _Claims(comments).visit(ast.parse(block))
    printed: dict[int, list[str]] = {}

    def claim(line: int, value: Any) -> Any:
        match = _shape_claim(comments[line])
        assert match is not None
        check_shapes(value, match, f"{name}, line {line}")
        return value

    def recorder(*args: Any, **kwargs: Any) -> None:
        frame = sys._getframe(1)
        if frame.f_code.co_filename == name:
            sep = kwargs.get("sep", " ")
            printed.setdefault(frame.f_lineno, []).append(sep.join(map(str, args)))
        print(*args, **kwargs)

    namespace.update(__claim__=claim, print=recorder)
    exec(compile(ast.fix_missing_locations(tree), name, "exec"), namespace)
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and _is_print(node) and node.lineno in comments:
            said = comments[node.lineno]
            pattern = ".*".join(re.escape(part) for part in said.split("…"))
            got = printed.get(node.lineno, [])
            assert got, f"{name}, line {node.lineno}: printed nothing, the page says {said}"
            assert all(re.fullmatch(pattern, g, re.S) for g in got), (
                f"{name}, line {node.lineno}: printed {got[0]!r}, the page says {said!r}"
            )


def _run(folder: Path) -> None:
    """A histofetch run of one record with one kept figure."""
    m = Manifest.load(folder, create=True)
    m.query = "lymph node metastasis"
    m.add_record(Record(id="pmid:1", pmid="1", title="T", year=2020, stage="filtered"))
    m.add_image(
        Image(id="pmid:1/fig1", record_id="pmid:1", path="images/pmid_1/fig1.png",
              sha256="a" * 64, width=900, height=700, source="package", kept=True)
    )  # fmt: skip
    m.save()
    m.close()


def test_the_page_has_blocks() -> None:
    assert len(BLOCKS) >= 6
    text = PAGE.read_text()
    fences = re.findall(r"^```(\w*)$", text, re.M)
    opened = fences[::2]  # every other fence opens a block
    assert len(BLOCKS) == sum(lang in ("python", "py") for lang in opened)
    claims = [c for b in BLOCKS for c in _comments(b).values() if _shape_claim(c)]
    assert len(claims) >= 5  # the page's dtype/shape claims are found, hence checked


def test_every_python_block_of_the_page_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _run(tmp_path / "runs" / "mine")
    namespace: dict[str, object] = {"__name__": "python_api_page"}
    for i, block in enumerate(BLOCKS):
        try:
            run_block(block, namespace, f"{PAGE.name} block {i + 1}")
        except Exception as exc:  # say which block, then the traceback
            raise AssertionError(f"{PAGE.name} block {i + 1} failed:\n{block}") from exc


@pytest.mark.parametrize(
    ("block", "said"),
    [
        ("print([1, 2, 3])  # [1, 2]", "printed '[1, 2, 3]', the page says '[1, 2]'"),
        ("print([1, 2, 3])  # [1, …]", None),
        ("if False:\n    print(1)  # 1", "printed nothing"),
        ("x = np.zeros((2, 3), np.uint8)  # uint8 [2, 4]", "shape (2, 3), the page says [2, 4]"),
        ("x = np.zeros((2, 3), np.uint8)  # int64 [2, N]", "dtype uint8, the page says int64"),
        ("a, b = np.zeros(2), np.zeros(3)  # float [N], float [M]", None),
        ("a, b = np.zeros(2), np.zeros(3)  # float [N], float [N]", "N is two sizes in (3,)"),
        ("a, b = np.zeros(2), np.zeros(3)  # float [N]", "1 claimed, 2 given"),
        ("np.zeros((4, 4))  # one [4, 4] → [N, N]", None),
        ("np.zeros((4, 5))  # one [4, 4] → [N, N]", "N is two sizes in (4, 5)"),
        ("for x in [np.zeros(3)]:  # x: float32 [3]\n    pass", "dtype float64"),
        ("x = 1  # a comment that claims nothing", None),
    ],
)
def test_the_page_runner_checks_what_comments_claim(block: str, said: str | None) -> None:
    """The runner only ran the blocks: a comment's ``# ['pcam-cnn']`` or ``# uint8 [64,
    96, 96, 3]`` could be false and the test still passed (and ```py blocks never ran)."""
    import numpy as np

    if said is None:
        run_block(block, {"np": np}, "page")
    else:
        with pytest.raises(AssertionError, match=re.escape(said)):
            run_block(block, {"np": np}, "page")


def test_train_config_and_the_training_snippet_say_time_budget_is_minutes() -> None:
    """The training page's library snippet was ``TrainConfig(model="cnn", time_budget=20)``:
    20 minutes, in a snippet, with the unit said nowhere near it."""
    from histomodels.config import TrainConfig

    assert "time_budget`` is in\n    **minutes**" in (TrainConfig.__doc__ or "")
    page = (PAGE.parent / "histomodels-training.md").read_text()
    assert "time_budget=20" not in page and "time_budget is in minutes" in page
    for name in ("README.md", "docs/index.md", "docs/architecture.md"):
        assert "python-api.md" in (PAGE.parents[1] / name).read_text(), name
