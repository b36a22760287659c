"""The README and the docs pages are tested: their command lines parse, their set-up is two
commands, their links resolve, every page under docs/ is reachable from the README, and their
figures say which command produced them.

Every ``python -m MODULE ...`` line of README.md, the docs pages and benchmarks/README.md (in code
blocks, with their ``\\`` continuation lines, and in inline code) is parsed by that command's own
argparse parser, built without running the command: the module's ``main`` is called with
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
READMES = (*PAGES, "benchmarks/README.md")  # written by hand: each figure names its command nearby
GENERATED = ("docs/performance.md", "docs/compare/results.md")  # written by a command its header names
DOCUMENTS = (*READMES, "docs/design.md", *GENERATED, "deploy/prometheus/README.md")


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


ALL = [command for readme in DOCUMENTS for command in commands(readme)]


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
    ci = [line.strip() for line in (REPO / ".ci/run").read_text().splitlines() if line.strip()]
    assert ci[-1] == "make test"  # CI runs exactly the README's test command


def test_the_readme_is_a_front_door():
    """Short: what it is, the two commands, the API and the protocols in brief, links to the rest."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) < 300
    level2 = [line[3:].strip() for line in text.splitlines() if line.startswith("## ")]
    assert level2[0] == "Two commands" and {"The API", "Protocols", "Documentation"} <= set(level2)


def test_every_docs_page_is_listed():
    """A new page under docs/ is sorted here: hand-written (its figures cite commands) or generated."""
    pages = {str(path.relative_to(REPO)) for path in (REPO / "docs").rglob("*.md")}
    assert pages == {page for page in DOCUMENTS if page.startswith("docs/")}


# --------------------------------------------------------------------------- links


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text (links as their text) lower-cased, punctuation
    dropped, spaces as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of ``page``'s headings (a repeated one gets -1, -2, ... as on GitHub)."""
    found: set[str] = set()
    text = (REPO / page).read_text(encoding="utf-8")
    outside = re.sub(r"```.*?```", "", text, flags=re.S)
    for match in re.finditer(r"^#{1,6} (.+)$", outside, flags=re.M):
        anchor, n = slug(match.group(1)), 0
        while (anchor if n == 0 else f"{anchor}-{n}") in found:
            n += 1
        found.add(anchor if n == 0 else f"{anchor}-{n}")
    return found


def links(page: str) -> list[tuple[int, str]]:
    """(line, target) of every Markdown link and image of ``page`` outside code."""
    text = (REPO / page).read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", lambda m: " " * len(m.group(0)), text)
    return [
        (text.count("\n", 0, match.start()) + 1, match.group(1))
        for match in re.finditer(r"\]\(([^)\s]+)\)", text)
    ]


def broken_links(page: str) -> list[str]:
    problems = []
    for line, target in links(page):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        path, _, anchor = target.partition("#")
        resolved = ((REPO / page).parent / path).resolve() if path else REPO / page
        if not resolved.exists() or REPO not in [resolved, *resolved.parents]:
            problems.append(f"{page}:{line}: {target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved.relative_to(REPO)):
            problems.append(f"{page}:{line}: {target} (no heading #{anchor} there)")
    return problems


def test_slugs_are_githubs():
    assert slug("Which architecture?") == "which-architecture"
    assert (
        slug("Fast CPU forms: `python -m training optimize`") == "fast-cpu-forms-python--m-training-optimize"
    )
    assert slug("Results on Imagenette (2 CPU cores, 7 minutes per architecture)") == (
        "results-on-imagenette-2-cpu-cores-7-minutes-per-architecture"
    )
    assert slug("Alerts ([alerting-rules.yml](alerting-rules.yml))") == "alerts-alerting-rulesyml"


@pytest.mark.parametrize("page", DOCUMENTS)
def test_every_link_resolves(page):
    """Relative links point at files of the repository, and their anchors at headings there."""
    assert broken_links(page) == []


def test_broken_links_are_found(tmp_path, monkeypatch):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs/a.md").write_text("# A\n\n## Two words\n")
    (tmp_path / "README.md").write_text(
        "[ok](docs/a.md#two-words) [gone](docs/b.md) [no anchor](docs/a.md#three) [up](../x.md)"
        " `[code](docs/c.md)` [web](https://example.org/none)\n"
    )
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    assert broken_links("README.md") == [
        "README.md:1: docs/b.md (no such file)",
        "README.md:1: docs/a.md#three (no heading #three there)",
        "README.md:1: ../x.md (no such file)",
    ]


def test_every_docs_page_is_reachable_from_the_readme():
    seen, todo = set(), ["README.md"]
    while todo:
        page = todo.pop()
        if page in seen:
            continue
        seen.add(page)
        for _, target in links(page):
            path = target.partition("#")[0]
            if path.endswith(".md") and not re.match(r"[a-z]+:", path):
                resolved = ((REPO / page).parent / path).resolve()
                if resolved.is_file():
                    todo.append(str(resolved.relative_to(REPO)))
    pages = {str(path.relative_to(REPO)) for path in (REPO / "docs").rglob("*.md")}
    assert pages - seen == set()
    # The reference pages are one click away.
    direct = {target.partition("#")[0] for _, target in links("README.md")}
    assert {
        f"docs/{name}.md" for name in ("training", "serving", "operations", "performance", "design")
    } <= direct


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


@pytest.mark.parametrize("readme", [*READMES, "docs/design.md"])
def test_every_figure_names_the_command_that_produced_it(readme):
    assert unattributed(readme) == []


@pytest.mark.parametrize("page", GENERATED)
def test_generated_reports_name_their_command(page):
    """A report a command wrote carries that command in its header, for every figure below it."""
    header = (REPO / page).read_text(encoding="utf-8").split("\n## ", 1)[0].split("\n|", 1)[0]
    assert re.search(r"^- [Cc]ommand: `python -m (benchmarks\.load|training compare) ", header, flags=re.M)
    assert FIGURE.search((REPO / page).read_text(encoding="utf-8"))


def test_a_figure_without_its_command_is_found(tmp_path, monkeypatch):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs/x.md").write_text(
        "## A\n\nServed 442.0 images/s.\n\n## B\n\n`python -m benchmarks.load` served 442.0 images/s.\n"
    )
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    assert unattributed("docs/x.md") == ["docs/x.md [A]: 'Served 442.0 images/s.'"]


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


