"""Resampling a reference's map or mask to the data's pixel size, on the head node.

A repeat run's reference may have been made at a pixel size a little off the new data's (another
session, a recalibrated microscope; at most ``PIXEL_SIZE_TOLERANCE`` off, Validate refuses more).
Before the import job of such a map is made, the agent writes a copy at the data's pixel size
(:class:`cryopilot.protocol.stage.Resample`) and imports that.

How, for a box of ``N`` pixels at ``a`` Å wanted at ``b`` Å: each new pixel ``j`` (0 to ``N - 1``)
lies ``(j - N // 2) * b`` Å from the box centre, so at ``N // 2 + (j - N // 2) * b / a`` old
pixels; the map is evaluated there by trigonometric (Fourier) interpolation, one axis after the
other (a change of scale is separable): what a Fourier crop or pad does, at any ratio, not only at
the ratio of two box sizes.
Frequencies above the new Nyquist frequency are left out when the pixel grows, so none aliases.
The box is first padded with the mean of its edge, so that the few new pixels past the old edge
(a pixel grown by 2 % reaches 1 % past each side) see that mean, not the opposite edge. The box,
its centre (index ``N // 2``, cryoSPARC's and numpy's ``fftshift`` centre) and the values of the
density are kept. A sharp edge rings, as with any Fourier resampling: a 0/1 mask comes out between
about -0.3 and 1.2 at a 2 % change, harmless for the decoy it seeds, which the refinement low-passes
to 30 Å.

Only numpy, which cryosparc-tools needs, and cryosparc-tools' own MRC writer.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

#: Pixels of edge-mean padding on each side, beyond those the new pixels reach past the old edge.
PAD_MARGIN = 4

MRC_HEADER_BYTES = 1024
#: MRC modes (www.ccpem.ac.uk/mrc_format/mrc2014.php) and their numpy types, read as cryoSPARC reads
#: them (cryosparc-tools' mrc.py): mode 0 unsigned 8-bit, which MRC2014 calls signed; a file that
#: cryoSPARC would import as it is means the same resampled.
MODES: dict[int, str] = {0: "u1", 1: "i2", 2: "f4", 6: "u2", 12: "f2"}
#: The largest box resampled, ``cryopilot.domain.reference.MAX_RESAMPLE_BOX`` (Validate refuses a
#: larger map that would need it): the time grows as the box to the fourth power.
MAX_BOX = 512


class ResampleError(Exception):
    """The file cannot be resampled (not an MRC file this reads, not a cube, too big)."""


@dataclass(frozen=True)
class Resampled:
    """What :func:`resample_file` wrote."""

    path: str
    box: int
    pixel_size_A: float

    def describe(self, from_A: float) -> dict[str, Any]:
        return {"file": self.path, "box": self.box, "from_A": from_A, "pixel_size_A": self.pixel_size_A}


def read_mrc(path: str) -> tuple[np.ndarray, float | None]:
    """The file's data as float32 ``(sections, rows, columns)`` and the pixel size its header gives
    (X cell length / MX; None if unset). Both byte orders (MRC2014's machine stamp, bytes 213-214:
    0x44 0x44 little-endian, 0x11 0x11 big-endian; without a stamp, little-endian)."""
    with open(path, "rb") as fh:
        header = fh.read(MRC_HEADER_BYTES)
        if len(header) < MRC_HEADER_BYTES:
            raise ResampleError(f"{path}: {len(header)} bytes, less than an MRC header")
        order: Literal["<", ">"] = ">" if header[212:214] == b"\x11\x11" else "<"
        nx, ny, nz, mode = struct.unpack_from(f"{order}4i", header, 0)
        mx = struct.unpack_from(f"{order}i", header, 28)[0]
        xlen = struct.unpack_from(f"{order}f", header, 40)[0]
        nsymbt = struct.unpack_from(f"{order}i", header, 92)[0]
        if mode not in MODES:
            raise ResampleError(f"{path}: MRC mode {mode} is not one of {sorted(MODES)}")
        if not (0 < nx <= MAX_BOX and 0 < ny <= MAX_BOX and 0 < nz <= 100_000) or nsymbt < 0:
            raise ResampleError(f"{path}: the header gives {nx} x {ny} x {nz} pixels: not a map to resample")
        dtype = np.dtype(MODES[mode]).newbyteorder(order)
        fh.seek(MRC_HEADER_BYTES + nsymbt)
        count = nx * ny * nz
        data = np.fromfile(fh, dtype=dtype, count=count)
    if data.size != count:
        raise ResampleError(f"{path}: {data.size} of its {count} values are in the file")
    psize = float(xlen) / mx if mx > 0 and xlen > 0 else None
    return data.reshape(nz, ny, nx).astype(np.float32), psize


def _edge_mean(data: np.ndarray) -> float:
    """The mean of a map's outermost pixels (its six faces)."""
    inner = np.zeros(data.shape, dtype=bool)
    inner[1:-1, 1:-1, 1:-1] = True
    return float(data[~inner].mean(dtype=np.float64))


