"""Every Markdown file a tracked file cites exists in the repository.

A citation is a token ending in `.md` (`docs/method.md`, `[design](design.md)`, `README.md`),
resolved against the repository root and against the citing file's folder. Not citations: a
quoted file name (a string literal such as "notes.md" that a test writes), and a path after a
GitHub owner/name ("microsoft/Cream AutoFormer/README.md" lives in that repository).
"""
from __future__ import annotations

import posixpath
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_CITE = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w.-]+\.md)\b")
_OTHER_REPO = re.compile(r"\b[\w-]+/[\w.-]+\s+$")  # "owner/name " right before the path


def _tracked() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"not a git checkout: {e}")
    return out.splitlines()


def citations(text: str) -> list[tuple[int, str]]:
    """(line number, cited path) of every Markdown citation in `text`."""
    found = []
    for n, line in enumerate(text.splitlines(), 1):
        for m in _CITE.finditer(line):
            before, after = line[: m.start()], line[m.end() :]
            if before[-1:] in "'\"" and after[:1] == before[-1:]:
                continue  # a quoted file name, not a citation
            if _OTHER_REPO.search(before):
                continue
            found.append((n, m.group(1)))
    return found


def missing_citations(files: list[str], read) -> list[str]:
    """'file:line: cited' for each citation of a Markdown file not among `files`."""
    have = set(files)
    bad = []
    for f in files:
        text = read(f)
        if text is None:
            continue
        for n, cited in citations(text):
            if not {cited, posixpath.normpath(posixpath.join(posixpath.dirname(f), cited))} & have:
                bad.append(f"{f}:{n}: {cited}")
    return bad


def _read(path: str) -> str | None:
    try:
        return (ROOT / path).read_text(encoding="utf-8")
    except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
        return None  # binary, or deleted in the work tree


def test_every_cited_markdown_file_is_in_the_repo():
    files = [f for f in _tracked() if f != "tests/test_docs.py"]  # its examples cite missing files on purpose
    assert missing_citations(files, _read) == []


def test_the_check_finds_a_missing_file_and_accepts_relative_links():
    files = {
        "README.md": "see docs/guide.md and CHANGES.md",
        "docs/guide.md": "[back](../README.md), [same folder](notes.md), [gone](gone.md)",
        "docs/notes.md": "microsoft/Cream AutoFormer/README.md is another repo's",
        "pkg/mod.py": '# docs/guide.md section 2\nopen("scratch.md")  # a file name, not a citation',
    }
    assert missing_citations(list(files), files.get) == ["README.md:1: CHANGES.md", "docs/guide.md:1: gone.md"]


def readme_tour() -> str:
    """The Python block under README's "## A 5-minute tour" heading, as printed there."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"^## A 5-minute tour\n+```python\n(.*?)^```", text, re.DOTALL | re.MULTILINE)
    assert m, "README.md has no ```python block right under '## A 5-minute tour'"
    return m.group(1)


def test_the_readme_tour_is_valid_python_naming_real_files():
    tour = readme_tour()
    compile(tour, "README.md tour", "exec")
    for cfg in re.findall(r'"(configs/[\w.-]+\.yaml)"', tour):
        assert (ROOT / cfg).is_file(), cfg


def test_the_readme_tour_prints_what_its_comment_says(capsys):
    """The tour's first lines, up to `print(arch.short())`, print the arch its comment shows."""
    lines = readme_tour().splitlines()
    n = next(i for i, line in enumerate(lines) if line.startswith("print(arch.short())"))
    exec(compile("\n".join(lines[: n + 1]), "README.md tour", "exec"), {})  # noqa: S102 (our own README)
    shown = lines[n].split("#", 1)[1].strip()
    assert capsys.readouterr().out.strip() == shown


@pytest.mark.slow
def test_the_readme_tour_runs_verbatim(tmp_path):
    """The tour, exactly as README.md prints it, in a fresh process run from a copy of the repo's
    configs/ (it writes runs/ beside them), fp32 on the CPU (`optim.amp=auto`)."""
    import shutil
    import sys

    (tmp_path / "configs").symlink_to(ROOT / "configs")
    (tmp_path / "tour.py").write_text(readme_tour() + "\nprint('TOUR-OK', summary['steps'], arch.short())\n")
    r = subprocess.run([sys.executable, "tour.py"], check=False, cwd=tmp_path, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "TOUR-OK 300" in r.stdout, r.stdout[-2000:]
    assert (tmp_path / "runs" / "my-subnet" / "arch.json").is_file()
    assert (tmp_path / "runs" / "tour" / "summary.json").is_file()
    shutil.rmtree(tmp_path / "runs")
