"""The command lines the docs show parse: every ``histofetch …`` / ``histomodels …`` line in
a README.md or docs/*.md code block, fenced (also indented in a list item) or indented (and
every inline code span starting with one, also one wrapped over two lines) names
commands that exist, options that exist for that command, and, where it writes a value
that is not a placeholder (``N``, ``TEST``, ``K/N``, ``...``), a value the option takes
(a choice, a range). Options are looked up with the CLIs' own parser
(``make_parser(ctx).parse_args``: nothing runs), so a renamed or removed option fails here
instead of in a reader's terminal. Synopsis brackets (``[--tta]``) and alternatives
(``a|b``, ``--heatmaps DIR | --no-heatmaps``) are read as the options they name; a
command is cut from the next at ``&&``, ``;`` and at a pipe into another command."""

from __future__ import annotations

import functools
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: a value that stands for one: RUN, TEST, K/N, <id>, ..., a shell variable ($K, ${K}/8)
#: (checked for shape only)
PLACEHOLDER = re.compile(r"^[A-Z][A-Z_/]*$|\.\.\.|…|^<|\$")
#: a fenced code block, also one indented in a list item (its closing fence as indented)
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>\w*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S
)
#: an inline code span starting with a CLI's name; it may wrap onto the next line (not
#: over a blank one)
SPAN = re.compile(r"`((?:histofetch|histomodels)\s(?:[^`\n]|\n(?![ \t]*\n))*)`")


@functools.cache
def _roots() -> dict[str, Any]:
    from histofetch.cli import app as fetch_app
    from histomodels.cli import app as models_app

    return {
        "histofetch": typer.main.get_command(fetch_app),
        "histomodels": typer.main.get_command(models_app),
    }


def doc_lines(text: str) -> Iterator[tuple[int, str, bool]]:
    """(line number, text, inline) of each line of a non-Python code block (a
    ``\\``-continued command joined into one) and of each inline code span that starts with
    a CLI's name. An inline span may name an option without its value (``eval --manifest``:
    the option meant in prose); a code block's line is a command to type."""
    fences = []
    for m in FENCE.finditer(text):
        fences.append(m.span())
        if m["lang"] in ("python", "py", "mermaid", "text"):
            continue
        n = text[: m.start()].count("\n") + 2
        command, start = "", n  # a command continued with `\` is one line, numbered by its first
        for i, line in enumerate(m["body"].splitlines()):
            start = start if command else n + i
            line = line.removeprefix(m["indent"])  # a list item's block: its indent is no code
            command += line.strip() if command else line
            if command.endswith("\\"):
                command = command[:-1] + " "
                continue
            yield start, command, False
            command = ""
    # an indented code block's command (four spaces, outside a fenced block)
    indented = r"^ {4,}((?:torchrun .*)?histo(?:fetch|models) (?:.*\\\n)*.*)$"
    for m in re.finditer(indented, text, re.M):
        if not any(a <= m.start() < b for a, b in fences):
            yield text[: m.start()].count("\n") + 1, re.sub(r"\\\n\s*", " ", m.group(1)), False
    for m in SPAN.finditer(text):
        span = re.sub(r"\s*\n\s*", " ", m.group(1))  # wrapped: one line, as it is read
        yield text[: m.start()].count("\n") + 1, span.replace("\\|", "|"), True


def commands(line: str) -> list[str]:
    """The commands of one line: cut at ``&&``, ``;``, ``──`` (a diagram's arrow) and at a
    pipe into another command (``| histofetch …``, ``| jq`` outside brackets); ``[A | B]``
    and ``--heatmaps DIR | --no-heatmaps`` are alternatives of one command, kept together."""
    parts, start = [], 0
    for m in re.finditer(r"&&|;|──|\|(?=\s)", line):
        if m.group() == "|":
            depth = line[: m.start()].count("[") - line[: m.start()].count("]")
            after = line[m.end() :].lstrip()
            to_cli = re.match(r"(?:\S*/)?histo(?:fetch|models)\b", after)
            if not (to_cli or (depth <= 0 and not after.startswith("-"))):
                continue  # an alternative
        parts.append(line[start : m.start()])
        start = m.end()
    return [*parts, line[start:]]


