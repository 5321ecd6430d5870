"""docs/python-api.md stays true: every ```python (or ```py) block runs, in order, in one
namespace, in an empty folder holding a small histofetch run at ``runs/mine`` (the page's own
first block makes its synthetic patches; nothing from /work/shared is needed), and what its
comments say a line gives is what it gives:

- ``print(...)  # ['pcam-cnn']``: the printed text (``…`` stands for any text);
- ``x = ...  # uint8 [64, 96, 96, 3]`` (or ``a, b = ...  # uint8 [..], int64 [..]``, ``x: T =
  ...``, ``x += ...``, an expression ``f(x)  # [N, 96, 96, 3] → float [N]``, a loop's ``#
  x: uint8 [B, 96, 96, 3]``): the value's dtype (``float``/``int``: any of that kind;
  ``numpy``, ``one``, ``a``: any) and shape, a letter being any size (the same within one
  comment, both sides of ``→``). The side before ``→`` is the call's first argument.
  Prose may follow a claim after ``;``.

Any other comment is prose and claims nothing; but a comment (before any ``;``) holding a
``[``, ``]`` or ``→`` must be a whole claim on a statement the runner checks (one line; an
expression, an assignment to names, a ``for`` naming its variable), or the block fails
before it runs: a claim it cannot check is never passed silently."""

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


def page_blocks(text: str) -> list[str]:
    """The page's ```python and ```py blocks, in order."""
    return re.findall(r"^```(?:python|py)\n(.*?)^```$", text, re.M | re.S)


BLOCKS = page_blocks(PAGE.read_text())

#: one side of a claim: ``dtype [dims][, dtype [dims]]...`` (the dtype word optional)
SIDE = r"(?:\w+ )?\[[^\[\]]*\](?:, (?:\w+ )?\[[^\[\]]*\])*"
#: a comment's claim: ``[x: ][input → ]output``
SHAPES = re.compile(rf"(?:(?P<name>\w+): )?(?:(?P<input>{SIDE}) → )?(?P<items>{SIDE})")
ITEM = re.compile(r"(?:(\w+) )?\[([^\]]*)\]")
#: what makes a comment read as a claim
CLAIMISH = re.compile(r"[\[\]→]")


def _comments(block: str) -> dict[int, str]:
    """Line → the text of its ``#`` comment (without the ``#``)."""
    tokens = tokenize.generate_tokens(io.StringIO(block).readline)
    return {t.start[0]: t.string[1:].strip() for t in tokens if t.type == tokenize.COMMENT}


def _shape_claim(comment: str, where: str = "page") -> re.Match[str] | None:
    """The dtype/shape claim of a comment (before a ``;``), or None for prose; a comment that
    reads as a claim (a ``[``, ``]`` or ``→``) but is not a whole one fails."""
    text = comment.split(";")[0].strip()
    if not CLAIMISH.search(text):
        return None
    match = SHAPES.fullmatch(text)
    assert match is not None, (
        f"{where}: {comment!r} reads as a dtype/shape claim but is not one "
        "(`[x: ][dtype [dims] → ]dtype [dims][, ...][; prose]`); reword it as prose"
    )
    return match


def _print_lines(tree: ast.AST) -> tuple[set[int], set[int]]:
    """The first lines of the ``print(...)`` statements, and their other lines."""
    first: set[int] = set()
    rest: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and _is_print(node):
            first.add(node.lineno)
            rest.update(range(node.lineno + 1, (node.end_lineno or node.lineno) + 1))
    return first, rest


def block_claims(block: str, name: str) -> dict[int, re.Match[str]]:
    """Line → the claim of its comment, print lines aside (their comment is the text)."""
    first, rest = _print_lines(ast.parse(block))
    claims = {}
    for line, comment in _comments(block).items():
        assert line not in rest, (
            f"{name}, line {line}: a comment on a print's continuation line is not checked; "
            "put what it prints on the print's first line"
        )
        if line not in first and (claim := _shape_claim(comment, f"{name}, line {line}")):
            claims[line] = claim
    return claims


