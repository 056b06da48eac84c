"""The text of the repository says what it means: no tracker numbers (a ticket's number is
meaningless on a user's clone) in code, tests, docs, configs or benchmarks. References into
other projects stay allowed when they name the project (`transformers#9286`)."""

import ast
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


# Module docstrings orient in at most this many lines (quotes included); the reasoning behind a
# module goes to docs/design/. Modules being rewritten on other branches wait here until merged.
MAX_DOCSTRING_LINES = 10


def _module_docstring_lines(path) -> int:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    first = tree.body[0] if tree.body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        if isinstance(first.value.value, str):
            return first.end_lineno - first.lineno + 1
    return 0


def test_module_docstrings_orient_in_ten_lines():
    modules = sorted((REPO_ROOT / "bert_jax").rglob("*.py"))
    assert len(modules) > 50
    lengths = {m.relative_to(REPO_ROOT).as_posix(): _module_docstring_lines(m) for m in modules}
    too_long = {name: n for name, n in lengths.items() if n > MAX_DOCSTRING_LINES}
    assert not too_long, f"module docstrings over {MAX_DOCSTRING_LINES} lines: {too_long}"


def test_the_docs_a_module_or_design_page_points_to_exist():
    missing = []
    for path in sorted((REPO_ROOT / "bert_jax").rglob("*.py")):
        for target in re.findall(r"\bdocs/[\w/.-]+\.md\b", path.read_text(encoding="utf-8")):
            if not (REPO_ROOT / target).is_file():
                missing.append(f"{path.relative_to(REPO_ROOT)}: {target}")
    design = sorted((REPO_ROOT / "docs" / "design").glob("*.md"))
    assert len(design) >= 5
    for page in [*design, REPO_ROOT / "README.md"]:
        for target in re.findall(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)", page.read_text("utf-8")):
            if "://" not in target and not (page.parent / target).is_file():
                missing.append(f"{page.relative_to(REPO_ROOT)}: {target}")
    assert not missing, "links to documents that do not exist:\n" + "\n".join(missing)


# The public functions of `bert_jax.*` (and WordPieceTokenizer's main methods) document their
# arguments and results in Google style; the model classes document themselves in model/.
PUBLIC_DOCSTRINGS = {
    "load_hf_checkpoint": ("Args:", "Returns:", "Raises:"),
    "save_hf_checkpoint": ("Args:", "Returns:"),
    "load_tf1_checkpoint": ("Args:", "Returns:", "Raises:"),
    "save_tf1_checkpoint": ("Args:", "Returns:"),
    "pipeline": ("Args:", "Returns:", "Raises:"),
    "UserError": ("Args:",),
    "WordPieceTokenizer.__init__": ("Args:", "Raises:"),
    "WordPieceTokenizer.from_vocab": ("Args:", "Returns:", "Raises:"),
    "WordPieceTokenizer.train": ("Args:", "Returns:", "Raises:"),
    "WordPieceTokenizer.save_vocab": ("Args:",),
    "WordPieceTokenizer.encode": ("Args:", "Returns:"),
    "WordPieceTokenizer.encode_batch": ("Args:", "Returns:"),
    "WordPieceTokenizer.encode_with_offsets": ("Args:", "Returns:"),
    "WordPieceTokenizer.decode": ("Args:", "Returns:"),
}


@pytest.mark.parametrize("name", sorted(PUBLIC_DOCSTRINGS))
def test_public_functions_document_args_and_returns(name):
    import bert_jax

    owner, _, member = name.partition(".")
    target = getattr(bert_jax, owner)
    doc = (getattr(target, member) if member else target).__doc__ or ""
    missing = [s for s in PUBLIC_DOCSTRINGS[name] if not re.search(rf"^\s*{s}$", doc, re.M)]
    assert not missing, f"bert_jax.{name}'s docstring lacks {missing}"
