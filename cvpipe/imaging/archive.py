"""Zip members read in place: the central directory parsed once into small records, members read by offset.

Opening a :class:`zipfile.ZipFile` builds a ``ZipInfo`` (~700 bytes) for every entry: ~17 MB and ~0.1 s for
Kaggle's 25,000 images, paid again by every process or chunk that opens the archive. Here the directory is
parsed once into a :class:`MemberTable` (~150 bytes an entry, stored by column) whose :class:`Member`
records (small, picklable), or whose row ranges (:meth:`MemberTable.rows`, pickled by column), a stage hands
to its workers, and a member is read with positioned reads on a file descriptor.

Hostile archives keep meeting :mod:`zipfile`'s own checks: the fast paths take only the ordinary case
(stored or deflated, unencrypted, a local header that agrees with the directory, data that ends before the
next entry and inflates to exactly the declared size, CRC checked) and hand everything else to ``zipfile``
(zip64, encryption, other compressions, odd names or extra fields, inconsistent or overlapping entries,
sizes that do not match), so what is returned or raised is what ``zipfile`` would return or raise.
"""

from __future__ import annotations

import array
import os
import struct
import zipfile
import zlib
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, NamedTuple, overload

import numpy as np

from cvpipe.errors import DataError

_CENTRAL = struct.Struct(zipfile.structCentralDir)
_LOCAL = struct.Struct(zipfile.structFileHeader)
_EXTRA_HEADER = struct.Struct("<HH")
_UTF8_NAME = 0x800
# Encrypted, compressed patched data, strong encryption: zipfile refuses or needs a password.
_ZIPFILE_FLAGS = 0x1 | 0x20 | 0x40
# Extra fields that make zipfile change an entry (zip64 sizes and offsets; from Python 3.12 the Info-ZIP
# Unicode path, which replaces the name).
_ZIPFILE_EXTRAS = frozenset({0x0001, 0x7075})
_FAST_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
_UNKNOWN = -1


class Member(NamedTuple):
    """One entry of an archive's central directory: where its bytes are and what it declares."""

    name: str
    header_offset: int
    compress_type: int
    compress_size: int
    crc: int
    flags: int
    file_size: int
    external_attr: int
    # Where the next entry (or the central directory) starts: the member's data must end before it.
    # ``_UNKNOWN``: not known, not checked.
    end_offset: int = _UNKNOWN


_NUMBERS = len(Member._fields) - 1  # the fields after the name


class MemberTable(Sequence[Member]):
    """Members stored by column: the names, and the other fields in one ``N x 8`` int64 array.

    A list of 25,000 :class:`Member` tuples takes ~10 MB (a Python int is 28-32 bytes); this ~4 MB. Indexing
    gives a :class:`Member`, slicing a list of them, :meth:`rows` a table viewing a range of rows.
    """

    def __init__(self, names: list[str], numbers: np.ndarray) -> None:
        """Wrap ``names`` and ``numbers``, their ``len(names) x 8`` other fields in :class:`Member`'s order."""
        if numbers.shape != (len(names), _NUMBERS):
            raise ValueError(f"expected {len(names)} x {_NUMBERS} numbers, got {numbers.shape}")
        self.names = names
        self.numbers = numbers

    def __len__(self) -> int:
        return len(self.names)

    @overload
    def __getitem__(self, index: int) -> Member: ...

    @overload
    def __getitem__(self, index: slice) -> list[Member]: ...

    def __getitem__(self, index: int | slice) -> Member | list[Member]:
        if isinstance(index, slice):
            rows = zip(self.names[index], self.numbers[index].tolist(), strict=True)
            return [Member(name, *numbers) for name, numbers in rows]
        return Member(self.names[index], *self.numbers[index].tolist())

    def __iter__(self) -> Iterator[Member]:
        for start in range(0, len(self), 1024):
            yield from self[start : start + 1024]

    def rows(self, start: int, stop: int) -> MemberTable:
        """The members ``start:stop`` as a table sharing this one's numbers (a view, not a copy).

        What a worker is sent: it costs the sender ~8 bytes a member until it is pickled, and then only that
        range's numbers and names (NumPy pickles a view's elements, not its base), where a list of
        :class:`Member` made for every chunk at once would cost ~300 bytes a member.
        """
        return MemberTable(self.names[start:stop], self.numbers[start:stop])

    def take(self, indices: Sequence[int]) -> MemberTable:
        """A table of the members at ``indices``, in that order."""
        return MemberTable([self.names[i] for i in indices], self.numbers[np.asarray(indices, dtype=np.intp)])

    @classmethod
    def of(cls, members: Sequence[Member]) -> MemberTable:
        """A table holding ``members``."""
        numbers = np.array([member[1:] for member in members], dtype=np.int64).reshape(len(members), _NUMBERS)
        return cls([member.name for member in members], numbers)