def check_shapes(
    value: Any, items_text: str, where: str, sizes: dict[str, int] | None = None
) -> None:
    """``value`` (one, or a tuple for several items) has the claimed dtypes and shapes;
    ``sizes`` holds what each letter stood for so far (both sides of one ``→``)."""
    items = ITEM.findall(items_text)
    values = value if isinstance(value, tuple) else (value,)
    assert len(values) == len(items), f"{where}: {len(items)} claimed, {len(values)} given"
    sizes = {} if sizes is None else sizes
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
    """Rewrites a block so that each line with a claim checks it: an expression's value (and
    its call's first argument, for an input side), an assignment's targets, a loop's named
    variable on each pass. A claim on any other statement, or on no statement's first line,
    fails (``unchecked``)."""

    def __init__(self, claims: dict[int, re.Match[str]], name: str) -> None:
        self.claims = claims
        self.name = name
        self.used: set[int] = set()

    def _fail(self, node: ast.stmt, why: str) -> None:
        raise AssertionError(f"{self.name}, line {node.lineno}: {why}")

    def _take(self, node: ast.stmt) -> re.Match[str] | None:
        claim = self.claims.get(node.lineno)
        if claim is None:
            return None
        self.used.add(node.lineno)
        if claim["name"] and not isinstance(node, ast.For):
            self._fail(node, "a `name:` claim is for a for loop's variable")
        return claim

    @staticmethod
    def _check(line: int, value: ast.expr, side: str = "out") -> ast.Call:
        args: list[ast.expr] = [ast.Constant(line), value, ast.Constant(side)]
        return ast.Call(ast.Name("__claim__", ast.Load()), args, [])

    def _input(self, node: ast.stmt, claim: re.Match[str], value: ast.expr | None) -> None:
        """Check the call's first argument against the claim's input side, if it has one."""
        if not claim["input"]:
            return
        if not (
            isinstance(value, ast.Call)
            and value.args
            and not isinstance(value.args[0], ast.Starred)
        ):
            self._fail(node, "a claim's input side (before →) needs a call with a first argument")
            return
        value.args[0] = self._check(node.lineno, value.args[0], "in")

    def _names(self, node: ast.stmt, target: ast.expr) -> ast.expr:
        """The target's names as one expression to check (a tuple for several)."""
        parts = target.elts if isinstance(target, (ast.Tuple, ast.List)) else [target]
        names = [ast.Name(t.id, ast.Load()) for t in parts if isinstance(t, ast.Name)]
        if len(names) != len(parts):
            self._fail(node, "a claim on an assignment to anything but names is not checked")
        return names[0] if len(names) == 1 else ast.Tuple(list(names), ast.Load())

    def visit_Expr(self, node: ast.Expr) -> ast.AST:
        if _is_print(node):
            return node
        if claim := self._take(node):
            self._input(node, claim, node.value)
            node.value = self._check(node.lineno, node.value)
        return node

    def visit_Assign(self, node: ast.Assign) -> Any:
        if not (claim := self._take(node)):
            return node
        if len(node.targets) != 1:
            self._fail(node, "a claim on a chained assignment (a = b = ...) is not checked")
        self._input(node, claim, node.value)
        return [node, ast.Expr(self._check(node.lineno, self._names(node, node.targets[0])))]

    def visit_AnnAssign(self, node: ast.AnnAssign) -> Any:
        if not (claim := self._take(node)):
            return node
        if node.value is None:
            self._fail(node, "a claim on an annotation without a value")
        self._input(node, claim, node.value)
        return [node, ast.Expr(self._check(node.lineno, self._names(node, node.target)))]

    def visit_AugAssign(self, node: ast.AugAssign) -> Any:
        if not (claim := self._take(node)):
            return node
        self._input(node, claim, node.value)
        return [node, ast.Expr(self._check(node.lineno, self._names(node, node.target)))]

    def visit_For(self, node: ast.For) -> ast.AST:
        self.generic_visit(node)
        if not (claim := self._take(node)):
            return node
        if not claim["name"] or claim["input"]:
            self._fail(node, "a for loop's claim names one loop variable: `# x: dtype [dims]`")
        bound = {n.id for n in ast.walk(node.target) if isinstance(n, ast.Name)}
        if claim["name"] not in bound:
            self._fail(node, f"{claim['name']} is not a variable of this loop")
        node.body.insert(0, ast.Expr(self._check(node.lineno, ast.Name(claim["name"], ast.Load()))))
        return node

    def unchecked(self) -> None:
        for line in sorted(set(self.claims) - self.used):
            raise AssertionError(
                f"{self.name}, line {line}: a claim the runner does not check (a continuation "
                "line, or a with/if/def/... line): move it or reword it as prose"
            )


def _is_print(node: ast.stmt) -> bool:
    call = getattr(node, "value", None)
    return isinstance(call, ast.Call) and getattr(call.func, "id", None) == "print"


def prepare_block(block: str, name: str) -> tuple[ast.Module, dict[int, re.Match[str]]]:
    """The block rewritten to check its claims, and the claims; fails on a claim it cannot
    check (module docstring), before anything runs."""
    claims = block_claims(block, name)
    rewriter = _Claims(claims, name)
    tree = rewriter.visit(ast.parse(block))
    rewriter.unchecked()
    return ast.fix_missing_locations(tree), claims


