"""`python -m bert_jax.data.fetch kjv`'s reading of the bible-kjv-text .deb on a tiny one in its
layout (ar, data.tar.xz, the windowed LZW text file): LZW codes, windows, the verse lines."""

from __future__ import annotations

import io
import tarfile

import pytest

from bert_jax.data.fetching import kjv
from bert_jax.errors import UserError


def _codes(codes, bits=9, pad=False) -> bytes:
    """A group of up to 8 codes packed low bit first, as compress writes them (padded to a whole
    group of `bits` bytes before a table clear)."""
    value = sum(code << (bits * i) for i, code in enumerate(codes))
    return value.to_bytes(bits if pad else (bits * len(codes) + 7) // 8, "little")


def _literal_lzw(text: bytes) -> bytes:
    """`text` as LZW codes, one literal code per byte: the decoder still adds a table entry per
    code, so codes grow to 10 bits at the 257th."""
    out, group, bits = b"", [], 9
    for i, byte in enumerate(text):
        if 257 + max(i - 1, 0) > (1 << bits) - 1:  # the decoder's next free entry
            assert not group  # 256 codes of 9 bits, 512 of 10: whole groups
            bits += 1
        group.append(byte)
        if len(group) == 8:
            out, group = out + _codes(group, bits), []
    return out + _codes(group, bits)


def _deb(path, text: bytes, window: int):
    """A .deb whose usr/lib/bible.data holds `text` in windows of `window` bytes, each compressed
    as literal codes."""
    windows = [_literal_lzw(text[i : i + window]) for i in range(0, len(text), window)]
    start = 84 + 8 + 4 * (len(windows) + 1)
    offsets = [start + sum(len(w) for w in windows[:i]) for i in range(len(windows) + 1)]
    data = b"EC02" + b"Compressed Data File".ljust(80, b"\0")
    data += b"".join(n.to_bytes(4, "big") for n in (window, len(windows), *offsets))
    data += b"".join(windows)
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w:xz") as tar:
        info = tarfile.TarInfo("./usr/lib/bible.data")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    deb = b"!<arch>\n"
    for name, member in ((b"debian-binary", b"2.0\n"), (b"data.tar.xz", tar_bytes.getvalue())):
        deb += name.ljust(16) + b"0".ljust(12) + b"0".ljust(6) * 2 + b"100644".ljust(8)
        deb += str(len(member)).encode().ljust(10) + b"`\n" + member + b"\n" * (len(member) % 2)
    path.write_bytes(deb)
    return path


TEXT = (
    b"Holy Bible, Authorized (King James) Version.  Textfile 930105.\n"
    b"Ge1:1 In the beginning God created the heaven and the earth.\n"
    b"Ge1:2 And the earth was without form.  And void. \n"
    b"Ge2:1 Thus the heavens were finished.\n"
    b"1Jo1:1 That which was from the beginning.\n"
    b"Rev22:21 The grace of our Lord Jesus Christ be with you all. Amen.\n"
)


def test_kjv_file_from_a_tiny_deb(tmp_path):
    archive = _deb(tmp_path / "bible-kjv-text.deb", TEXT, window=300)  # 9- and 10-bit codes
    files, left_out = kjv.build(str(archive), tmp_path / "out")
    assert files == [("kjv.txt", 4, "documents (5 verses)")]
    assert left_out == [
        "the text file's title line: 'Holy Bible, Authorized (King James) Version.  Textfile "
        "930105.'; other lines not a verse: 0"
    ]
    assert (tmp_path / "out" / "kjv.txt").read_text() == (
        "In the beginning God created the heaven and the earth.\n"
        "And the earth was without form. And void.\n\n"
        "Thus the heavens were finished.\n\n"
        "That which was from the beginning.\n\n"
        "The grace of our Lord Jesus Christ be with you all. Amen.\n"
    )


def test_lzw_codes_grow_after_256_entries():
    text = bytes(range(256)) * 3
    assert len(_literal_lzw(text)) == 9 * 32 + 10 * (768 - 256) // 8  # 256 codes at 9 bits
    assert kjv.lzw(_literal_lzw(text)) == text


def test_lzw_table_codes_and_clear():
    # A, B, "AB" (257), then 259 before it is defined ("ABA"), a table clear: the rest of its
    # group of 8 codes is skipped, C then starts the next group (as compress writes it) and 257
    # is no longer "AB": undefined again, it is C + its own first byte
    stream = _codes([65, 66, 257, 259, 256], pad=True) + _codes([67, 257])
    assert kjv.lzw(stream) == b"ABABABA" + b"C" + b"CC"


def test_a_wrong_file_is_one_clear_error(tmp_path):
    (tmp_path / "x.deb").write_bytes(b"PK\x03\x04")
    with pytest.raises(UserError, match="not a .deb .*bible-kjv-text 4.38"):
        kjv.build(str(tmp_path / "x.deb"), tmp_path / "out")
    with pytest.raises(UserError, match="windows are not 50 bytes each"):
        data = kjv.read_data_file(str(_deb(tmp_path / "k.deb", TEXT, window=100)))
        kjv.decompress(data[:84] + (50).to_bytes(4, "big") + data[88:])
