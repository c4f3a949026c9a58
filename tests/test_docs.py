"""The documentation is inside the repository and says where things are.

Every Markdown link and every file path quoted in the docs must exist in the
checkout; nothing may point outside it; each op family has all of its files.
"""
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = ("norm", "rotate", "horn", "block", "swiglu", "rope", "moe", "hedgehog", "attention")
# Where each family's pieces live (docs/README.md has the same table).
FAMILY_FILES = ("docs/ops/{f}.md", "csrc/cpu/{f}.h", "csrc/cpu/{f}.c", "csrc/cpu/{f}.inc", "csrc/torch/{f}.cpp",
                "csrc/numpy/{f}.c", "tpt_ops/ops/{f}.py", "tests/test_{f}.py", "benchmarks/bench_{f}.py")


def markdown_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "benchmarks" / "RESULTS.md", ROOT / "csrc" / "README.md"]
    files += sorted((ROOT / "docs").rglob("*.md"))
    return [f for f in files if f.exists()]


def tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / line for line in out.splitlines() if line]


def outside_checkout(path: Path) -> bool:
    return not path.resolve().is_relative_to(ROOT)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_has_all_its_files(family):
    missing = [p.format(f=family) for p in FAMILY_FILES if not (ROOT / p.format(f=family)).exists()]
    assert not missing, f"{family}: missing {missing}"


def test_markdown_links_resolve():
    broken = []
    for md in markdown_files():
        for target in re.findall(r"\]\(([^)\s]+)\)", md.read_text()):
            if re.match(r"[a-z]+://|#|mailto:", target):
                continue
            if not (md.parent / target.split("#")[0]).resolve().exists():
                broken.append(f"{md.relative_to(ROOT)}: {target}")
    assert not broken, broken


def test_quoted_paths_exist():
    """`dir/file.ext` quoted in the docs names a file of the checkout (`<family>` stands for each family)."""
    missing = []
    for md in markdown_files():
        for path in re.findall(r"`((?:[\w.<>-]+/)+[\w.<>-]+\.(?:py|c|h|inc|cpp|cu|md|ipynb|toml))`", md.read_text()):
            for concrete in ([path.replace("<family>", f) for f in FAMILIES] if "<family>" in path else [path]):
                if not ((ROOT / concrete).exists() or (md.parent / concrete).exists()):
                    missing.append(f"{md.relative_to(ROOT)}: {concrete}")
    assert not missing, missing


def test_nothing_points_outside_the_repository():
    """The math lives in docs/, not in a note beside the checkout: no relative path leads out of it."""
    offenders = []
    for path in tracked_files():
        if path.suffix not in {".py", ".c", ".h", ".inc", ".cpp", ".cu", ".md", ".ipynb", ".toml", ".cfg", ""}:
            continue
        if not path.is_file() or path == Path(__file__).resolve():
            continue
        text = path.read_text(errors="replace")
        for n, line in enumerate(text.splitlines(), 1):
            escapes = [p for p in re.findall(r"(?:\.\./)+[\w.-]+", line) if outside_checkout(path.parent / p)]
            if escapes or re.search(r"(?<!TORCH_)\bSPEC\b", line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:80]}")
    assert not offenders, offenders