def run_block(block: str, namespace: dict[str, Any], name: str) -> None:
    """Run ``block`` in ``namespace``, checking what its comments claim (module docstring)."""
    tree, claims = prepare_block(block, name)
    comments = _comments(block)
    printed: dict[int, list[str]] = {}
    pending: dict[int, dict[str, int]] = {}

    def claim(line: int, value: Any, side: str) -> Any:
        where = f"{name}, line {line}"
        if side == "in":
            pending[line] = {}
            check_shapes(value, claims[line]["input"], f"{where} (before →)", pending[line])
        else:
            check_shapes(value, claims[line]["items"], where, pending.pop(line, {}))
        return value

    def recorder(*args: Any, **kwargs: Any) -> None:
        frame = sys._getframe(1)
        if frame.f_code.co_filename == name:
            sep = kwargs.get("sep", " ")
            printed.setdefault(frame.f_lineno, []).append(sep.join(map(str, args)))
        print(*args, **kwargs)

    namespace.update(__claim__=claim, print=recorder)
    exec(compile(tree, name, "exec"), namespace)
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and _is_print(node) and node.lineno in comments:
            said = comments[node.lineno]
            pattern = ".*".join(re.escape(part) for part in said.split("…"))
            got = printed.get(node.lineno, [])
            assert got, f"{name}, line {node.lineno}: printed nothing, the page says {said}"
            assert all(re.fullmatch(pattern, g, re.S) for g in got), (
                f"{name}, line {node.lineno}: printed {got[0]!r}, the page says {said!r}"
            )


def run_page(text: str, folder: Path, label: str = PAGE.name) -> None:
    """Every block of the page, in order, in ``folder`` (the current folder), after every
    block's claims are found checkable."""
    blocks = page_blocks(text)
    for i, block in enumerate(blocks):
        prepare_block(block, f"{label} block {i + 1}")
    _run(folder / "runs" / "mine")
    namespace: dict[str, object] = {"__name__": "python_api_page"}
    for i, block in enumerate(blocks):
        try:
            run_block(block, namespace, f"{label} block {i + 1}")
        except Exception as exc:  # say which block, then the traceback
            raise AssertionError(f"{label} block {i + 1} failed:\n{block}") from exc


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
    claims = [c for i, b in enumerate(BLOCKS) for c in block_claims(b, f"block {i + 1}").values()]
    assert len(claims) >= 5  # the page's dtype/shape claims are found, hence checked
    assert any(c["input"] for c in claims)  # and an input side (before →)


def test_every_python_block_of_the_page_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    run_page(PAGE.read_text(), tmp_path)


@pytest.mark.parametrize(
    ("block", "said"),
    [
        ("print([1, 2, 3])  # [1, 2]", "printed '[1, 2, 3]', the page says '[1, 2]'"),
        ("print([1, 2, 3])  # [1, …]", None),
        ("if False:\n    print(1)  # 1", "printed nothing"),
        ("print(\n    1,\n)  # 1", "a comment on a print's continuation line"),
        ("x = np.zeros((2, 3), np.uint8)  # uint8 [2, 4]", "shape (2, 3), the page says [2, 4]"),
        ("x = np.zeros((2, 3), np.uint8)  # int64 [2, N]", "dtype uint8, the page says int64"),
        ("a, b = np.zeros(2), np.zeros(3)  # float [N], float [M]", None),
        ("a, b = np.zeros(2), np.zeros(3)  # float [N], float [N]", "N is two sizes in (3,)"),
        ("a, b = np.zeros(2), np.zeros(3)  # float [N]", "1 claimed, 2 given"),
        ("a = np.zeros((4, 4))\nnp.ones_like(a)  # one [N, N] → [N, N]", None),
        ("a = np.zeros((4, 5))\nnp.ones_like(a)  # one [4, 5] → [N, N]",
         "N is two sizes in (4, 5)"),
        ("a = np.zeros((4, 5))\nnp.ones_like(a)  # one [4, 4] → [4, 5]",
         "(before →): shape (4, 5)"),
        ("a = np.zeros(64)\nb = np.resize(a, 7)  # float [N] → float [N]",
         "N is two sizes in (7,)"),
        ("b = np.zeros(3)[:1]  # [3] → [1]", "input side (before →) needs a call"),
        ("for x in [np.zeros(3)]:  # x: float32 [3]\n    pass", "dtype float64"),
        ("for x in [np.zeros(3)]:  # float [4]\n    pass", "a for loop's claim names one"),
        ("for x in [np.zeros(3)]:  # y: float [3]\n    pass", "y is not a variable of this loop"),
        ("x: object = np.zeros(3)  # float [4]", "shape (3,), the page says [4]"),
        ("x = np.zeros(3)\nx += 1  # int [3]", "dtype float64, the page says int"),
        ("x = np.zeros(\n    3,  # float [4]\n)", "line 2: a claim the runner does not check"),
        ("x = np.zeros(3)  # float [3] zeros", "reads as a dtype/shape claim but is not one"),
        ("x = np.zeros(3)  # float [3]; three zeros [sic]", None),
        ("x = np.zeros(3)  # x: float [4]", "a `name:` claim is for a for loop's variable"),
        ("import contextlib\nwith contextlib.nullcontext(1) as x:  # x: uint8 [64]\n    pass",
         "line 2: a claim the runner does not check"),
        ("d = {}\nd['a'] = np.zeros(3)  # float [4]", "assignment to anything but names"),
        ("x = 1  # a comment that claims nothing", None),
    ],
)  # fmt: skip
def test_the_page_runner_checks_what_comments_claim(block: str, said: str | None) -> None:
    """The runner only ran the blocks: a comment's ``# ['pcam-cnn']`` or ``# uint8 [64,
    96, 96, 3]`` could be false and the test still passed (and ```py blocks never ran); then
    a claim on a statement it did not check, or not quite in its grammar, passed unseen."""
    import numpy as np

    if said is None:
        run_block(block, {"np": np}, "page")
    else:
        with pytest.raises(AssertionError, match=re.escape(said)):
            run_block(block, {"np": np}, "page")


