"""Direct reads of plain-encoded float32 embedding pages: the bag loader's fast path.

featurize writes each slide's ``embedding`` column uncompressed, plain-encoded and non-nullable. In such a column
chunk every data page is a small header, the repetition and definition levels (a few hundred bytes), and then the
float32 values as raw little-endian bytes, row after row. pyarrow decodes the levels and assembles a list array
first; here the values are read straight from the file into their slot of the bag array (``os.preadv``, one copy,
the GIL released), near ``numpy.fromfile`` speed (``benchmarks/bags.py`` measures both).

Only the page headers are parsed (Thrift compact protocol, the Parquet format's own encoding). The fast path is
taken only when every check below holds; otherwise :func:`read_plain_float_column` returns ``False`` and the caller
reads the file with pyarrow, which handles everything else (compression, dictionary pages, float16, nulls):

- the column's physical type is FLOAT, its codec UNCOMPRESSED, and it has no dictionary page;
- every data page (v1 or v2) is PLAIN-encoded and holds exactly as many values as levels (no nulls, no empty
  lists), and each v2 page, which states its row count, holds exactly ``rows × d`` values;
- the pages of each row group hold exactly ``rows × d`` values, and the row groups fill the slot exactly.

The ``d`` values per row come from the Arrow schema (``FixedSizeList<d>``) that the caller has already checked.

The pages come from an open file's descriptor, or from a :class:`ChunkBuffer`: the bytes of the column chunks fetched
with one ranged read (an object store's ranged GET, :func:`read_plain_float_column_ranged`), parsed the same way.
"""

from __future__ import annotations

import os
import struct

import numpy as np
import pyarrow.parquet as pq

# Thrift compact protocol type ids
_BOOL_TRUE, _BOOL_FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT = range(1, 13)
# parquet.thrift
_DATA_PAGE, _DATA_PAGE_V2 = 0, 3
_PLAIN, _RLE = 0, 3
#: Bytes read for a page header at first (headers of plain float pages are a few dozen); grown 4× until it parses.
_HEADER_READ = 256


class ChunkBuffer:
    """Bytes of a file from offset ``base`` on (one ranged read), read as the file would be at those offsets."""

    __slots__ = ("buf", "base")

    def __init__(self, buf: bytes | memoryview, base: int) -> None:
        self.buf, self.base = memoryview(buf), base

    def pread(self, n: int, pos: int) -> bytes:
        i = pos - self.base
        if i < 0:
            raise ValueError(f"byte {pos} lies before the fetched range (from byte {self.base})")
        return bytes(self.buf[i : i + n])

    def readinto(self, view: memoryview, pos: int) -> int:
        i = pos - self.base
        chunk = self.buf[max(i, 0) : max(i, 0) + len(view)] if i >= 0 else self.buf[:0]
        view[: len(chunk)] = chunk
        return len(chunk)


def _pread(src: int | ChunkBuffer, n: int, pos: int) -> bytes:
    return os.pread(src, n, pos) if isinstance(src, int) else src.pread(n, pos)


class _NeedMore(Exception):
    """The header buffer ended inside the header; read more bytes and parse again."""


