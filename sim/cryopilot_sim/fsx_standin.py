"""FSx for Lustre as a run's cluster has it: the file system ParallelCluster makes, its data
repository associations, and the data repository tasks that export files to S3 (moto 5.2.5 serves
file systems but neither associations nor tasks).

What it follows (FSx API reference, CreateDataRepositoryTask, DescribeDataRepositoryTasks,
DataRepositoryTask, CompletionReport; FSx for Lustre user guide, "Data repository tasks"):

- A task's ``Paths`` are relative to the file system's mount. A path that is not valid makes the
  task fail (``FAILED``, with ``FailureDetails``); here a path is valid when it lies inside a data
  repository association and holds something.
- Each file goes to its association's S3 prefix, at its path below the association's directory.
- One task at a time on a file system: a second one while the first is ``PENDING`` or
  ``EXECUTING`` is refused with ``DataRepositoryTaskExecuting``.
- ``ClientRequestToken``: the same token starts no second task; the first is answered again.
- The completion report (``REPORT_CSV_20191124``) goes to ``{Path}/task-{id}/failures.csv``; its
  ``Path`` must lie inside an association's S3 prefix. With ``FAILED_FILES_ONLY`` it lists each
  file that failed: FilePath, FileStatus, ErrorCode.

Not documented, so chosen here and switchable: how long a task takes (``task_seconds`` of the
simulated clock, from creation to the end, whatever the bytes), whether the report CSV has a header
row (none is written), the error code of a file that failed (S3's error code when S3 refuses the
object, e.g. ``AccessDenied`` under a bucket policy; ``fail_next`` tasks fail every file with
:data:`FAILED_FILE_CODE`), and the text of ``FailureDetails``.

The files a task sees: what the head node wrote under its FSx mount (the agent's result files, a
real directory here) and the cryoSPARC stand-in's project files at their project directory.
"""

from __future__ import annotations

import os
import posixpath
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

FAILED_FILE_CODE = "ExportFailed"  # not documented: the stand-in's own code
MOUNT = "/fsx"


@dataclass(frozen=True)
class Association:
    """One data repository association: a directory of the file system linked to an S3 prefix."""

    file_system_path: str  # "/results"
    bucket: str
    prefix: str  # "runs/r/results/"

    @property
    def directory(self) -> str:
        return self.file_system_path.strip("/")

    def holds(self, rel: str) -> bool:
        return rel == self.directory or rel.startswith(self.directory + "/")

    def key_for(self, rel: str) -> str:
        return self.prefix + rel[len(self.directory) :].lstrip("/")


@dataclass
class SimFileSystem:
    file_system_id: str
    cluster_name: str
    #: the directory standing in for the head node's FSx mount
    local_root: str
    associations: list[Association]
    #: the cryoSPARC project files, by absolute path on the cluster (``/fsx/projects/...``)
    project_files: Callable[[], dict[str, bytes]] = dict

    def files(self) -> dict[str, bytes]:
        """Every file, by path relative to the mount."""
        found: dict[str, bytes] = {}
        for path, data in self.project_files().items():
            if path.startswith(MOUNT + "/"):
                found[path[len(MOUNT) + 1 :]] = data
        for dirpath, _, names in os.walk(self.local_root):
            for name in names:
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, self.local_root).replace(os.sep, "/")
                with open(full, "rb") as fh:
                    found[rel] = fh.read()
        return found