#: (a line of the page, a false claim put in its place, what the failure says): review 43's
#: false claims, each of which the runner passed.
MUTATIONS = [
    (  # a for loop's claim without `name:` was skipped
        "in DataLoader(ds, batch_size=32):  # x: uint8 [B, 96, 96, 3]",
        "in DataLoader(ds, batch_size=32):  # float [B]",
        "a for loop's claim names one loop variable",
    ),
    (  # an annotated assignment's claim was skipped
        "tumour = probs >= pred.threshold",
        "tumour: np.ndarray = probs >= pred.threshold  # float [7]",
        "block 2, line 9: shape (64,), the page says [7]",
    ),
    (  # an augmented assignment's claim was skipped
        "tumour = probs >= pred.threshold",
        "tumour = probs >= pred.threshold\ntumour &= True  # float [N]",
        "block 2, line 10: dtype bool, the page says float",
    ),
    (  # a claim on a continuation line was never looked at
        "pred.probabilities([Image.fromarray(im) for im in images[:4]])  # a list of images",
        "pred.probabilities(\n    [Image.fromarray(im) for im in images[:4]],  # float [7]\n)",
        "line 14: a claim the runner does not check",
    ),
    (  # a claim with a word after it was prose
        "# uint8 [64, 96, 96, 3], int64 [64]",
        "# uint8 [64, 96, 96, 4], int64 [64] patches",
        "reads as a dtype/shape claim but is not one",
    ),
    (  # a claim on a with line was skipped
        'as run:  # or "runs/mine"',
        "as run:  # run: uint8 [64]",
        "a claim the runner does not check",
    ),
    (  # the input side of → was dropped: 7 scores for 64 images passed
        "probs = pred.probabilities(images)  ",
        "probs = (lambda a: pred.probabilities(a)[:7])(images)  ",
        "N is two sizes in (7,)",
    ),
]


@pytest.mark.parametrize(("line", "false", "said"), MUTATIONS)
def test_a_false_claim_on_a_copy_of_the_page_fails(
    line: str, false: str, said: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = PAGE.read_text()
    assert text.count(line) == 1, line
    page = tmp_path / "python-api.md"
    page.write_text(text.replace(line, false))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AssertionError) as failed:
        run_page(page.read_text(), tmp_path, "mutated")
    chain = [str(failed.value)]
    cause = failed.value.__cause__
    while cause is not None:
        chain.append(str(cause))
        cause = cause.__cause__
    assert any(said in message for message in chain), chain


def test_train_config_and_the_training_snippet_say_time_budget_is_minutes() -> None:
    """The training page's library snippet was ``TrainConfig(model="cnn", time_budget=20)``:
    20 minutes, in a snippet, with the unit said nowhere near it."""
    from histomodels.config import TrainConfig

    assert "time_budget`` is in\n    **minutes**" in (TrainConfig.__doc__ or "")
    page = (PAGE.parent / "histomodels-training.md").read_text()
    assert "time_budget=20" not in page and "time_budget is in minutes" in page
    for name in ("README.md", "docs/index.md", "docs/architecture.md"):
        assert "python-api.md" in (PAGE.parents[1] / name).read_text(), name
