"""`kjv`: the King James Bible from the Debian package bible-kjv-text 4.38 (its compressed text
file, read with the standard library), turned into kjv.txt as `bible -l0 gen1:1-rev22:21` prints
it, verse numbers removed: a line per verse, a blank line between chapters, exactly as
corpora/kjv.txt of ../shared/data/README.md (format: docs/data.md)."""

from __future__ import annotations

import io
import re
import tarfile

from bert_jax.data.fetching.download import Archive
from bert_jax.errors import UserError
from bert_jax.paths import as_path

ARCHIVE = Archive(
    url="https://deb.debian.org/debian/pool/main/b/bible-kjv/bible-kjv-text_4.38_all.deb",
    sha256="d61b6aad4c51ba9e2800b825325fa6a09e99a0d02a9bb6dc4724fcc4995a1b7a",
)
OUTPUT = "kjv.txt"
DATA_FILE = "usr/lib/bible.data"
_GIVE = "give the bible-kjv-text 4.38 .deb"
_MAGIC = b"EC02"  # the text file's magic and format version
_HEADER = 84  # magic, version, an 80-byte description; then window size, window count, offsets
_VERSE = re.compile(r"([1-3]?[A-Za-z]+)(\d+):(\d+) (.*)")  # "Ge1:1 In the beginning ..."
_CLEAR, _FIRST, _MAX_BITS = 256, 257, 16  # LZW (Unix compress, block mode)


def build(archive: str, out) -> tuple[list, list[str]]:
    """Writes kjv.txt under `out` from the .deb at `archive`. Returns (relative path,
    count, what is counted) per file and one line per kind of thing left out."""
    lines = decompress(read_data_file(archive)).decode("ascii").split("\n")
    chapters, key, unparsed = [], None, 0
    for line in lines[1:]:  # the first line is the file's title
        verse = _VERSE.fullmatch(line)
        if verse is None:
            unparsed += bool(line.strip())
            continue
        if (verse[1], verse[2]) != key:
            chapters.append([])
            key = (verse[1], verse[2])
        chapters[-1].append(" ".join(verse[4].split()))  # as bible -l0 prints it
    path = as_path(out) / OUTPUT
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\n\n".join("\n".join(c) for c in chapters) + "\n").encode("utf-8"))
    verses = sum(len(c) for c in chapters)
    left_out = [f"the text file's title line: {lines[0]!r}; other lines not a verse: {unparsed:,}"]
    return [(OUTPUT, len(chapters), f"documents ({verses:,} verses)")], left_out


def read_data_file(archive: str) -> bytes:
    """usr/lib/bible.data from the .deb (an ar archive holding data.tar.xz) at `archive`."""
    deb = as_path(archive).read_bytes()
    if not deb.startswith(b"!<arch>\n"):
        raise UserError(f"{archive} is not a .deb (ar archive): {_GIVE}")
    pos = 8
    while pos + 60 <= len(deb):
        name, size = deb[pos : pos + 16].decode().strip(), int(deb[pos + 48 : pos + 58])
        if name.rstrip("/") == "data.tar.xz":
            member = io.BytesIO(deb[pos + 60 : pos + 60 + size])
            with tarfile.open(fileobj=member, mode="r:xz") as tar:
                for info in tar.getmembers():
                    if info.isfile() and info.name.removeprefix("./") == DATA_FILE:
                        return tar.extractfile(info).read()
            break
        pos += 60 + size + size % 2
    raise UserError(f"{archive} has no {DATA_FILE} in a data.tar.xz: {_GIVE}")


def decompress(data: bytes) -> bytes:
    """The text of a bible.data file: windows of `window size` bytes, each compressed on its own
    (LZW as Unix compress writes it, no header), listed by their offsets in the file."""
    if not data.startswith(_MAGIC):
        raise UserError(f"{DATA_FILE} does not start with {_MAGIC!r}: {_GIVE}")
    number = lambda at: int.from_bytes(data[at : at + 4], "big")  # noqa: E731
    size, count = number(_HEADER), number(_HEADER + 4)
    offsets = [number(_HEADER + 8 + 4 * i) for i in range(count + 1)]
    windows = [lzw(data[offsets[i] : offsets[i + 1]]) for i in range(count)]
    if any(len(w) != size for w in windows[:-1]) or offsets[-1] != len(data):
        raise UserError(f"{DATA_FILE}'s windows are not {size} bytes each: {_GIVE}")
    return b"".join(windows)


def lzw(data: bytes) -> bytes:
    """Unix compress's LZW decoding (block mode, up to 16-bit codes, read in groups of n_bits
    bytes as compress writes them), the routine the bible program uses on each window."""
    prefix, suffix = [0] * (1 << _MAX_BITS), bytearray(1 << _MAX_BITS)
    suffix[:256] = bytes(range(256))
    out = bytearray()
    n_bits, max_code, free, clear, pos = 9, (1 << 9) - 1, _FIRST, False, 0
    group, bit, end = 0, 0, 0  # the current group of codes as an int, read and end positions

    def code() -> int:
        nonlocal n_bits, max_code, clear, pos, group, bit, end
        if clear or bit >= end or free > max_code:
            if free > max_code:  # codes grow a bit; at 16 bits the table is full
                n_bits += 1
                max_code = 1 << _MAX_BITS if n_bits == _MAX_BITS else (1 << n_bits) - 1
            if clear:
                n_bits, max_code, clear = 9, (1 << 9) - 1, False
            chunk = data[pos : pos + n_bits]
            if not chunk:
                return -1
            pos += len(chunk)
            group, bit, end = int.from_bytes(chunk, "little"), 0, len(chunk) * 8 - (n_bits - 1)
        value = (group >> bit) & ((1 << n_bits) - 1)
        bit += n_bits
        return value

    old = final = code()
    if old < 0:
        return b""
    out.append(final)
    while (new := code()) >= 0:
        if new == _CLEAR:
            free, clear = _FIRST - 1, True
            if (new := code()) < 0:
                break
        stack, at = bytearray(), new
        if at >= free:  # the code being defined (KwKwK)
            stack.append(final)
            at = old
        while at >= 256:
            stack.append(suffix[at])
            at = prefix[at]
        final = suffix[at]
        stack.append(final)
        out += stack[::-1]
        if free < 1 << _MAX_BITS:
            prefix[free], suffix[free] = old, final
            free += 1
        old = new
    return bytes(out)