def _end_offsets(offsets: Sequence[int] | array.array[int], start_dir: int) -> np.ndarray:
    """For each header offset, where the next entry starts (the directory for the last).

    Entries sharing a header offset overlap by construction: they get their own offset, so that reading
    them goes through zipfile (which, from Python 3.12, rejects overlapping entries as a zip bomb).
    """
    values = np.asarray(offsets, dtype=np.int64)
    if not len(values):
        return values
    unique, counts = np.unique(values, return_counts=True)
    following = np.append(unique[1:], start_dir)
    index = np.searchsorted(unique, values)
    return np.where(counts[index] > 1, values, following[index])


def _directory(handle: BinaryIO) -> tuple[bytes, int, int] | None:
    """The central directory's bytes, its start, and the shift of data prepended to the archive.

    None where zipfile must judge the archive: no end record, zip64, a directory out of the file.
    """
    end = zipfile._EndRecData(handle)  # type: ignore[attr-defined]  # stable since Python 2.6
    if not end or end[0] != zipfile.stringEndArchive:
        return None
    size, offset, location = end[5], end[6], end[9]  # _ECD_SIZE, _ECD_OFFSET, _ECD_LOCATION
    shift = location - size - offset  # as zipfile does: an archive appended to other data keeps working
    start = offset + shift
    if start < 0:
        return None
    handle.seek(start)
    directory = handle.read(size)
    return (directory, start, shift) if len(directory) == size else None


def _plain_extra(extra: bytes) -> bool:
    """Whether an entry's extra field is well formed and holds nothing zipfile acts upon."""
    position = 0
    while len(extra) - position >= _EXTRA_HEADER.size:
        kind, length = _EXTRA_HEADER.unpack_from(extra, position)
        position += _EXTRA_HEADER.size + length
        if kind in _ZIPFILE_EXTRAS or position > len(extra):
            return False
    return True


def _scan(archive_path: Path, wanted: Collection[str] | None) -> MemberTable | None:
    """Every entry (or only ``wanted`` names) in directory order; None where zipfile must parse the directory.

    Only ordinary entries are parsed here; anything that zipfile would reject, reinterpret (zip64 fields, a
    NUL in a name) or decode differently makes this return None, and the caller uses zipfile instead.
    """
    try:
        with open(archive_path, "rb") as handle:
            found = _directory(handle)
    except OSError:
        return None
    if found is None:
        return None
    directory, start, shift = found
    names: list[str] = []
    numbers = array.array("q")
    offsets = array.array("q")
    position = 0
    while position < len(directory):
        if position + _CENTRAL.size > len(directory):
            return None
        fields = _CENTRAL.unpack_from(directory, position)
        name_end = position + _CENTRAL.size + fields[12]
        extra_end = name_end + fields[13]
        if fields[0] != zipfile.stringCentralDir or extra_end + fields[14] > len(directory):
            return None
        flags, method, crc, compressed, size, header_offset = (fields[i] for i in (5, 6, 9, 10, 11, 18))
        try:
            name = directory[position + _CENTRAL.size : name_end].decode("utf-8" if flags & _UTF8_NAME else "cp437")
        except UnicodeDecodeError:
            return None
        if (
            not name
            or "\0" in name
            or fields[3] > zipfile.MAX_EXTRACT_VERSION
            or 0xFFFFFFFF in (compressed, size, header_offset)
            or not _plain_extra(directory[name_end:extra_end])
        ):
            return None
        offsets.append(header_offset + shift)
        if wanted is None or name in wanted:
            names.append(name)
            numbers.extend((header_offset + shift, method, compressed, crc, flags, size, fields[17], _UNKNOWN))
        position = extra_end + fields[14]
    table = np.frombuffer(numbers, dtype=np.int64).reshape(len(names), _NUMBERS)  # shares the array's memory
    if wanted is None:  # a reader of members that passed ingest (``wanted``) does not check overlap
        table[:, -1] = _end_offsets(offsets, start)
    return MemberTable(names, table)


