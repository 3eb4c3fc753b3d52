"""The head-node agent's resampling of a reference map to the data's pixel size: a density known in
Å (a Gaussian off the centre) sampled at one pixel size, resampled, must equal the same density
sampled at the other, on the same box."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest
from cryopilot_agent.resample import (
    ResampleError,
    _pad,
    interpolation_matrix,
    read_mrc,
    resample,
    resample_file,
)
from cryosparc import mrc

SIGMA_A = 3.0
OFFSET_A = (3.0, -2.0, 5.0)  # (x, y, z) from the box centre


def blob(box: int, pixel_A: float, dims: int = 3) -> np.ndarray:
    """A Gaussian of SIGMA_A at OFFSET_A from the box centre (index box // 2), sampled at pixel_A."""
    axes = np.meshgrid(*([(np.arange(box) - box // 2) * pixel_A] * dims), indexing="ij")
    # axes are (z, y, x) for a map, (y, x) for an image
    offsets = OFFSET_A[:dims][::-1]
    r2 = sum((a - o) ** 2 for a, o in zip(axes, offsets, strict=True))
    return np.exp(-r2 / (2 * SIGMA_A**2)).astype(np.float32)


@pytest.mark.parametrize(
    ("from_A", "to_A"),
    [(0.85, 0.83), (0.83, 0.85), (0.83, 0.8305), (0.83 * 1.02, 0.83)],
    ids=["finer", "coarser", "0.06% off", "2% off"],
)
@pytest.mark.parametrize("box", [64, 65])
def test_a_map_resampled_is_the_same_density_at_the_new_pixel_size(
    box: int, from_A: float, to_A: float
) -> None:
    out = resample(blob(box, from_A), from_A, to_A)
    assert out.shape == (box, box, box)
    assert out.dtype == np.float32
    assert np.abs(out - blob(box, to_A)).max() < 1e-5


def test_without_resampling_the_error_would_show() -> None:
    """The check above can fail: the map at its old pixel size is far from the new sampling."""
    assert np.abs(blob(64, 0.85) - blob(64, 0.83)).max() > 1e-2


def test_an_asymmetric_map_keeps_its_axes() -> None:
    """z, y and x are resampled each as itself: a blob stretched along one axis stays so."""
    box, a, b = 48, 0.85, 0.83
    grid = np.meshgrid(*([(np.arange(box) - box // 2)] * 3), indexing="ij")

    def stretched(pixel: float) -> np.ndarray:
        z, y, x = (g * pixel for g in grid)
        return np.exp(-(x**2 / 18 + y**2 / 8 + (z - 2) ** 2 / 4)).astype(np.float32)

    assert np.abs(resample(stretched(a), a, b) - stretched(b)).max() < 1e-4


def test_a_constant_keeps_its_value_and_the_centre_stays_the_centre() -> None:
    for from_A, to_A in ((0.85, 0.83), (0.83, 0.85)):
        out = resample(np.full((32, 32, 32), 3.0, np.float32), from_A, to_A)
        assert np.allclose(out, 3.0, atol=1e-5)
    centred = np.zeros((33, 33, 33), np.float32)
    centred[16, 16, 16] = 1.0
    out = resample(centred, 0.85, 0.83)
    assert np.unravel_index(np.argmax(out), out.shape) == (16, 16, 16)


def test_the_interpolation_drops_what_the_coarser_grid_cannot_hold() -> None:
    """Growing the pixel by 2 %: the band stops below the new Nyquist frequency (no aliasing).
    At the same pixel size the matrix is the identity, but for an even box's Nyquist term."""
    assert np.allclose(interpolation_matrix(65, 65, 1.0), np.eye(65), atol=1e-5)
    signal = np.random.default_rng(1).standard_normal(64)
    spectrum = np.fft.fft(signal)
    spectrum[32] = 0
    no_nyquist = np.fft.ifft(spectrum).real
    assert np.allclose(interpolation_matrix(64, 64, 1.0) @ no_nyquist, no_nyquist, atol=1e-5)
    # 264 old pixels to 256 new ones 2 % wider: the old grid holds up to 131 cycles, the new one
    # less than 264 / 2.04 = 129.4
    coarse = interpolation_matrix(264, 256, 1.02)
    freqs = np.abs(np.fft.fft(coarse, axis=1))  # each row's spectrum over the old grid
    top = int(np.ceil(264 / (2 * 1.02))) - 1
    assert top == 129
    assert freqs[:, top + 1 : 264 - top].max() < 1e-4
    assert freqs[:, : top + 1].min() > 0.5


def test_the_map_is_padded_with_the_mean_of_its_edge_about_its_centre() -> None:
    """Past the old edge, the new pixels see the mean of the map's outermost pixels (every face),
    not the opposite face; the map's centre stays the padded box's centre."""
    data = np.zeros((4, 4, 4), np.float32)
    data[0] = 1.0  # one face at 1: the outer shell is 56 pixels, 16 of them at 1
    data[2, 2, 2] = 9.0  # the centre (index 4 // 2)
    padded = _pad(data, 8)
    assert padded.shape == (8, 8, 8)
    assert padded[4, 4, 4] == 9.0  # centre on centre
    assert padded[0, 0, 0] == pytest.approx(16 / 56)
    assert np.array_equal(padded[2:6, 2:6, 2:6], data)


def test_a_map_that_is_not_a_cube_or_too_large_is_refused() -> None:
    with pytest.raises(ResampleError, match="a map of 8 x 8 x 10 pixels is not a cube"):
        resample(np.zeros((8, 8, 10), np.float32), 0.85, 0.83)
    with pytest.raises(ResampleError, match="a map of 513 pixels a side; at most 512 are resampled"):
        resample(np.zeros((513, 513, 513), np.uint8), 0.85, 0.83)


def test_a_file_is_read_in_either_byte_order_and_written_at_the_new_pixel_size(tmp_path: os.PathLike) -> None:
    data = blob(48, 0.84)
    little = os.path.join(tmp_path, "map.mrc")
    mrc.write(little, data, 0.84)
    read, psize = read_mrc(little)
    assert np.array_equal(read, data)
    assert psize == pytest.approx(0.84)
    # the same map big-endian (MRC2014 machine stamp 0x11 0x11)
    with open(little, "rb") as fh:
        header = bytearray(fh.read(1024))
    words = struct.unpack("<256i", header)
    big = bytearray(struct.pack(">256i", *words))
    big[208:212] = header[208:212]
    big[212:216] = b"\x11\x11\x00\x00"
    big_path = os.path.join(tmp_path, "big.mrc")
    with open(big_path, "wb") as fh:
        fh.write(bytes(big) + data.astype(">f4").tobytes())
    assert np.array_equal(read_mrc(big_path)[0], data)

    target = os.path.join(tmp_path, "out", "map.mrc")
    done = resample_file(big_path, target, from_A=0.84, to_A=0.83)
    assert (done.box, done.pixel_size_A) == (48, 0.83)
    header_out, written = mrc.read(target)
    assert (header_out.nx, header_out.ny, header_out.nz) == (48, 48, 48)
    assert header_out.xlen / header_out.nx == pytest.approx(0.83)
    assert np.abs(written - blob(48, 0.83)).max() < 1e-5
    assert os.listdir(os.path.dirname(target)) == ["map.mrc"]  # no partial file left


def test_a_file_that_is_not_a_map_is_refused_in_one_line(tmp_path: os.PathLike) -> None:
    short = os.path.join(tmp_path, "short.mrc")
    with open(short, "wb") as fh:
        fh.write(b"not a map")
    with pytest.raises(ResampleError, match="less than an MRC header"):
        read_mrc(short)
    truncated = os.path.join(tmp_path, "cut.mrc")
    mrc.write(truncated, blob(16, 0.84), 0.84)
    with open(truncated, "r+b") as fh:
        fh.truncate(1024 + 100)
    with pytest.raises(ResampleError, match="25 of its 4096 values are in the file"):
        read_mrc(truncated)
    image = os.path.join(tmp_path, "image.mrc")
    mrc.write(image, blob(16, 0.84, dims=2), 0.84)
    with pytest.raises(ResampleError, match=r"image.mrc: a map of 1 x 16 x 16 pixels is not a cube"):
        resample_file(image, os.path.join(tmp_path, "x.mrc"), from_A=0.84, to_A=0.83)


def test_mode_0_is_read_as_cryosparc_reads_it_and_an_extended_header_is_skipped(
    tmp_path: os.PathLike,
) -> None:
    """cryosparc-tools reads MRC mode 0 as unsigned bytes (mrc.py, ``DT.UINT8 = 0``): a mask of 0
    and 255 is the same mask whether it is resampled or imported as it is. ``NSYMBT`` bytes of
    extended header lie between the header and the data."""
    values = np.array([0, 255, 248, 7] * 16, dtype=np.uint8).reshape(4, 4, 4)
    header = bytearray(1024)
    struct.pack_into("<4i", header, 0, 4, 4, 4, 0)
    struct.pack_into("<i", header, 92, 2048)
    path = os.path.join(tmp_path, "mask.mrc")
    with open(path, "wb") as fh:
        fh.write(bytes(header) + b"\xee" * 2048 + values.tobytes())
    read, psize = read_mrc(path)
    assert np.array_equal(read, values.astype(np.float32))
    assert psize is None  # no cell length in the header
    assert np.array_equal(mrc.read(path)[1], values)  # what cryosparc-tools reads of the same file