class _Compact:
    """Just enough of Thrift's compact protocol to read a Parquet ``PageHeader`` into nested dicts."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes):
        self.buf, self.pos = buf, 0

    def _byte(self) -> int:
        if self.pos >= len(self.buf):
            raise _NeedMore
        b = self.buf[self.pos]
        self.pos += 1
        return b

    def _varint(self) -> int:
        out = shift = 0
        while True:
            b = self._byte()
            out |= (b & 0x7F) << shift
            if not b & 0x80:
                return out
            shift += 7

    def _zigzag(self) -> int:
        v = self._varint()
        return (v >> 1) ^ -(v & 1)

    def _skip(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise _NeedMore
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def _value(self, ttype: int):
        if ttype in (_BOOL_TRUE, _BOOL_FALSE):  # in a struct field the type id carries the value
            return ttype == _BOOL_TRUE
        if ttype == _BYTE:
            return self._byte()
        if ttype in (_I16, _I32, _I64):
            return self._zigzag()
        if ttype == _DOUBLE:
            return struct.unpack("<d", self._skip(8))[0]
        if ttype == _BINARY:
            return self._skip(self._varint())
        if ttype in (_LIST, _SET):
            head = self._byte()
            size, etype = head >> 4, head & 0x0F
            if size == 15:
                size = self._varint()
            if etype in (_BOOL_TRUE, _BOOL_FALSE):  # list elements: one byte each
                return [self._byte() == 1 for _ in range(size)]
            return [self._value(etype) for _ in range(size)]
        if ttype == _MAP:
            size = self._varint()
            if not size:
                return {}
            kv = self._byte()
            return {self._value(kv >> 4): self._value(kv & 0x0F) for _ in range(size)}
        if ttype == _STRUCT:
            return self.struct()
        raise ValueError(f"unknown Thrift compact type {ttype}")

    def struct(self) -> dict[int, object]:
        out: dict[int, object] = {}
        fid = 0
        while True:
            head = self._byte()
            if head == 0:  # STOP
                return out
            delta, ttype = head >> 4, head & 0x0F
            fid = fid + delta if delta else self._zigzag()
            out[fid] = self._value(ttype)


def _page_header(fd: int | ChunkBuffer, pos: int, end: int) -> tuple[dict[int, object], int]:
    """The ``PageHeader`` at ``pos`` and its length in bytes."""
    size = _HEADER_READ
    while True:
        buf = _pread(fd, min(size, end - pos), pos)
        try:
            proto = _Compact(buf)
            return proto.struct(), proto.pos
        except _NeedMore:
            if pos + size >= end:
                raise ValueError(f"page header at byte {pos} runs past its column chunk") from None
            size *= 4


def _read_exact(fd: int | ChunkBuffer, view: memoryview, pos: int) -> None:
    while len(view):
        got = os.preadv(fd, [view], pos) if isinstance(fd, int) else fd.readinto(view, pos)
        if got <= 0:
            raise ValueError(f"file ended at byte {pos}, inside a data page")
        view, pos = view[got:], pos + got


def read_plain_float_column(
    fd: int | ChunkBuffer, pf: pq.ParquetFile, column: int, dim: int, out: np.ndarray
) -> bool:
    """Read float32 list column ``column`` (``dim`` values per row) into ``out`` (``(rows, dim)``).

    ``pf`` is the file's opened :class:`pyarrow.parquet.ParquetFile` (its footer gives the chunk offsets) and ``fd``
    a descriptor of the same open file (e.g. ``pyarrow.memory_map(path).fileno()``), not a fresh open of its path:
    featurize may replace the file by rename meanwhile, and the pages must come from the file the footer describes.
    Returns ``False``, with nothing promised about ``out``, when the column is not a plain uncompressed float32
    chunk this reader can take; raises :class:`ValueError` when the pages contradict the footer (a damaged file).
    """
    if isinstance(fd, int) and not hasattr(os, "preadv"):  # Windows: pyarrow reads it
        return False
    md = pf.metadata
    if out.dtype != np.float32 or not out.flags.c_contiguous or out.shape != (md.num_rows, dim):
        return False
    descr = pf.schema.column(column)
    rep_max, def_max = descr.max_repetition_level, descr.max_definition_level
    chunks = []
    for g in range(md.num_row_groups):
        cc = md.row_group(g).column(column)
        if cc.physical_type != "FLOAT" or cc.compression != "UNCOMPRESSED" or cc.has_dictionary_page:
            return False
        chunks.append((cc.data_page_offset, cc.total_compressed_size, md.row_group(g).num_rows))
    dest = memoryview(out).cast("B")
    written = 0
    for start, length, rows in chunks:
        pos, end, want = start, start + length, rows * dim
        got = 0
        while pos < end:
            header, hlen = _page_header(fd, pos, end)
            ptype, body = header.get(1), header.get(3)
            if not isinstance(body, int) or body < 0:
                raise ValueError(f"page at byte {pos} has no valid compressed_page_size")
            page_start, pos = pos + hlen, pos + hlen + body
            if ptype == _DATA_PAGE:
                dp = header.get(5)
                if not isinstance(dp, dict) or dp.get(2) != _PLAIN or {dp.get(3), dp.get(4)} != {_RLE}:
                    return False  # BIT_PACKED levels carry no length prefix
                n_levels, skip = dp.get(1), 0
                for present in (rep_max > 0, def_max > 0):  # v1: each level run is prefixed by its length
                    if present:
                        prefix = _pread(fd, 4, page_start + skip)
                        if len(prefix) != 4:
                            raise ValueError(f"file ended inside the data page at byte {page_start}")
                        (run,) = struct.unpack("<i", prefix)
                        skip += 4 + run
                page_rows = None
            elif ptype == _DATA_PAGE_V2:
                dp = header.get(8)
                if not isinstance(dp, dict) or dp.get(4) != _PLAIN or dp.get(2, 0) != 0 or dp.get(7) is True:
                    return False
                n_levels, skip, page_rows = dp.get(1), dp.get(5, 0) + dp.get(6, 0), dp.get(3)
            else:  # index pages and anything newer: let pyarrow judge
                return False
            n_bytes = body - skip
            if n_bytes < 0 or n_bytes % 4 or n_bytes // 4 != n_levels:
                return False  # nulls or empty lists: not a plain fixed-size float column
            n_values = n_bytes // 4
            if (page_rows is not None and page_rows * dim != n_values) or got + n_values > want:
                raise ValueError(f"data page at byte {page_start} holds {n_values} values, not whole rows")
            _read_exact(fd, dest[(written + got) * 4 : (written + got + n_values) * 4], page_start + skip)
            got += n_values
        if got != want:
            raise ValueError(
                f"a row group holds {got} embedding values where {rows} rows × {dim} need {want}"
            )
        written += got
    return True


def read_plain_float_column_ranged(
    read_range, pf: pq.ParquetFile, column: int, dim: int, out: np.ndarray
) -> bool:
    """:func:`read_plain_float_column` over one ranged read of the column's chunks: ``read_range(start, length)``
    returns those bytes of the file (an object store's ranged GET). Nothing is fetched when the footer already
    rules the fast path out."""
    md = pf.metadata
    spans = []
    for g in range(md.num_row_groups):
        cc = md.row_group(g).column(column)
        if cc.physical_type != "FLOAT" or cc.compression != "UNCOMPRESSED" or cc.has_dictionary_page:
            return False
        spans.append((cc.data_page_offset, cc.data_page_offset + cc.total_compressed_size))
    if not spans:
        return read_plain_float_column(ChunkBuffer(b"", 0), pf, column, dim, out)
    start, end = min(a for a, _ in spans), max(b for _, b in spans)
    data = read_range(start, end - start)
    if len(data) != end - start:
        raise ValueError(f"file ended at byte {start + len(data)}, inside the column chunks (to byte {end})")
    return read_plain_float_column(ChunkBuffer(data, start), pf, column, dim, out)