class FsxError(Exception):
    """An FSx API error: ``code`` and message, HTTP 400 (FSx API reference, Errors)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class FsxStandIn:
    now: Callable[[], float]
    #: puts one object into S3 (bucket, key, body)
    put_object: Callable[[str, str, bytes], None]
    region: str = "us-east-1"
    account_id: str = "123456789012"
    task_seconds: float = 120.0
    #: the next this many tasks fail every file (a switch for tests of the failure path)
    fail_next: int = 0
    file_systems: dict[str, SimFileSystem] = field(default_factory=dict)
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    _tokens: dict[str, str] = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def register(self, fs: SimFileSystem) -> None:
        with self._lock:
            self.file_systems[fs.file_system_id] = fs

    def forget(self, file_system_id: str) -> None:
        with self._lock:
            self.file_systems.pop(file_system_id, None)

    # ------------------------------------------------------------------ API
    def create_task(self, params: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            token = params.get("ClientRequestToken")
            if token and token in self._tokens:
                return {"DataRepositoryTask": self._answer(self.tasks[self._tokens[token]])}
            fs = self.file_systems.get(str(params.get("FileSystemId")))
            if fs is None:
                raise FsxError(
                    "FileSystemNotFound", f"File system {params.get('FileSystemId')} was not found"
                )
            if params.get("Type") != "EXPORT_TO_REPOSITORY":
                raise FsxError("BadRequest", f"task type {params.get('Type')!r} is not modelled here")
            for other in self.tasks.values():
                self._advance(other)
                if other["FileSystemId"] == fs.file_system_id and other["Lifecycle"] in (
                    "PENDING",
                    "EXECUTING",
                ):
                    raise FsxError(
                        "DataRepositoryTaskExecuting",
                        "An existing data repository task is currently executing on the file system.",
                    )
            report = params.get("Report") or {"Enabled": False}
            if report.get("Enabled") and _association_of_uri(fs, str(report.get("Path") or "")) is None:
                raise FsxError("BadRequest", "The report path must be within a linked data repository.")
            task_id = f"task-{uuid.uuid4().hex[:17]}"
            task = {
                "TaskId": task_id,
                "Type": "EXPORT_TO_REPOSITORY",
                "Lifecycle": "PENDING",
                "FileSystemId": fs.file_system_id,
                "Paths": list(params.get("Paths") or []),
                "Report": report,
                "CreationTime": self.now(),
                "ResourceARN": f"arn:aws:fsx:{self.region}:{self.account_id}:task/{task_id}",
                "Status": {"TotalCount": 0, "SucceededCount": 0, "FailedCount": 0},
                "_fail": self.fail_next > 0,
            }
            if self.fail_next > 0:
                self.fail_next -= 1
            if token:
                task["ClientRequestToken"] = token
                self._tokens[token] = task_id
            self.tasks[task_id] = task
            return {"DataRepositoryTask": self._answer(task)}

    def describe_tasks(self, params: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            ids = params.get("TaskIds") or list(self.tasks)
            missing = [i for i in ids if i not in self.tasks]
            if missing:
                raise FsxError("DataRepositoryTaskNotFound", f"Task {missing[0]} was not found")
            for i in ids:
                self._advance(self.tasks[i])
            return {"DataRepositoryTasks": [self._answer(self.tasks[i]) for i in ids]}

    # ------------------------------------------------------------------ the work
    def advance(self) -> None:
        """Do the work of every task whose time has come: its files go to S3 and it ends. Called as
        simulated time passes (the harness calls it after each Wait state), never from inside an
        API request: the S3 writes are requests of their own."""
        with self._lock:
            due = [
                t
                for t in self.tasks.values()
                if t["Lifecycle"] in ("PENDING", "EXECUTING")
                and not t.get("_exporting")
                and self.now() - t["CreationTime"] >= self.task_seconds
            ]
            for t in due:
                t["_exporting"] = True  # one caller does each task's work
        for task in due:
            self._export(task)

    def _advance(self, task: dict[str, Any]) -> None:
        """PENDING → EXECUTING as soon as anyone looks (the export itself is :meth:`advance`'s)."""
        if task["Lifecycle"] == "PENDING":
            task["Lifecycle"] = "EXECUTING"
            task.setdefault("StartTime", task["CreationTime"])

    def _export(self, task: dict[str, Any]) -> None:
        """The task's files to S3, its counts, its end and its completion report."""
        task.setdefault("StartTime", task["CreationTime"])
        fs = self.file_systems.get(task["FileSystemId"])
        files = fs.files() if fs is not None else {}
        chosen: dict[str, bytes] = {}
        bad: list[str] = []
        for path in task["Paths"]:
            found = {r: d for r, d in files.items() if r == path or r.startswith(path.rstrip("/") + "/")}
            if (
                fs is None
                or path.startswith("/")
                or not found
                or not any(a.holds(path) for a in fs.associations)
            ):
                bad.append(path)
            chosen.update(found)
        task["EndTime"] = self.now()
        if bad:
            task["Lifecycle"] = "FAILED"
            task["FailureDetails"] = {"Message": f"Path(s) not valid for export: {', '.join(bad)}"}
            return
        assert fs is not None
        failed: list[tuple[str, str]] = []
        for rel, data in sorted(chosen.items()):
            assoc = next(a for a in fs.associations if a.holds(rel))
            if task["_fail"]:
                failed.append((rel, FAILED_FILE_CODE))
                continue
            try:
                self.put_object(assoc.bucket, assoc.key_for(rel), data)
            except Exception as exc:  # S3 refused the file (a bucket policy): it fails, the rest go on
                code = getattr(exc, "response", {}).get("Error", {}).get("Code") or type(exc).__name__
                failed.append((rel, str(code)))
        report = task["Report"]
        report_assoc = _association_of_uri(fs, str(report.get("Path") or ""))
        if report.get("Enabled") and failed and report_assoc is not None:
            # the report is delivered before the task shows its end
            bucket, _, prefix = report["Path"].removeprefix("s3://").partition("/")
            rows = "".join(f"{rel},failed,{code}\n" for rel, code in failed)
            key = f"{prefix.rstrip('/')}/task-{task['TaskId']}/failures.csv".lstrip("/")
            try:
                self.put_object(bucket, key, rows.encode())
            except Exception:  # S3 refuses the report too (the same bucket policy): none is written
                task["_report_refused"] = True
        task["Status"] = {
            "TotalCount": len(chosen),
            "SucceededCount": len(chosen) - len(failed),
            "FailedCount": len(failed),
            "LastUpdatedTime": self.now(),
        }
        if failed:
            task["FailureDetails"] = {"Message": f"{len(failed)} file(s) failed to export"}
        task["Lifecycle"] = "FAILED" if failed else "SUCCEEDED"

    def _answer(self, task: dict[str, Any]) -> dict[str, Any]:
        """The task as the API answers it (times as epoch seconds, as the JSON protocol sends them)."""
        return {k: v for k, v in task.items() if not k.startswith("_")}


def _association_of_uri(fs: SimFileSystem, uri: str) -> Association | None:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    key = key.rstrip("/") + "/"
    for a in fs.associations:
        if a.bucket == bucket and key.startswith(a.prefix):
            return a
    return None


def associations_from_config(config: dict[str, Any]) -> list[Association]:
    """The data repository associations of the cluster configuration's FSx for Lustre storage."""
    found = []
    for storage in config.get("SharedStorage") or []:
        settings = storage.get("FsxLustreSettings") or {}
        for dra in settings.get("DataRepositoryAssociations") or []:
            bucket, _, prefix = str(dra["DataRepositoryPath"]).removeprefix("s3://").partition("/")
            found.append(Association(str(dra["FileSystemPath"]), bucket, prefix))
    return found


def lazy_reader(
    mount: str, associations: list[Association], get_object: Callable[[str, str], bytes | None]
) -> Callable[[str], bytes | None]:
    """How a node reads a file of the file system (a path below /fsx; None: no such file): the file
    in ``mount`` if it is there, else the S3 object a data repository association links it to,
    loaded on this first read and kept in ``mount`` (FSx for Lustre user guide, "Lazy load": a
    linked object's bytes come from S3 when its file is first read). ``get_object(bucket, key)``
    gives an object's bytes, None when it does not exist."""

    def read(path: str) -> bytes | None:
        if not path.startswith(MOUNT + "/"):
            return None
        rel = posixpath.normpath(path[len(MOUNT) + 1 :])
        if rel == "." or rel.startswith(".."):
            return None
        local = os.path.join(mount, *rel.split("/"))
        if os.path.isfile(local):
            with open(local, "rb") as fh:
                return fh.read()
        for association in (a for a in associations if a.holds(rel)):
            body = get_object(association.bucket, association.key_for(rel))
            if body is not None:
                os.makedirs(os.path.dirname(local), exist_ok=True)
                with open(local, "wb") as fh:
                    fh.write(body)
                return body
        return None

    return read
