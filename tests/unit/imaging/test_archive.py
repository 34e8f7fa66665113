from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from cvpipe.imaging import archive as archive_module
from cvpipe.imaging.archive import Member, MemberTable, locate_members, read_member, scan_archive
from tests.conftest import FIXED_TIME

PAYLOADS = {"a/one.bin": bytes(range(256)) * 20, "a/two.txt": b"hello " * 500, "b/three.bin": b"\x00" * 3000}
_CENTRAL_HEADER = 46  # bytes before the name in a central directory entry


def build(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_STORED, prefix: bytes = b"") -> Path:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, FIXED_TIME)
            info.compress_type = compression  # writestr keeps a ZipInfo's own compression
            archive.writestr(info, data)
        archive.comment = b"a comment"
    path.write_bytes(prefix + buffer.getvalue())
    return path


def central_entry(data: bytes, name: str) -> int:
    """Offset of ``name``'s central directory entry (the last occurrence of the name is the directory's)."""
    return data.rindex(name.encode()) - _CENTRAL_HEADER


def patched(path: Path, edit: Callable[[bytearray], None]) -> Path:
    data = bytearray(path.read_bytes())
    edit(data)
    path.write_bytes(bytes(data))
    return path


def outcome(function: Callable[[], bytes]) -> bytes | tuple[str, str]:
    try:
        return function()
    except Exception as error:
        return type(error).__name__, str(error)


# ------------------------------------------------------------------------------------------ the directory


@pytest.mark.parametrize(
    ("compression", "prefix"),
    [(zipfile.ZIP_STORED, b""), (zipfile.ZIP_DEFLATED, b""), (zipfile.ZIP_BZIP2, b"#!/bin/sh\nexit 0\n" * 9)],
)
def test_scan_matches_zipfile(tmp_path: Path, compression: int, prefix: bytes) -> None:
    path = build(tmp_path / "a.zip", {"a/": b"", **PAYLOADS}, compression, prefix)
    table = scan_archive(path)
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        ends = [info.header_offset for info in infos[1:]] + [archive.start_dir]
    assert table.names == [info.filename for info in infos]
    for member, info, end in zip(table, infos, ends, strict=True):
        assert member == Member(
            info.filename, info.header_offset, info.compress_type, info.compress_size, info.CRC, info.flag_bits,
            info.file_size, info.external_attr, end,
        )  # fmt: skip


def test_scan_defers_to_zipfile_for_what_it_does_not_parse(tmp_path: Path) -> None:
    not_zip = tmp_path / "not.zip"
    not_zip.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(zipfile.BadZipFile, match="File is not a zip file"):
        scan_archive(not_zip)
    # A NUL in a name: zipfile cuts the name there; so does the listing.
    path = build(tmp_path / "nul.zip", PAYLOADS)
    patched(path, lambda data: data.__setitem__(central_entry(data, "a/two.txt") + _CENTRAL_HEADER + 3, 0))
    assert scan_archive(path).names == ["a/one.bin", "a/t", "b/three.bin"]


def test_member_table_indexes_slices_takes_and_pickles(tmp_path: Path) -> None:
    table = scan_archive(build(tmp_path / "a.zip", PAYLOADS))
    members = list(table)
    assert len(table) == 3 and table[1] == members[1] and table[-1] == members[2]
    assert table[1:] == members[1:]
    assert list(table.take([2, 0])) == [members[2], members[0]]
    assert list(MemberTable.of(members)) == members
    assert pickle.loads(pickle.dumps(table[0:2])) == members[:2]
    assert all(type(value) is int for value in members[0][1:])  # plain ints, not numpy scalars


def test_locate_members_reuses_the_callers_names(tmp_path: Path) -> None:
    path = build(tmp_path / "a.zip", PAYLOADS)
    wanted = ["b/three.bin", "a/one.bin"]
    located = locate_members(path, wanted)
    assert [member.name for member in located] == wanted
    assert all(member.name is name for member, name in zip(located, wanted, strict=True))
    assert located[0][1:6] == scan_archive(path)[2][1:6]


def test_locate_members_gives_a_table_in_the_order_asked_with_repeats(tmp_path: Path) -> None:
    path = build(tmp_path / "a.zip", PAYLOADS)
    wanted = ["b/three.bin", "a/one.bin", "b/three.bin"]
    located = locate_members(path, wanted)
    assert isinstance(located, MemberTable) and located.numbers.shape == (3, len(Member._fields) - 1)
    by_name = {member.name: member for member in scan_archive(path)}
    assert [member[:8] for member in located] == [by_name[name][:8] for name in wanted]
    with zipfile.ZipFile(path) as archive, open(path, "rb") as handle:
        assert [read_member(handle.fileno(), member, path) for member in located] == [archive.read(n) for n in wanted]


