"""The run's FSx for Lustre file system: found by the run's tag, exported to S3 through data
repository tasks.

- The file system is the one ParallelCluster made for the run's cluster. The cluster
  configuration's ``Tags`` are "propagated to all the cluster resources" (ParallelCluster user
  guide, Tags section), so the file system carries the run's ``cryopilot:run-id`` tag.
- An export is an ``EXPORT_TO_REPOSITORY`` data repository task (FSx API reference,
  CreateDataRepositoryTask): its ``Paths`` are relative to the file system's mount and must lie
  inside a data repository association; each file goes to that association's S3 prefix. Its
  completion report (``CompletionReport``, format ``REPORT_CSV_20191124``, scope
  ``FAILED_FILES_ONLY``) is delivered to ``{Path}/task-{id}/failures.csv``, one row per file that
  failed: ``FilePath``, ``FileStatus``, ``ErrorCode``.
- ``DescribeDataRepositoryTasks`` gives the task's ``Lifecycle`` (PENDING, EXECUTING, FAILED,
  SUCCEEDED, CANCELED, CANCELING), its ``Status`` counts and, when it failed, ``FailureDetails``.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from cryopilot.core.errors import ExportError, ThrottledError
from cryopilot.core.naming import TAG_RUN_ID

REPORT_FORMAT = "REPORT_CSV_20191124"
#: Lifecycles of a task that is still going (FSx API reference, DataRepositoryTask).
ACTIVE_LIFECYCLES = frozenset({"PENDING", "EXECUTING", "CANCELING"})


@dataclass(frozen=True)
class TaskState:
    """What DescribeDataRepositoryTasks says of one task."""

    task_id: str
    lifecycle: str
    total: int
    succeeded: int
    failed: int
    failure: str | None

    @property
    def active(self) -> bool:
        return self.lifecycle in ACTIVE_LIFECYCLES

    @property
    def complete(self) -> bool:
        """Succeeded with every file exported."""
        return self.lifecycle == "SUCCEEDED" and self.failed == 0


#: Error codes of a call worth making again (after boto3's own retries): throttling and 5xx.
_AGAIN = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "TooManyRequestsException",
        "InternalServerError",
        "ServiceUnavailable",
    }
)
#: Lifecycles of a file system that can take an export (FSx API reference, FileSystem).
_USABLE = frozenset({"AVAILABLE", "UPDATING"})
#: The tag ParallelCluster puts on a cluster's resources naming the cluster (its own tag; a
#: file system without it is matched by the run's tag alone).
TAG_CLUSTER_NAME = "parallelcluster:cluster-name"


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "ClientError"))


def _failed(exc: ClientError, what: str) -> Exception:
    """:class:`ThrottledError` (the state machine retries it) for throttling and 5xx answers,
    :class:`ExportError` for the others."""
    code = _code(exc)
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    if code in _AGAIN or status >= 500:
        return ThrottledError(f"{what}: FSx answered {code}; retried")
    return ExportError(f"{what} ({code})")


def find_file_system(fsx: Any, run_id: str, cluster_name: str | None = None) -> str:
    """The id of the run's FSx for Lustre file system: tagged ``cryopilot:run-id`` with the run,
    usable, and (when several are, e.g. a failed placement's cluster still being deleted) the one
    of the run's current cluster. ExportError if there is none or no way to choose."""
    found: list[tuple[str, str | None]] = []
    try:
        for page in fsx.get_paginator("describe_file_systems").paginate():
            for fs in page.get("FileSystems", []):
                tags = {t.get("Key"): t.get("Value") for t in fs.get("Tags") or []}
                usable = fs.get("Lifecycle", "AVAILABLE") in _USABLE
                if fs.get("FileSystemType") == "LUSTRE" and tags.get(TAG_RUN_ID) == run_id and usable:
                    found.append((str(fs["FileSystemId"]), tags.get(TAG_CLUSTER_NAME)))
    except ClientError as exc:
        raise _failed(exc, "cannot list the FSx file systems") from None
    if len(found) > 1 and cluster_name:
        found = [f for f in found if f[1] == cluster_name] or found
    if not found:
        raise ExportError(f"no usable FSx for Lustre file system is tagged {TAG_RUN_ID}={run_id}")
    if len(found) > 1:
        raise ExportError(
            f"{len(found)} FSx file systems are tagged {TAG_RUN_ID}={run_id}"
            f" ({', '.join(f[0] for f in found)}) and none is known to be the run's cluster's"
        )
    return found[0][0]


def start_export(fsx: Any, file_system_id: str, paths: list[str], report_path: str, token: str) -> str:
    """Start an EXPORT_TO_REPOSITORY task of ``paths``; its id. ``token`` makes a retried call
    start no second task (``ClientRequestToken``)."""
    try:
        answer = fsx.create_data_repository_task(
            Type="EXPORT_TO_REPOSITORY",
            FileSystemId=file_system_id,
            Paths=paths,
            Report={
                "Enabled": True,
                "Path": report_path,
                "Format": REPORT_FORMAT,
                "Scope": "FAILED_FILES_ONLY",
            },
            ClientRequestToken=token,
        )
    except ClientError as exc:
        failure = _failed(exc, "FSx refused the export task")
        if isinstance(failure, ExportError):
            message = exc.response.get("Error", {}).get("Message", "")
            failure = ExportError(f"FSx refused the export task ({_code(exc)}: {message})")
        raise failure from None
    return str(answer["DataRepositoryTask"]["TaskId"])


def describe_task(fsx: Any, task_id: str) -> TaskState:
    try:
        answer = fsx.describe_data_repository_tasks(TaskIds=[task_id])
    except ClientError as exc:
        raise _failed(exc, f"cannot read the export task {task_id}") from None
    (task,) = answer["DataRepositoryTasks"]
    status = task.get("Status") or {}
    return TaskState(
        task_id=task_id,
        lifecycle=str(task["Lifecycle"]),
        total=int(status.get("TotalCount") or 0),
        succeeded=int(status.get("SucceededCount") or 0),
        failed=int(status.get("FailedCount") or 0),
        failure=(task.get("FailureDetails") or {}).get("Message"),
    )


def failed_files(s3: Any, report_path: str, task_id: str) -> list[tuple[str, str]]:
    """(file path, error code) of each file the task's completion report lists; [] if there is
    no report (a task that failed before it exported anything may write none). The report is
    delivered to ``{Path}/task-{id}/failures.csv``; whether ``{id}`` is the whole TaskId (itself
    ``task-…``) is not documented, so the report is the ``failures.csv`` under ``Path`` whose key
    names the task."""
    bucket, _, prefix = report_path.removeprefix("s3://").partition("/")
    prefix = prefix.rstrip("/") + "/"
    try:
        listing = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
        keys = [
            o["Key"]
            for o in listing.get("Contents", [])
            if o["Key"].endswith("/failures.csv") and task_id.removeprefix("task-") in o["Key"]
        ]
        if not keys:
            return []
        body = s3.get_object(Bucket=bucket, Key=keys[0])["Body"].read().decode("utf-8", "replace")
    except ClientError:
        return []
    rows = []
    for row in csv.reader(io.StringIO(body)):
        if len(row) >= 3 and row[0] != "FilePath":
            rows.append((row[0], row[2]))
    return rows