def problems(line: str, roots: dict[str, Any], inline: bool = False) -> list[str]:
    """What is wrong with the CLI command lines in one line of a page ([] when nothing)."""
    found = []
    line = re.sub(r"\s#\s.*$", "", line)  # a shell comment
    for part in commands(line):
        m = re.search(r"(?:^|\s|/)(histofetch|histomodels)(\s.*)?$", part)
        if not m:
            continue
        try:
            tokens = shlex.split(m.group(2) or "")
        except ValueError as e:
            found.append(f"cannot be split as a shell line ({e})")
            continue
        tokens = [t.strip("[]") for t in tokens]
        tokens = [t for t in tokens if t and t != "|"]
        # `--bf16/--no-bf16`: a flag and its negation, each an option
        tokens = [u for t in tokens for u in (t.split("/") if t.startswith("--") else [t])]
        cmd, path = roots[m.group(1)], [m.group(1)]
        while hasattr(cmd, "commands") and tokens and not tokens[0].startswith("-"):
            name = re.split(r"[|/]", tokens[0])[0]  # `train|finetune`, `eval/predict`
            if name not in cmd.commands:
                found.append(f"{' '.join(path)} has no command {name!r}")
                break
            cmd, tokens = cmd.commands[name], tokens[1:]
            path.append(name)
        else:
            if hasattr(cmd, "commands") and not tokens:
                continue  # a group named alone (`histomodels data`)
            if inline and tokens and tokens[-1].startswith("-"):
                tokens.append("VALUE")  # the option named in prose; a flag ignores it
            found += _option_problems(cmd, " ".join(path), tokens)
    return found


def _option_problems(cmd: Any, prog: str, tokens: list[str]) -> list[str]:
    args = [t if t.startswith("-") else t.split("|")[0] for t in tokens]
    # a context in which nothing is checked or run, then the command's own parser on the
    # words, which tells unknown options and options missing their value
    ctx = cmd.make_context(prog, [], resilient_parsing=True)
    ctx.resilient_parsing = False
    try:
        cmd.make_parser(ctx).parse_args(args)
    except Exception as e:  # click's NoSuchOption, BadOptionUsage, …
        return [f"{prog}: {e}"]
    options = {
        o: p
        for p in cmd.params
        if p.param_type_name == "option"
        for o in (*p.opts, *p.secondary_opts)
    }
    found, i = [], 0
    while i < len(tokens):
        name, eq, value = tokens[i].partition("=")
        p = options.get(name)
        if p is not None and not p.is_flag:
            if not eq:
                i += 1
                value = tokens[i] if i < len(tokens) else ""
            for v in value.split("|"):
                if v and not PLACEHOLDER.search(v):
                    try:
                        p.process_value(ctx, [v] if p.multiple else v)
                    except Exception as e:
                        found.append(f"{prog} {name} {v!r}: {e}")
        i += 1
    return found