def _from_zipfile(archive: zipfile.ZipFile, infos: Sequence[zipfile.ZipInfo]) -> list[Member]:
    ends = _end_offsets([info.header_offset for info in archive.infolist()], archive.start_dir)
    end_of = dict(zip((info.header_offset for info in archive.infolist()), ends.tolist(), strict=True))
    return [
        Member(
            i.filename,
            i.header_offset,
            i.compress_type,
            i.compress_size,
            i.CRC,
            i.flag_bits,
            i.file_size,
            i.external_attr,
            end_of[i.header_offset],
        )
        for i in infos
    ]


def scan_archive(archive_path: Path) -> MemberTable:
    """Every entry of the archive's central directory, directories included, in directory order.

    Raises:
        zipfile.BadZipFile, OSError, ...: what opening the archive with :class:`zipfile.ZipFile` raises.
    """
    members = _scan(Path(archive_path), None)
    if members is not None:
        return members
    with zipfile.ZipFile(archive_path) as archive:
        return MemberTable.of(_from_zipfile(archive, archive.infolist()))


def locate_members(archive_path: Path, members: Sequence[str]) -> MemberTable:
    """Look ``members`` up in the archive's central directory, once; return them in the order given.

    Records are made for the wanted entries only, not for every entry of the archive, and kept by column:
    ~64 bytes a member besides its name, where a :class:`Member` tuple takes ~300.

    Raises:
        DataError: a member is not in the archive.
    """
    wanted = set(members)
    scanned = _scan(Path(archive_path), wanted)
    # Later entries win, as in zipfile's name index.
    found = {name: index for index, name in enumerate(scanned.names)} if scanned is not None else {}
    if scanned is None or len(found) < len(wanted):
        return MemberTable.of(_locate_with_zipfile(archive_path, members))  # zip64, or a name to report missing
    indices = np.fromiter((found[name] for name in members), dtype=np.intp, count=len(members))
    # The caller's name strings are reused: a caller holding 20,000 members then holds each name once.
    return MemberTable(list(members), scanned.numbers[indices])


def _locate_with_zipfile(archive_path: Path, members: Sequence[str]) -> list[Member]:
    with zipfile.ZipFile(archive_path) as archive:
        try:
            infos = [archive.getinfo(name) for name in members]
        except KeyError as error:
            raise DataError(f"{archive_path}: {error.args[0]} (rerun the split stage against this archive)") from None
        return _from_zipfile(archive, infos)


def _pread_exact(fd: int, size: int, offset: int) -> bytes | None:
    """``size`` bytes at ``offset``, or None when the file ends first."""
    parts, done = [], 0
    while done < size:
        part = os.pread(fd, size - done, offset + done)
        if not part:
            return None
        parts.append(part)
        done += len(part)
    return b"".join(parts)


def _local_data_offset(fd: int, member: Member) -> int | None:
    """Where the member's data starts, if its local header agrees with the directory; None otherwise."""
    try:
        name = member.name.encode("utf-8" if member.flags & _UTF8_NAME else "cp437")
    except UnicodeEncodeError:
        return None
    header = os.pread(fd, _LOCAL.size + len(name), member.header_offset)
    if len(header) != _LOCAL.size + len(name):
        return None
    fields = _LOCAL.unpack_from(header)
    if (
        fields[0] != zipfile.stringFileHeader
        or (fields[3] ^ member.flags) & _UTF8_NAME
        or fields[10] != len(name)
        or header[_LOCAL.size :] != name
    ):
        return None
    return member.header_offset + _LOCAL.size + fields[10] + fields[11]