def section(page: str, heading: str) -> str:
    text = (REPO / page).read_text(encoding="utf-8")
    return text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def test_the_figures_of_issue_35_agree():
    """One figure for the suite (with its command and date), dated image sizes."""
    two = section("README.md", "Two commands")
    assert not FIGURE.search(two) and not re.search(r"\d tests", two)  # the figure is in "Tests"
    tests = section("README.md", "Tests")
    assert len(re.findall(r"\*\*\d[\d,]* tests in \d+ s\*\*", tests)) == 1
    assert "bash .ci/run" in tests and re.search(r"on 20\d\d-\d\d-\d\d", tests)
    containers = section("docs/operations.md", "Containers")
    assert "**602 MB**" in containers and "on 2026-11-29" in containers and "618 MB" in containers
    assert "602 MB" not in (REPO / "README.md").read_text(encoding="utf-8")
    # Reliability's last run serves a model that is in models/, and the stale run's figure is gone.
    reliability = section("docs/operations.md", "Reliability")
    last_run = reliability.split("Last run (", 1)[1]
    name, version = re.search(r"`(\w+):(\d+)`", last_run).groups()
    assert (REPO / "models" / name / version / "metadata.json").is_file()
    assert "155.7" not in reliability


def headings(pages=READMES) -> set[str]:
    """The pages' headings and bold paragraph labels (**Try it in the browser.**)."""
    found = set()
    for readme in pages:
        text = (REPO / readme).read_text(encoding="utf-8")
        found |= {line.strip("# ").strip() for line in text.splitlines() if line.startswith("## ")}
        found |= {line.strip("# ").strip() for line in text.splitlines() if line.startswith("### ")}
        found |= {" ".join(label.split()) for label in re.findall(r"\*\*([^*]+)\*\*", text)}
    return found


def test_references_to_readme_sections_exist():
    """``README, "Containers"`` in code and configuration names a heading of the README or the
    pages it was split into (older comments still say README); ``docs/operations.md, "Containers"``
    and ``benchmarks/README.md, "The HTTP path"`` name one of that page."""
    known = headings()
    missing = []
    files = [*REPO.glob("*.toml"), REPO / "Makefile", *REPO.glob("*.yaml"), *REPO.glob("*/**/*.py")]
    files += [*REPO.glob("deploy/**/*.yaml"), *REPO.glob("deploy/**/*.sh"), *REPO.glob("*/**/*.md")]
    for path in files:
        if ".venv" in path.parts or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for match in re.finditer(r'(README(?:\.md)?|(?:docs|benchmarks)/\w+\.md),? "([^"]+)"', text):
            page, name = match.group(1), " ".join(match.group(2).split())
            within = known if page.startswith("README") else headings([page])
            if not any(heading.startswith(name) for heading in within):
                missing.append(f"{path.relative_to(REPO)}: {match.group(0)}")
    assert missing == []


def test_the_performance_page_is_what_the_load_benchmark_writes(tmp_path):
    """``python -m benchmarks.load --docs docs`` writes docs/performance.md and its plot: the report
    as written, its link to ``plot.png`` renamed with the plot."""
    from benchmarks.load import publish

    out = tmp_path / "results"
    out.mkdir()
    (out / "report.md").write_text("# convzoo load benchmark\n\n![images/s against p99 latency](plot.png)\n")
    (out / "plot.png").write_bytes(b"\x89PNG not really")
    written = publish(out, tmp_path / "docs")
    assert written == [tmp_path / "docs/performance.md", tmp_path / "docs/performance.png"]
    assert written[0].read_text().endswith("![images/s against p99 latency](performance.png)\n")
    assert written[1].read_bytes() == b"\x89PNG not really"
    page = (REPO / "docs/performance.md").read_text(encoding="utf-8")
    assert page.startswith("# convzoo load benchmark\n") and "](performance.png)" in page
    assert "--docs" in (REPO / "README.md").read_text(encoding="utf-8")  # how to regenerate it