def _pad(data: np.ndarray, size: int) -> np.ndarray:
    """The map ``data`` padded to ``size`` pixels a side with its edge mean, centre (index
    ``s // 2``) on centre."""
    out = np.full((size, size, size), _edge_mean(data), dtype=np.float32)
    start = size // 2 - data.shape[0] // 2
    inside = slice(start, start + data.shape[0])
    out[inside, inside, inside] = data
    return out


def interpolation_matrix(size: int, box: int, ratio: float) -> np.ndarray:
    """``(box, size)``: row ``j`` gives new pixel ``j`` (of ``box``, each ``ratio`` old pixels
    wide) from the ``size`` old pixels, by trigonometric interpolation about the two centres. The
    band is the old grid's (frequencies ``|f| <= (size - 1) // 2``, the Nyquist term left out),
    cut below the new Nyquist frequency when the pixel grows (``ratio > 1``)."""
    top = (size - 1) // 2
    if ratio > 1:
        top = min(top, int(np.ceil(size / (2 * ratio))) - 1)
    at = size // 2 + (np.arange(box) - box // 2) * ratio  # new pixel centres, in old pixels
    t = at[:, None] - np.arange(size)[None, :]
    # sum over f = -top..top of cos(2 pi f t / size) = sin(pi (2 top + 1) t / size) / sin(pi t / size)
    den = np.sin(np.pi * t / size)
    num = np.sin(np.pi * (2 * top + 1) * t / size)
    close = np.abs(den) < 1e-9
    kernel = np.where(close, 2 * top + 1, num / np.where(close, 1.0, den))
    return (kernel / size).astype(np.float32)


def resample(data: np.ndarray, from_A: float, to_A: float) -> np.ndarray:
    """``data`` (a map ``(N, N, N)``) at ``to_A`` Å per pixel, same box."""
    if len(set(data.shape)) != 1 or data.ndim != 3:
        raise ResampleError(f"a map of {' x '.join(map(str, data.shape))} pixels is not a cube")
    box = data.shape[0]
    if box > MAX_BOX:
        raise ResampleError(f"a map of {box} pixels a side; at most {MAX_BOX} are resampled")
    ratio = to_A / from_A
    size = box + 2 * (int(np.ceil(box * max(0.0, ratio - 1) / 2)) + PAD_MARGIN)
    out = _pad(data.astype(np.float32), size)
    matrix = interpolation_matrix(size, box, ratio).T
    for axis in (0, 1, 2):  # one matrix product per axis: that axis last, the others flattened
        moved = np.ascontiguousarray(np.moveaxis(out, axis, -1))
        done = (moved.reshape(-1, moved.shape[-1]) @ matrix).reshape((*moved.shape[:-1], box))
        out = np.moveaxis(done, -1, axis)
    return np.ascontiguousarray(out, dtype=np.float32)


def resample_file(source: str, target: str, *, from_A: float, to_A: float) -> Resampled:
    """Write the map ``source`` resampled from ``from_A`` to ``to_A`` Å to ``target`` (complete or
    absent: written beside it, then renamed)."""
    from cryosparc import mrc

    data, _ = read_mrc(source)
    try:
        out = resample(data, from_A, to_A)
    except ResampleError as exc:
        raise ResampleError(f"{source}: {exc}") from None
    os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    partial = f"{target}.partial-{os.getpid()}"
    try:
        mrc.write(partial, out, to_A)
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return Resampled(path=target, box=out.shape[-1], pixel_size_A=to_A)
