#!/usr/bin/env python
"""Rebuild train.txt.gz and heldout.txt.gz (Jane Austen's six novels) from Debian's r-cran-janeaustenr package.

    apt-get download r-cran-janeaustenr          # r-cran-janeaustenr_1.0.0-1_all.deb (Debian 12 "bookworm")
    python experiments/data/austen/build.py r-cran-janeaustenr_1.0.0-1_all.deb

Standard library only (no R): the .deb is an ar archive whose data.tar.xz holds the R package's lazy-load
database (data/Rdata.rdx, data/Rdata.rdb); each novel there is a zlib-compressed, XDR-serialised R character
vector, one element per line of the Project Gutenberg text. The output is byte-for-byte reproducible.
"""

import argparse
import gzip
import io
import re
import struct
import tarfile
import zlib
from pathlib import Path

DATA = "./usr/lib/R/site-library/janeaustenr/data/"
# publication order; Northanger Abbey (published 1817, dated 1818) is the held-out work
TRAIN = ["sensesensibility", "prideprejudice", "mansfieldpark", "emma", "persuasion"]
HELDOUT = ["northangerabbey"]
# editorial notes of the digital editions, not Austen's text: removed whole (first line .. last line)
EDITORIAL = {
    "sensesensibility": [("[At this point in the first and second editions, Volume 1 ends.]",) * 2,
                         ("[At this point in the first and second editions, Volume II ended.]",) * 2],
    "mansfieldpark": [("[End volume one of this edition.", "the Edinburgh University Press]")],
}


def deb_members(deb: bytes) -> dict[str, bytes]:
    """The data/ files of the R package inside a .deb (ar archive: 8-byte magic, then 60-byte headers)."""
    assert deb[:8] == b"!<arch>\n", "not a .deb (ar) file"
    pos, data_tar = 8, None
    while pos < len(deb):
        name, size = deb[pos:pos + 16].decode().strip().rstrip("/"), int(deb[pos + 48:pos + 58])
        if name.startswith("data.tar"):
            data_tar = deb[pos + 60:pos + 60 + size]
        pos += 60 + size + (size % 2)
    with tarfile.open(fileobj=io.BytesIO(data_tar)) as tar:
        return {m.name[len(DATA):]: tar.extractfile(m).read() for m in tar.getmembers() if m.name.startswith(DATA)}


class Unserialize:
    """R's XDR serialisation (format 2 or 3), only the types the janeaustenr data use."""

    def __init__(self, data: bytes):
        assert data[:2] == b"X\n", "not XDR-serialised R data"
        self.data, self.pos, self.refs = data, 2, []
        version = self.int()
        self.pos += 8  # writer's and minimal reader's R versions
        if version == 3:
            n = self.int()
            self.pos += n  # native encoding name

    def int(self) -> int:
        (value,) = struct.unpack(">i", self.data[self.pos:self.pos + 4])
        self.pos += 4
        return value

    def item(self):
        flags = self.int()
        kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
        if kind == 254:  # NILVALUE_SXP
            return None
        if kind == 255:  # REFSXP
            return self.refs[(flags >> 8) - 1]
        if kind == 1:  # SYMSXP
            symbol = ("symbol", self.item())
            self.refs.append(symbol)
            return symbol
        if kind == 9:  # CHARSXP (UTF-8, ASCII or native: all UTF-8 here)
            n = self.int()
            if n == -1:
                return None
            text = self.data[self.pos:self.pos + n].decode("utf-8")
            self.pos += n
            return text
        if kind == 2:  # LISTSXP (pairlist): [(tag, value), ...]
            if has_attr:
                self.item()
            tag = self.item() if has_tag else None
            head, tail = self.item(), self.item()
            return [(tag, head)] + (tail or [])
        if kind in (16, 19):  # STRSXP, VECSXP
            value = [self.item() for _ in range(self.int())]
        elif kind in (10, 13):  # LGLSXP, INTSXP
            n = self.int()
            value = list(struct.unpack(f">{n}i", self.data[self.pos:self.pos + 4 * n]))
            self.pos += 4 * n
        else:
            raise NotImplementedError(f"R type {kind}")
        if has_attr:
            attributes = {tag[1]: v for tag, v in self.item()}
            if "names" in attributes:
                return dict(zip(attributes["names"], value))
        return value


def novels(members: dict[str, bytes]) -> dict[str, list[str]]:
    index = Unserialize(gzip.decompress(members["Rdata.rdx"])).item()
    rdb = members["Rdata.rdb"]
    out = {}
    for name, (offset, length) in index["variables"].items():
        blob = rdb[offset:offset + length]
        data = zlib.decompress(blob[4:])
        assert len(data) == struct.unpack(">i", blob[:4])[0]
        out[name] = Unserialize(data).item()
    return out


def clean(name: str, lines: list[str]) -> str:
    lines = [line.rstrip() for line in lines]
    if name == "northangerabbey":  # the Signet Classic edition's "A NOTE ON THE TEXT" (1990s), after the novel
        lines = lines[:lines.index("A NOTE ON THE TEXT")]
    for first, last in EDITORIAL.get(name, []):
        start = [line.strip() for line in lines].index(first)
        end = start + [line.strip() for line in lines[start:]].index(last)
        del lines[start:end + 1]
    text = "\n".join(lines)
    text = text.replace("_", "")  # Project Gutenberg's _italics_ markers (3 of the 6 transcriptions use them)
    text = re.sub(r"(?<=\S) {2,}(?=\S)", " ", text)  # two spaces after a full stop (2 transcriptions); indents kept
    text = re.sub(r"\n{3,}", "\n\n", text)  # at most one blank line
    return text.strip("\n") + "\n"


def write_gz(path: Path, text: str) -> None:
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as f:
        f.write(text.encode("utf-8"))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("deb", help="r-cran-janeaustenr_1.0.0-1_all.deb")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent))
    args = p.parse_args()
    texts = {name: clean(name, lines) for name, lines in novels(deb_members(Path(args.deb).read_bytes())).items()}
    assert sorted(texts) == sorted(TRAIN + HELDOUT), sorted(texts)
    for split, names in (("train", TRAIN), ("heldout", HELDOUT)):
        text = "\n".join(texts[n] for n in names)  # works separated by one blank line
        write_gz(Path(args.out) / f"{split}.txt.gz", text)
        print(f"{split}.txt.gz: {', '.join(names)}: {len(text):,} characters, {text.count(chr(10)):,} lines")


if __name__ == "__main__":
    main()
