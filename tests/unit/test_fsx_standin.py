"""The FSx stand-in's reads: a file on the file system, or its linked S3 object loaded lazily."""

from __future__ import annotations

from pathlib import Path

from cryopilot_sim.fsx_standin import Association, lazy_reader


def test_a_linked_object_is_loaded_on_its_first_read_and_kept(tmp_path: Path) -> None:
    objects = {("data-bucket", "datasets/X/ref/map.mrc"): b"map bytes"}
    fetched: list[tuple[str, str]] = []

    def get_object(bucket: str, key: str) -> bytes | None:
        fetched.append((bucket, key))
        return objects.get((bucket, key))

    (tmp_path / "projects").mkdir()
    (tmp_path / "projects" / "local.mrc").write_bytes(b"written on the cluster")
    read = lazy_reader(str(tmp_path), [Association("/data", "data-bucket", "datasets/X/")], get_object)

    assert read("/fsx/projects/local.mrc") == b"written on the cluster"
    assert read("/fsx/data/ref/map.mrc") == b"map bytes"
    assert (tmp_path / "data" / "ref" / "map.mrc").read_bytes() == b"map bytes"
    assert read("/fsx/data/ref/map.mrc") == b"map bytes"  # the second read is the file's
    assert fetched == [("data-bucket", "datasets/X/ref/map.mrc")]
    # not linked, not in S3, not on the file system
    assert read("/fsx/results/map.mrc") is None
    assert read("/fsx/data/ref/absent.mrc") is None
    assert read("/shared/map.mrc") is None
    assert read("/fsx/../etc/passwd") is None
    assert read("/fsx/data/../../outside") is None