def test_every_command_line_in_the_docs_parses() -> None:
    roots = _roots()
    found, checked = [], 0
    for page in PAGES:
        for n, line, inline in doc_lines(page.read_text(encoding="utf-8")):
            if re.search(r"\b(histofetch|histomodels)\b", line):
                checked += 1
                rel = page.relative_to(ROOT)
                told = problems(line, roots, inline)
                found += [f"{rel}:{n}: {p}\n    {line.strip()}" for p in told]
    assert checked > 200, checked  # the pages were read
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    ("line", "told"),
    [
        ("histofetch filter --run R --purpel 0.3", "No such option: --purpel"),
        ("histomodels eval X --data T [--threshold-rule sensitiv|youden]", "sensitiv"),
        ("histomodels predict X --max-pixels -3", "--max-pixels"),
        ("histofetch fetch --run R", "has no command 'fetch'"),
        ("histomodels data infos x.h5", "has no command 'infos'"),
        ("x && histofetch status --run R --jsn   # people", "--jsn"),
        ("histofetch search Q --db pubmedd", "pubmedd"),
        ("histomodels report runs/cnn --out", "'--out' requires an argument"),
        # after an alternative's bar (all after `| ` was dropped)
        ("histomodels predict X --out CSV [--heatmaps DIR | --no-heatmapz]", "--no-heatmapz"),
        ("histomodels predict X --out C --heatmaps DIR | --no-heatmapz", "--no-heatmapz"),
        ("histofetch status --run R | histofetch merge A --outt B", "--outt"),
    ],
)
def test_a_wrong_line_is_told(line: str, told: str) -> None:
    found = problems(line, _roots())
    assert found and told in " ".join(found), found


def test_placeholders_and_synopsis_notation_pass() -> None:
    roots = _roots()
    for line in (
        "histofetch search QUERY --run DIR [--db pubmed|pmc] [--shard K/N] [--max N]",
        "histomodels predict CKPT PATHS... --out CSV [--heatmaps DIR | --no-heatmaps] [--tta]",
        "histomodels label --manifest RUN --set 'pmid:1/p4=metastasis' --set ID=n",
        "histomodels train|finetune --stain-norm macenko [--bf16/--no-bf16]",
        'histomodels report RUNS... --out DIR [--title "..."]',
        "histofetch search Q --run R [--api-key KEY | NCBI_API_KEY=KEY] [--max N]",
        "histofetch status --run R --json | jq -r .stages",  # a pipe: jq's own options
        "histofetch run Q --shard ${SLURM_ARRAY_TASK_ID}/8 --run shards/$K",
    ):
        assert problems(line, roots) == [], line
    assert problems("histomodels eval --manifest", roots, inline=True) == []


def test_lines_are_taken_from_fenced_and_indented_blocks_and_inline_spans() -> None:
    page = (
        "Run `histofetch status --run R` or:\n\n"
        "```bash\nhistomodels eval X \\\n    --data T   # test\nhistomodels report R\n```\n\n"
        "    histomodels train --data T \\\n        --out R\n\n"
        "```python\nprint('histomodels predict --nope')\n```\n"
    )
    got = [(n, " ".join(line.split()), inline) for n, line, inline in doc_lines(page)]
    assert got == [
        (4, "histomodels eval X --data T # test", False),
        (6, "histomodels report R", False),
        (9, "histomodels train --data T --out R", False),
        (1, "histofetch status --run R", True),
    ], got


def test_a_wrapped_span_and_a_list_items_fence_are_read() -> None:
    """An inline span wrapped onto the next line and a fenced block indented in a list item
    were never read: a wrong option in either passed."""
    page = (
        "* Shards: run `histomodels demo --outt DIR\n  [--minutes 2]` or:\n\n"
        "  ```bash\n  histofetch status --run R \\\n      --jsn\n  histofetch merge A --out B\n"
        "  ```\n\n"
        "`histofetch\nstatus --run R` and `histofetch status` `--run\n\nR` (not a span)\n"
    )
    got = [(n, " ".join(line.split()), inline) for n, line, inline in doc_lines(page)]
    assert got == [
        (5, "histofetch status --run R --jsn", False),
        (7, "histofetch merge A --out B", False),
        (1, "histomodels demo --outt DIR [--minutes 2]", True),
        (10, "histofetch status --run R", True),
        (11, "histofetch status", True),
    ], got
    roots = _roots()
    assert "--jsn" in " ".join(problems(got[0][1], roots))
    assert "--outt" in " ".join(problems(got[2][1], roots, inline=True))
