"""Datasets as large as the white paper's, in the local S3 (moto), without their bytes.

moto keeps every object's body in memory, so a 1.9 TB dataset cannot be uploaded. What the controller
reads of the data is its listing (S3 ``ListObjectsV2``: keys and sizes), so :func:`stage_listing`
writes the keys straight into moto's S3 backend with empty bodies and sets each one's size to its
share of the dataset: a listing of the profile's movies that adds up to its size. Reading such an
object returns no bytes; nothing in cryopilot reads movie bodies (the cryoSPARC stand-in models the
jobs' files and sizes itself).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryopilot.domain.catalogue import get_profile

DEFAULT_ACCOUNT = "123456789012"


@dataclass(frozen=True)
class Listing:
    """What :func:`stage_listing` put under ``prefix``: ``files`` objects of ``bytes`` in all."""

    bucket: str
    prefix: str
    files: int
    bytes: int


def stage_listing(
    bucket: str, prefix: str, *, files: int, total_bytes: int, pattern: str, account_id: str = DEFAULT_ACCOUNT
) -> Listing:
    """``files`` objects under ``prefix`` (keys from ``pattern``, e.g. ``movies/m_{:05d}.tif``) whose
    listed sizes add up to ``total_bytes``. The bucket must exist in moto's backend."""
    from moto.s3.models import s3_backends  # a test double's internals: only the simulation uses it

    backend = s3_backends[account_id]["global"]
    base, extra = divmod(total_bytes, files)
    for i in range(files):
        key = backend.put_object(bucket, prefix + pattern.format(i), b"")
        key.contentsize = base + (1 if i < extra else 0)
    return Listing(bucket=bucket, prefix=prefix, files=files, bytes=total_bytes)


def stage_profile_data(bucket: str, prefix: str, profile: str, glob: str) -> Listing:
    """The white-paper dataset ``profile`` (its movie count and size, ``profiles.yaml``) as files
    matching the manifest's ``glob`` (``movies/*.tif`` → ``movies/movie_00000.tif``, ...)."""
    prof = get_profile(profile)
    directory, _, suffix = glob.rpartition("*")
    return stage_listing(
        bucket,
        prefix,
        files=prof.movies,
        total_bytes=round(prof.size_tb * 10**12),
        pattern=directory + "movie_{:05d}" + suffix,
    )