def _read_plain(fd: int, member: Member) -> bytes | None:
    """The member's bytes by positioned reads, or None where zipfile must read it (see the module's docs).

    Raises:
        zipfile.BadZipFile: CRC mismatch; zipfile raises the same for the same entry.
    """
    if member.flags & _ZIPFILE_FLAGS or member.compress_type not in _FAST_METHODS:
        return None
    start = _local_data_offset(fd, member)
    if start is None or (member.end_offset != _UNKNOWN and start + member.compress_size > member.end_offset):
        return None
    raw = _pread_exact(fd, member.compress_size, start)
    if raw is None:
        return None
    if member.compress_type == zipfile.ZIP_STORED:
        data = raw
    else:
        try:
            # At most one byte more than declared: a lying size cannot make this inflate a bomb.
            data = zlib.decompressobj(-zlib.MAX_WBITS).decompress(raw, member.file_size + 1)
        except zlib.error:
            return None
    if len(data) != member.file_size:
        return None
    if zlib.crc32(data) != member.crc:
        raise zipfile.BadZipFile(f"Bad CRC-32 for file {member.name!r}")
    return data


def data_overruns(fd: int, member: Member) -> bool:
    """Whether the member's data, by its declared compressed size, runs past where the next entry starts.

    Entries whose data overlap (one deflate stream shared by hundreds of entries) are an overlapping-entry zip
    bomb: each inflates in full before its CRC fails. Python 3.12's zipfile refuses them, 3.11's does not, so
    the check is made here. A member whose next entry is unknown (``end_offset`` not set) is not checked.
    """
    if member.end_offset == _UNKNOWN:
        return False
    start = _local_data_offset(fd, member)
    if start is None:  # a local header that disagrees with the directory: its fixed part is a lower bound
        start = member.header_offset + _LOCAL.size
    return start + member.compress_size > member.end_offset


class ArchiveReader:
    """An archive open for reading members: positioned reads, and one :class:`zipfile.ZipFile` for the rest.

    What a worker opens once per chunk: members off the fast path (bzip2, LZMA, encrypted, zip64) are read
    through a ``ZipFile`` opened on first need and kept, where opening one per member made ingesting an
    archive of such members quadratic in its size (the central directory parsed again each time).
    """

    def __init__(self, archive_path: Path) -> None:
        """Open ``archive_path``."""
        self.path = Path(archive_path)
        self.fd = os.open(self.path, os.O_RDONLY)
        self._zipfile: zipfile.ZipFile | None = None

    def read(self, member: Member) -> bytes:
        """The member's bytes, CRC checked (see :func:`read_member`)."""
        data = _read_plain(self.fd, member)
        if data is not None:
            return data
        if self._zipfile is None:
            self._zipfile = zipfile.ZipFile(self.path)
        return self._zipfile.read(member.name)

    def close(self) -> None:
        """Close the descriptor and the ``ZipFile``, if one was opened."""
        if self._zipfile is not None:
            self._zipfile.close()
        os.close(self.fd)

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def read_member(fd: int, member: Member, archive_path: Path) -> bytes:
    """Return a member's bytes, read at its offset in the archive open as ``fd``, CRC checked as zipfile does.

    Ordinary stored and deflated members (all that Kaggle's and cvpipe's archives hold) are read directly;
    anything else goes through :mod:`zipfile`, which decodes it or raises its usual error.

    Raises:
        zipfile.BadZipFile, EOFError, NotImplementedError, RuntimeError, zlib.error: as ``ZipFile.read``.
    """
    data = _read_plain(fd, member)
    if data is not None:
        return data
    with zipfile.ZipFile(archive_path) as archive:
        return archive.read(member.name)