def test_member_table_rows_are_views_pickled_by_range() -> None:
    table = MemberTable.of([Member(f"m/{index:05}.jpg", *range(index, index + 8)) for index in range(1000)])
    part = table.rows(10, 13)
    assert list(part) == table[10:13]
    assert np.shares_memory(part.numbers, table.numbers)  # a view, not a copy
    assert list(pickle.loads(pickle.dumps(part))) == table[10:13]
    # A range pickles its own rows only, not the whole table it views.
    assert len(pickle.dumps(part)) < len(pickle.dumps(table)) / 50
    assert len(table.rows(5, 2)) == 0


# ---------------------------------------------------------------------------------------------- reading


def _bad_crc(data: bytearray) -> None:
    entry = central_entry(data, "a/two.txt")
    data[entry + 16] ^= 0x01


def _name_differs(data: bytearray) -> None:
    local = data.index(b"a/two.txt")
    data[local : local + 9] = b"a/TWO.txt"


def _bad_signature(data: bytearray) -> None:
    data[data.index(b"a/two.txt") - 30] = 0x51


def _size_lie(data: bytearray) -> None:
    entry = central_entry(data, "a/two.txt")
    struct.pack_into("<I", data, entry + 24, 100)  # declared size far below the real one


def _truncated(data: bytearray) -> None:
    entry = central_entry(data, "b/three.bin")
    struct.pack_into("<II", data, entry + 20, 10**6, 10**6)  # data would run past the end of the file


def _encrypted(data: bytearray) -> None:
    data[central_entry(data, "a/two.txt") + 8] |= 0x01
    data[data.index(b"a/two.txt") - 30 + 6] |= 0x01


def _overlapping(data: bytearray) -> None:
    # b/three.bin's directory entry points at a/two.txt's local header (a "zip bomb" of overlapping entries).
    local = data.index(b"a/two.txt") - 30
    struct.pack_into("<I", data, central_entry(data, "b/three.bin") + 42, local)


def _bad_inflate(data: bytearray) -> None:
    start = data.index(b"a/two.txt") + 9
    data[start : start + 8] = b"\xff" * 8  # an invalid deflate block type


@pytest.mark.parametrize(
    ("edit", "compression"),
    [
        (None, zipfile.ZIP_STORED),
        (None, zipfile.ZIP_DEFLATED),
        (None, zipfile.ZIP_LZMA),
        (_bad_crc, zipfile.ZIP_STORED),
        (_bad_crc, zipfile.ZIP_DEFLATED),
        (_name_differs, zipfile.ZIP_STORED),
        (_bad_signature, zipfile.ZIP_STORED),
        (_size_lie, zipfile.ZIP_STORED),
        (_size_lie, zipfile.ZIP_DEFLATED),
        (_truncated, zipfile.ZIP_STORED),
        (_encrypted, zipfile.ZIP_STORED),
        (_overlapping, zipfile.ZIP_STORED),
        (_bad_inflate, zipfile.ZIP_DEFLATED),
    ],
)
def test_read_member_returns_or_raises_what_zipfile_does(
    tmp_path: Path, edit: Callable[[bytearray], None] | None, compression: int
) -> None:
    path = build(tmp_path / "a.zip", PAYLOADS, compression)
    if edit is not None:
        patched(path, edit)
    fd = os.open(path, os.O_RDONLY)
    try:
        with zipfile.ZipFile(path) as reference:
            for member in scan_archive(path):
                expected = outcome(lambda name=member.name: reference.read(name))
                assert outcome(lambda member=member: read_member(fd, member, path)) == expected, member.name
    finally:
        os.close(fd)


def test_ordinary_members_are_read_without_zipfile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = build(tmp_path / "a.zip", PAYLOADS, zipfile.ZIP_DEFLATED)
    members = scan_archive(path)
    monkeypatch.setattr(archive_module.zipfile, "ZipFile", None)  # any use of zipfile would fail
    fd = os.open(path, os.O_RDONLY)
    try:
        assert {member.name: read_member(fd, member, path) for member in members} == PAYLOADS
    finally:
        os.close(fd)
