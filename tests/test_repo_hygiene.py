"""The text of the repository says what it means: no tracker numbers (a ticket's number is
meaningless on a user's clone) in code, tests, docs, configs or benchmarks. References into
other projects stay allowed when they name the project (`transformers#9286`)."""

import re

import pytest
from conftest import REPO_ROOT

ROOTS = ["bert_jax", "tests", "docs", "benchmarks", "configs", "launch", "notebooks"]
TOP_FILES = ["README.md", "README.zh-CN.md", "Makefile"]
SUFFIXES = {".py", ".md", ".sh", ".sbatch", ".toml", ".cfg", ".ipynb", ".txt", ".json", ""}
SKIPPED = {"tests/data"}  # third-party corpora, not our prose

# Built from pieces so that this file does not match its own pattern.
_WORDS = "|".join(["iss" + "ue", "tick" + "et", "ta" + "sk", "b" + "ug"])
TRACKER_NUMBER = re.compile(
    rf"\b(?:{_WORDS})s?\s?(?:n(?:o|um)\.?\s?)?#?\d+(?:\.\d+)?\b"  # the word and a number
    r"|(?<![\w/&#])#\d+\b(?![-\w])",  # a bare '#N' (not 'project#N', '&#1;', a '#1-anchor')
    re.IGNORECASE,
)


def _text_files():
    files = [REPO_ROOT / name for name in TOP_FILES]
    for root in ROOTS:
        for path in sorted((REPO_ROOT / root).rglob("*")):
            relative = path.relative_to(REPO_ROOT).as_posix()
            if any(relative.startswith(skipped + "/") for skipped in SKIPPED):
                continue
            if path.is_file() and path.suffix in SUFFIXES and "__pycache__" not in relative:
                files.append(path)
    return [f for f in files if f.exists()]


@pytest.mark.parametrize(
    "text, is_tracker_number",
    [
        ("Is" + "sue 5: exact resume", True),
        ("before is" + "sue 16.3", True),
        ("fixed in " + "#" + "27", True),
        ("see Ta" + "sk 3", True),
        ("tick" + "et " + "#" + "12", True),
        ("transformers" + "#" + "9286", False),
        ("google-research/bert" + "#" + "910", False),
        ("[Prepare](" + "#" + "1-prepare-the-text)", False),
        ("tokens 20 " + "##24 co ##vid", False),
        ("issues/" + "24047 in a link is fine", False),
        ("a masked task of 15% of the tokens", False),
    ],
)
def test_the_pattern_tells_tracker_numbers_from_references(text, is_tracker_number):
    assert bool(TRACKER_NUMBER.search(text)) is is_tracker_number


def test_no_tracker_numbers_in_the_repository():
    files = _text_files()
    assert len(files) > 100, f"only {len(files)} files found under {REPO_ROOT}"
    found = []
    for path in files:
        text = path.read_text(encoding="utf-8")
        for number, line in enumerate(text.splitlines(), 1):
            for match in TRACKER_NUMBER.finditer(line):
                found.append(f"{path.relative_to(REPO_ROOT)}:{number}: {match.group(0)!r}")
    assert not found, "tracker numbers; say what is meant instead:\n" + "\n".join(found)
