"""Arrays on disk, a block at a time: what keeps a party's and the coordinator's memory bounded as
layers grow (d_in = 16384: one float64 K Kᵀ is 2 GiB).

- npz files written a member and a block of rows at a time (write_npz, BlockArray, RowSum) and
  opened memory-mapped (memmap_npz), with the pages of a block read dropped once used (drop_pages);
- C0 per module read on demand into a buffer the caller owns (LazyC0.read_into, c0_into);
- symmetric matrices stored as their packed upper triangle, read a block of rows at a time
  (upper_rows), the layout the solve reads (S_KK, C_acc);
- memory freed by the process handed back to the system (release_free_memory).
"""

from __future__ import annotations

import ctypes
import mmap
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

_MADV_DONTNEED = getattr(mmap, "MADV_DONTNEED", None)
try:
    _madvise = ctypes.CDLL(None, use_errno=True).madvise
    _madvise.argtypes, _madvise.restype = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int), ctypes.c_int
except (OSError, AttributeError):  # not Linux-like: pages stay until the kernel reclaims them
    _madvise = None


def drop_pages(view: np.ndarray) -> None:
    """Done with this contiguous part of a read-only memory-mapped file (np.memmap mode 'r', e.g.
    statistics on disk): its pages leave this process's resident set now instead of whenever the
    kernel reclaims them. They stay in the page cache, and a later read maps them again, so the
    data never changes. Anything else (memory the process owns) is left alone."""
    base = view
    while base is not None and not isinstance(base, np.memmap):
        base = getattr(base, "base", None)
    if base is None or getattr(base, "mode", None) != "r" or _madvise is None or _MADV_DONTNEED is None \
            or not view.flags.c_contiguous or view.nbytes == 0:
        return
    start, page = view.ctypes.data, mmap.PAGESIZE
    first, last = -(-start // page) * page, (start + view.nbytes) // page * page  # whole pages inside the view
    if last > first:
        _madvise(first, last - first, _MADV_DONTNEED)


try:
    _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
except (OSError, AttributeError):  # not glibc
    _malloc_trim = None


def release_free_memory() -> None:
    """Hands memory the process freed back to the system (glibc: malloc_trim). Every gRPC thread that
    parsed 1 MiB chunks keeps its own malloc arena, and glibc keeps what was freed in it: measured,
    0.5 GB more at 4 parties x 2 layers of 6400 x 1600 than at 2 x 1, all of it free memory."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def le_bytes(array: np.ndarray) -> memoryview:
    """A float64 array's little-endian bytes without a copy (where the machine is little-endian)."""
    return memoryview(np.ascontiguousarray(array, dtype="<f8").reshape(-1)).cast("B")


# ------------------------------------------------------------------------------------ npz, a block at a time

ROW_BLOCK_BYTES = 1 << 24  # 16 MiB of rows per write


class BlockArray:
    """An array written block by block: shape and dtype, and its rows' blocks in order (C order)."""

    def __init__(self, shape: tuple[int, ...], dtype, blocks: Iterable[np.ndarray]):
        self.shape, self.dtype, self.blocks = tuple(int(n) for n in shape), np.dtype(dtype), blocks


class RowSum(BlockArray):
    """a + b (b may be None), a block of rows at a time (a and b may be memory-mapped; a read
    block's file pages are dropped once it is summed)."""

    def __init__(self, a: np.ndarray, b: np.ndarray | None):
        rows = max(1, ROW_BLOCK_BYTES // max(1, a.nbytes // max(1, a.shape[0])))

        def blocks():
            for start in range(0, a.shape[0], rows):
                block = np.array(a[start:start + rows], dtype=np.float64)
                if b is not None:
                    block += b[start:start + rows]
                    drop_pages(b[start:start + rows])
                drop_pages(a[start:start + rows])
                yield block

        super().__init__(a.shape, np.float64, blocks())


def row_blocks(array: np.ndarray) -> BlockArray:
    rows = max(1, ROW_BLOCK_BYTES // max(1, array.nbytes // max(1, array.shape[0])))
    return BlockArray(array.shape, array.dtype, (array[i:i + rows] for i in range(0, array.shape[0], rows)))


def write_npz(path: str | Path, arrays: dict[str, np.ndarray | BlockArray]) -> Path:
    """An npz that np.load reads (uncompressed, as np.savez writes it), written a member at a time
    and a BlockArray a block at a time: no array needs to be whole in memory. Replaces `path`."""
    path = Path(path)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                if not isinstance(array, BlockArray):
                    array = np.asarray(array)
                    if array.dtype.hasobject:
                        raise ValueError(f"{name}: object arrays cannot be stored")
                    if array.ndim == 0 or not (array.flags.c_contiguous or array.flags.f_contiguous):
                        np.lib.format.write_array(member, array, allow_pickle=False)
                        continue
                    array = row_blocks(array)
                np.lib.format.write_array_header_1_0(member, {"descr": np.lib.format.dtype_to_descr(array.dtype),
                                                              "fortran_order": False, "shape": array.shape})
                written, expected = 0, int(np.prod(array.shape, dtype=np.int64)) * array.dtype.itemsize
                for block in array.blocks:
                    block = np.ascontiguousarray(block, dtype=array.dtype)
                    member.write(memoryview(block).cast("B"))
                    written += block.nbytes
                if written != expected:
                    raise ValueError(f"{name}: {written} bytes written, shape {array.shape} needs {expected}")
    return path


def memmap_npz(path: str | Path, min_bytes: int = 1 << 20) -> dict[str, np.ndarray]:
    """The arrays of an npz; those stored uncompressed (np.savez, write_npz) and of at least
    min_bytes are memory-mapped read-only, so opening the file costs no memory until, and only
    while, their values are read. Compressed or small members are read as np.load would."""
    arrays: dict[str, np.ndarray] = {}
    read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            key = info.filename[:-len(".npy")]
            mapped = None
            if info.compress_type == zipfile.ZIP_STORED and info.file_size >= min_bytes:
                raw.seek(info.header_offset)
                local = raw.read(30)
                if local[:4] != b"PK\x03\x04":
                    raise ValueError(f"{path}: member {info.filename} has no local header")
                name_bytes, extra_bytes = struct.unpack("<HH", local[26:30])
                raw.seek(info.header_offset + 30 + name_bytes + extra_bytes)
                version = np.lib.format.read_magic(raw)
                if version in read_header:
                    shape, fortran, dtype = read_header[version](raw)
                    if not dtype.hasobject and int(np.prod(shape, dtype=np.int64)) > 0:
                        mapped = np.memmap(path, dtype=dtype, mode="r", offset=raw.tell(), shape=shape,
                                           order="F" if fortran else "C")
            if mapped is None:
                with archive.open(info) as member:
                    mapped = np.lib.format.read_array(member, allow_pickle=False)
            arrays[key] = mapped
    return arrays


# ------------------------------------------------------------------------------------------------- C0


class LazyC0(Mapping):
    """C0 per edited module, read from its MEMIT-layout file when asked for, one module at a time, into
    one reused d x d buffer: however many layers are edited, a party holds one C0, and only while
    it needs one (its fingerprint at start, an HE round's solve). A value read is valid until
    another module is read: use each before asking for the next (c0_fingerprint and the HE solve do).

    The values are import_memit_stats(file).moment() in float64, bit for bit (the same division),
    read a block of rows at a time from the memory-mapped file."""

    ROWS_BYTES = 1 << 20  # rows converted at a time: small blocks leave the allocator nothing to keep

    def __init__(self, files: Mapping[str, Path]):
        """files: module name -> its MEMIT second-moment npz (pipeline.stats_file finds them)."""
        self.files = dict(files)
        self._buffer: torch.Tensor | None = None
        self._last: str | None = None

    def __getitem__(self, module: str) -> torch.Tensor:
        if module not in self.files:
            raise KeyError(module)
        if self._last != module:
            self._last = None
            d = self.dim(module)
            if self._buffer is None or tuple(self._buffer.shape) != (d, d):
                self._buffer = None
                self._buffer = torch.empty((d, d), dtype=torch.float64)
            self.read_into(module, self._buffer.numpy())
            self._last = module
        return self._buffer

    def dim(self, module: str) -> int:
        return int(self._mom2(module)[0].shape[0])

    def _mom2(self, module: str) -> tuple[np.ndarray, int]:
        from collabedit_secure.editing.covariance import CorruptStatsError

        path = self.files[module]
        try:
            arrays = memmap_npz(path)
            prefix = "mom2." if "mom2.mom2" in arrays else ""
            mom2, count = arrays[prefix + "mom2"], arrays[prefix + "count"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
            raise CorruptStatsError(f"{path}: not a readable MEMIT second-moment file ({error})") from error
        if mom2.ndim != 2 or mom2.shape[0] != mom2.shape[1] or count.size != 1 or int(count) < 1:
            raise CorruptStatsError(f"{path}: expected a square mom2 and a positive count, got {mom2.shape}, {count}")
        return mom2, int(count)

    def read_into(self, module: str, out: np.ndarray) -> np.ndarray:
        """C0 of `module` written into `out` (a d x d float64 array the caller owns), a block of rows
        at a time: the one copy of C0 the caller holds, e.g. as the solve's system (overwrite=True)."""
        from collabedit_secure.editing.covariance import CorruptStatsError

        mom2, count = self._mom2(module)
        d = mom2.shape[0]
        if out.shape != (d, d) or out.dtype != np.float64:
            raise ValueError(f"C0 of {module} is {d} x {d} float64; got an array {out.dtype} {out.shape}")
        rows = max(1, self.ROWS_BYTES // (8 * d))
        for first in range(0, d, rows):
            block = mom2[first:first + rows]
            np.copyto(out[first:first + rows], block, casting="safe")  # float32 -> float64: exact
            drop_pages(block)
            np.divide(out[first:first + rows], count, out=out[first:first + rows])  # moment(): mom2 / count
            if not np.isfinite(out[first:first + rows]).all():
                raise CorruptStatsError(f"{self.files[module]}: mom2 has NaN or Inf entries")
        return out

    def __contains__(self, module: object) -> bool:
        return module in self.files

    def __iter__(self):
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)

    def release(self) -> None:
        """Free the buffer (mask and plain parties need C0 only for its fingerprint)."""
        self._buffer, self._last = None, None


def c0_into(c0: Mapping, module: str, out: np.ndarray) -> np.ndarray:
    """C0 of `module` into `out`: read from its file (LazyC0) or copied from a tensor in memory."""
    if isinstance(c0, LazyC0):
        return c0.read_into(module, out)
    np.copyto(out, np.asarray(c0[module].detach().cpu().to(torch.float64)))
    return out


# ------------------------------------------------------------------------------ packed upper triangles


def packed_size(d: int) -> int:
    return d * (d + 1) // 2


def upper_rows(source: np.ndarray | str | Path, d: int, rows: int = 256) -> Iterator[tuple[int, list[np.ndarray]]]:
    """(first row, [row i's entries (i, i..d-1) for each row of the block]) of a symmetric d x d
    float64 matrix, given as its packed upper triangle or in full (an array, or a raw little-endian
    file of either size), a block of rows at a time; a file is memory-mapped and each block's pages
    dropped once read."""
    if isinstance(source, (str, Path)):
        n = Path(source).stat().st_size // 8
        if n not in (packed_size(d), d * d):
            raise ValueError(f"{source}: {n} values; a {d} x {d} symmetric matrix has {packed_size(d)} "
                             f"(packed) or {d * d}")
        source = np.memmap(source, dtype="<f8", mode="r", shape=(n,))
    flat = np.asarray(source).reshape(-1)
    if flat.size not in (packed_size(d), d * d):
        raise ValueError(f"{flat.size} values; a {d} x {d} symmetric matrix has {packed_size(d)} (packed) or {d * d}")
    packed = flat.size == packed_size(d)
    for first in range(0, d, rows):
        last = min(d, first + rows)
        if packed:
            start, end = first * d - first * (first - 1) // 2, last * d - last * (last - 1) // 2
            block = np.array(flat[start:end], dtype=np.float64)
            drop_pages(flat[start:end])
            yield first, np.split(block, np.cumsum([d - i for i in range(first, last - 1)]))
        else:
            block = np.array(flat[first * d:last * d], dtype=np.float64).reshape(-1, d)
            drop_pages(flat[first * d:last * d])
            yield first, [block[k, first + k:] for k in range(last - first)]


def packed_blocks(source: np.ndarray | str | Path, d: int) -> Iterator[np.ndarray]:
    """The packed upper triangle of a symmetric matrix (packed or full, as upper_rows reads it), in blocks."""
    for _, rows in upper_rows(source, d):
        yield np.concatenate(rows)


def add_upper(system: np.ndarray, source, scale: float | None = None) -> None:
    """system's upper triangle: (scale * itself, if scale is given) + the symmetric matrix `source`,
    row by row, in that order of operations (the kernels' assembly of lam C0 + C_acc)."""
    for first, rows in upper_rows(source, system.shape[0]):
        for offset, values in enumerate(rows):
            i = first + offset
            if scale is not None:
                system[i, i:] *= scale
            system[i, i:] += values
