"""The READMEs are tested: their command lines parse, their set-up is two commands, their figures
say which command produced them.

Every ``python -m MODULE ...`` line of README.md and benchmarks/README.md (in code blocks, with
their ``\\`` continuation lines, and in inline code) is parsed by that command's own argparse
parser, built without running the command: the module's ``main`` is called with
``ArgumentParser.parse_args`` intercepted.
"""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = ("README.md", "docs/training.md", "docs/serving.md", "docs/operations.md")  # the README, split
READMES = (*PAGES, "benchmarks/README.md")


@dataclass(frozen=True)
class Command:
    readme: str
    line: int
    text: str  # one logical line: continuations joined, comment removed

    @property
    def words(self) -> list[str]:
        words = shlex.split(self.text.replace("[", "").replace("]", ""), comments=True)
        while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):  # KERAS_BACKEND=jax python ...
            words.pop(0)
        return words

    def __str__(self) -> str:
        return f"{self.readme}:{self.line}: {self.text}"


def code_blocks(text: str) -> list[tuple[int, list[str]]]:
    """(first line number, lines) of every fenced code block."""
    blocks, current, start = [], None, 0
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            if current is None:
                current, start = [], number + 1
            else:
                blocks.append((start, current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def commands(readme: str) -> list[Command]:
    """Every ``python -m`` command line of ``readme``: code blocks, then inline code."""
    text = (REPO / readme).read_text(encoding="utf-8")
    found = []
    for start, lines in code_blocks(text):
        logical, first = "", None
        for offset, line in enumerate(lines):
            if first is None:
                first = start + offset
            stripped = line.strip()
            if stripped.endswith("\\") and "#" not in stripped.split("\\")[0][-1:]:
                logical += stripped[:-1] + " "
                continue
            logical += stripped
            if re.search(r"(^|\s|\$ )python3? -m \w", logical.split("#")[0]):
                found.append(Command(readme, first, logical[logical.index("python") :]))
            logical, first = "", None
    outside = re.sub(r"```.*?```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    for match in re.finditer(r"`(?:taskset -c \S+ )?(python3? -m [^`]+)`", outside):
        line = outside.count("\n", 0, match.start()) + 1
        found.append(Command(readme, line, " ".join(match.group(1).split())))
    return found


ALL = [command for readme in READMES for command in commands(readme)]


class Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__()
        self.parser = parser


class Refused(Exception):
    pass


def parser_of(module: str, argv: list[str], monkeypatch) -> argparse.ArgumentParser:
    """The parser ``python -m module argv`` parses with, built by the module's own ``main``."""

    def capture(self, args=None, namespace=None):
        raise Captured(self)

    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", capture)
        patch.setattr(argparse.ArgumentParser, "parse_known_args", capture)
        main = importlib.import_module("training.__main__" if module == "training" else module).main
        with pytest.raises(Captured) as captured:
            main(argv)
    return captured.value.parser


def test_the_readmes_hold_commands():
    modules = {c.words[2] for c in ALL}
    assert {"training", "benchmarks.load", "benchmarks.raw", "benchmarks.reliability"} <= modules
    assert len(ALL) > 40
    assert any("--time-limit 7.5" in c.text for c in ALL)  # a continuation line joined


@pytest.mark.parametrize("command", ALL, ids=str)
def test_every_command_line_parses(command, monkeypatch):
    words = command.words
    assert words[:2] in (["python", "-m"], ["python3", "-m"]), command
    module, argv = words[2], [w for w in words[3:] if w != "..."]
    if module != "training" and not argv:
        importlib.import_module(module)  # a mention of the command: it exists
        return
    parser = parser_of(module, argv[:1] if module == "training" else argv, monkeypatch)
    if module == "training" and len(argv) == 1 and not command.text.startswith("python -m training zoo"):
        return  # a mention (`python -m training optimize`): the sub-command exists (parsed above)

    if "--help" in argv or "-h" in argv:
        return
    placeholders = [w for w in argv if re.fullmatch(r"[A-Z][A-Z0-9_:]*|.*<[^>]*>.*", w)]  # NAME, runs/<run>

    def refuse(self, message):
        raise Refused(f"{self.prog}: {message}")

    monkeypatch.setattr(argparse.ArgumentParser, "error", refuse)
    try:
        parser.parse_args(argv)
    except Refused as error:
        abbreviated = "..." in words
        if abbreviated and "the following arguments are required" in str(error):
            return
        if not any("invalid" in str(error) and f"'{word}'" in str(error) for word in placeholders):
            raise AssertionError(f"{command}\n  {error}") from None


def test_two_commands_set_up_a_fresh_machine():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    first = next(lines for _, lines in code_blocks(section))
    assert [line.split("#")[0].strip() for line in first if line.strip()] == ["make serve", "make test"]
    assert ". .venv/bin/activate" in section  # the README's other commands run in that venv
    assert "BENTOML_PORT" in section


# --------------------------------------------------------------------------- figures

# A measured figure: a duration, a rate or a size (not a version, a date, a parameter count).
FIGURE = re.compile(r"\b\d[\d,.]*\s?(?:ms|s|images/s|requests/s|MiB|MB|KB|KiB)\b")
# What names where a figure comes from: a command, a test, a results file, a report.
SOURCE = re.compile(
    r"python3? -m \w|make [\w-]+|bentoml serve|docker image inspect|tests/test_\w+\.py|wc -c"
    r"|benchmarks/results/|docs/[\w/.-]+\.(?:md|csv|png)|metadata\.json|training/scripts/"
    r"|no script"  # said in so many words: measured by hand, nothing to rerun
)
# Paragraphs whose figures are settings or inputs, not measurements.
NOT_MEASURED = ("**Settings**", "**Slow clients and killed workers.**")


def sections(text: str) -> list[tuple[str, list[str]]]:
    """(heading, paragraphs) per section; a code block, a table or a list item is a paragraph."""
    out: list[tuple[str, list[str]]] = [("", [])]
    block: list[str] = []
    fence = False

    def flush():
        if block:
            out[-1][1].append("\n".join(block))
            block.clear()

    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            block.append(line)
            if fence:
                flush()
            fence = not fence
            continue
        if fence:
            block.append(line)
        elif line.startswith("#"):
            flush()
            out.append((line.strip("# "), []))
        elif not line.strip():
            flush()
        else:
            block.append(line)
    flush()
    return out


def unattributed(readme: str) -> list[str]:
    """Paragraphs that quote a measured figure with no source in them, in the paragraph before, or
    in a code block of their section above them."""
    problems = []
    for heading, paragraphs in sections((REPO / readme).read_text(encoding="utf-8")):
        paragraphs = [p if p.startswith("```") else " ".join(p.split()) for p in paragraphs]
        for i, paragraph in enumerate(paragraphs):
            if paragraph.startswith(("```", *NOT_MEASURED)) or not FIGURE.search(paragraph):
                continue
            if SOURCE.search(paragraph) or any(SOURCE.search(p) for p in paragraphs[max(0, i - 2) : i]):
                continue  # named in it, or in the two paragraphs (a table, its caption) before it
            after = paragraphs[i + 1 : i + 2]
            if any(p.startswith("```") and "python" in p for p in paragraphs[:i] + after):
                continue  # the section's command, in a code block above it or right after it
            problems.append(f"{readme} [{heading}]: {paragraph[:160]!r}")
    return problems


@pytest.mark.parametrize("readme", READMES)
def test_every_figure_names_the_command_that_produced_it(readme):
    assert unattributed(readme) == []


def test_the_stale_figures_of_issue_25_are_gone():
    readme = "\n".join((REPO / page).read_text(encoding="utf-8") for page in PAGES)
    benchmarks = (REPO / "benchmarks/README.md").read_text(encoding="utf-8")
    assert "8.2 s vs 7.5 s" not in readme and "961 vs 960 MiB" not in readme  # /ui on TensorFlow
    assert "lent for an hour" not in readme and "30 minutes went" not in readme  # contradicted each other
    assert "22 ms against 13.7 ms" not in readme  # no command produced it
    assert "Where the time goes now (session 3" not in benchmarks  # TensorFlow's, not today's
    # The batch-1 figures of the default model: TensorFlow's, so the command says --runtime tensorflow.
    assert "--model imagenette --runtime tensorflow --batch-sizes 1 --repeats 100" in readme
    # optimize does not pin itself: one core means taskset.
    assert "(one core, 1,420 test images)" not in readme
    assert "`taskset -c 1 python -m training optimize models/imagenette/2`" in readme
    assert "runs/gpu/runs/" in readme.split("python -m training evaluate runs/gpu/runs")[0]  # explained


def headings() -> set[str]:
    """The READMEs' headings and bold paragraph labels (**Try it in the browser.**)."""
    found = set()
    for readme in READMES:
        text = (REPO / readme).read_text(encoding="utf-8")
        found |= {line.strip("# ").strip() for line in text.splitlines() if line.startswith("## ")}
        found |= {line.strip("# ").strip() for line in text.splitlines() if line.startswith("### ")}
        found |= {" ".join(label.split()) for label in re.findall(r"\*\*([^*]+)\*\*", text)}
    return found


def test_references_to_readme_sections_exist():
    """``README, "Containers"`` in code and configuration names a heading of the READMEs."""
    known = headings()
    missing = []
    for path in [*REPO.glob("*.toml"), REPO / "Makefile", *REPO.glob("*.yaml"), *REPO.glob("*/**/*.py")]:
        if ".venv" in path.parts or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for match in re.finditer(r'README(?:\.md)?,? "([^"]+)"', text):
            if not any(heading.startswith(" ".join(match.group(1).split())) for heading in known):
                missing.append(f"{path.relative_to(REPO)}: {match.group(0)}")
    assert missing == []
