"""Random access to rows of a plain-encoded embeddings column: where each row's values sit in the file.

featurize writes each slide's ``embedding`` column uncompressed and plain-encoded, float32 (physical FLOAT) or
float16 (FIXED_LEN_BYTE_ARRAY of 2 bytes), one value per level (no nulls). Every data page then holds whole rows:
a small header, the level runs, and ``rows × d`` raw little-endian values. :func:`page_map` walks the page headers
once (:mod:`sql._pages` parses them) and records, for each page, its first row and the byte offset of its first
value, so that row ``r`` is ``d`` values at a computable offset: :func:`read_rows` reads any rows with one
``pread`` each, :func:`read_column` reads them all, page by page, into one array. Files in any other layout give
``None`` and callers read them with pyarrow.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq

from slide2expr.sql._pages import _DATA_PAGE, _DATA_PAGE_V2, _PLAIN, _RLE, _page_header, _read_exact


@dataclass(frozen=True)
class PageMap:
    """Where the rows of one embeddings column chunk sit: ``rows`` (n_pages + 1,) first row of each page and then
    the row count; ``offsets`` (n_pages,) byte offset of each page's first value; ``dtype`` and ``dim`` of a row."""

    rows: np.ndarray
    offsets: np.ndarray
    dtype: np.dtype
    dim: int

    @property
    def n_rows(self) -> int:
        return int(self.rows[-1])

    @property
    def row_bytes(self) -> int:
        return self.dim * self.dtype.itemsize

    def offset_of(self, rows: np.ndarray) -> np.ndarray:
        """Byte offsets of the first value of each of ``rows`` (int64)."""
        rows = np.asarray(rows, dtype=np.int64)
        page = np.searchsorted(self.rows, rows, side="right") - 1
        return self.offsets[page] + (rows - self.rows[page]) * self.row_bytes


def _value_dtype(descr) -> np.dtype | None:
    if descr.physical_type == "FLOAT":
        return np.dtype("<f4")
    if (
        descr.physical_type == "FIXED_LEN_BYTE_ARRAY"
        and descr.length == 2
        and str(descr.logical_type) == "Float16"
    ):
        return np.dtype("<f2")
    return None


def _level_bytes(
    fd: int, header: dict, page_start: int, rep_max: int, def_max: int
) -> tuple[int, int] | None:
    """(bytes of levels before the values, number of values) of a plain data page; None for any other page."""
    if header.get(1) == _DATA_PAGE:
        dp = header.get(5)
        if not isinstance(dp, dict) or dp.get(2) != _PLAIN or {dp.get(3), dp.get(4)} != {_RLE}:
            return None
        skip = 0
        for present in (rep_max > 0, def_max > 0):  # v1: each level run is prefixed by its length
            if present:
                prefix = os.pread(fd, 4, page_start + skip)
                if len(prefix) != 4:
                    raise ValueError(f"file ended inside the data page at byte {page_start}")
                skip += 4 + struct.unpack("<i", prefix)[0]
        return skip, dp.get(1)
    if header.get(1) == _DATA_PAGE_V2:
        dp = header.get(8)
        if not isinstance(dp, dict) or dp.get(4) != _PLAIN or dp.get(2, 0) != 0 or dp.get(7) is True:
            return None
        return dp.get(5, 0) + dp.get(6, 0), dp.get(1)
    return None


def page_map(fd: int, pf: pq.ParquetFile, column: int, dim: int) -> PageMap | None:
    """The :class:`PageMap` of leaf column ``column`` (``dim`` values per row) of the open file ``pf``/``fd``.

    ``None`` when the column is not plain, uncompressed float32/float16 without nulls in every page; raises
    :class:`ValueError` when the pages contradict the footer (a damaged file).
    """
    md = pf.metadata
    descr = pf.schema.column(column)
    dtype = _value_dtype(descr)
    if dtype is None:
        return None
    rows, offsets, row = [], [], 0
    for g in range(md.num_row_groups):
        cc = md.row_group(g).column(column)
        if cc.compression != "UNCOMPRESSED" or cc.has_dictionary_page:
            return None
        pos, end = cc.data_page_offset, cc.data_page_offset + cc.total_compressed_size
        group_end = row + md.row_group(g).num_rows
        while pos < end:
            header, hlen = _page_header(fd, pos, end)
            body = header.get(3)
            if not isinstance(body, int) or body < 0:
                raise ValueError(f"page at byte {pos} has no valid compressed_page_size")
            page_start, pos = pos + hlen, pos + hlen + body
            levels = _level_bytes(
                fd, header, page_start, descr.max_repetition_level, descr.max_definition_level
            )
            if levels is None:
                return None
            skip, n_levels = levels
            n_bytes = body - skip
            if n_bytes < 0 or n_bytes % dtype.itemsize or n_bytes // dtype.itemsize != n_levels:
                return None  # nulls or empty lists
            n_values = n_bytes // dtype.itemsize
            if n_values % dim or row + n_values // dim > group_end:
                raise ValueError(f"data page at byte {page_start} holds {n_values} values, not whole rows")
            if n_values:
                rows.append(row)
                offsets.append(page_start + skip)
                row += n_values // dim
        if row != group_end:
            raise ValueError(f"row group {g} holds {row} rows of values where the footer says {group_end}")
    return PageMap(np.array([*rows, row], np.int64), np.array(offsets, np.int64), dtype, dim)


def read_rows(fd: int, pm: PageMap, rows: np.ndarray) -> np.ndarray:
    """``(len(rows), dim)`` values of ``rows`` (in the file's dtype), one ``pread`` per row."""
    out = np.empty((len(rows), pm.dim), dtype=pm.dtype)
    view = memoryview(out).cast("B")
    for i, off in enumerate(pm.offset_of(rows).tolist()):
        _read_exact(fd, view[i * pm.row_bytes : (i + 1) * pm.row_bytes], off)
    return out


def read_column(fd: int, pm: PageMap, out: np.ndarray | None = None) -> np.ndarray:
    """Every row, ``(n_rows, dim)`` in the file's dtype, read page by page into ``out`` (allocated when None)."""
    if out is None:
        out = np.empty((pm.n_rows, pm.dim), dtype=pm.dtype)
    view = memoryview(out).cast("B")
    for i, off in enumerate(pm.offsets.tolist()):
        a, b = int(pm.rows[i]) * pm.row_bytes, int(pm.rows[i + 1]) * pm.row_bytes
        _read_exact(fd, view[a:b], off)
    return out
