"""``cryopilot-agent``: one verb per call, one JSON document on stdout.

    cryopilot-agent submit --project RUN_ID --spec-b64 B64
    cryopilot-agent status --project RUN_ID [--stage ID ...]
    cryopilot-agent kill   --project RUN_ID --stage ID
    cryopilot-agent export --project RUN_ID --stage ID --dest DIR [--partial]

Connection: ``CRYOSPARC_BASE_URL`` (default http://localhost:39000), ``CRYOSPARC_EMAIL`` and
``CRYOSPARC_PASSWORD``; or ``CRYOPILOT_CRYOSPARC_SECRET_ID`` naming a Secrets Manager secret holding
``{"email": ..., "password": ...}``. ``CRYOPILOT_PROJECT_ROOT`` (default /fsx/projects, on
FSx for Lustre) is where new projects are made; ``CRYOPILOT_FSX_MOUNT`` (default /fsx) is where the
FSx file system is mounted, under which ``export --dest`` (a path relative to it) lies. Exit status
0 with the verb's answer, 1 with an ``AgentFailure``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, TextIO

from cryopilot.protocol.agent import AgentFailure, StatusResult
from cryopilot.protocol.stage import PlannedStage
from pydantic import BaseModel, ValidationError

from cryopilot_agent import slurm

DEFAULT_BASE_URL = "http://localhost:39000"
DEFAULT_PROJECT_ROOT = "/fsx/projects"
DEFAULT_FSX_MOUNT = "/fsx"


class AgentConfigError(Exception):
    """The agent's environment does not say how to reach cryoSPARC."""


class _ArgumentError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # never print usage to stdout or exit
        raise _ArgumentError(message)


@dataclass(frozen=True)
class Settings:
    base_url: str
    email: str
    password: str
    project_root: str
    region: str | None
    fsx_mount: str = DEFAULT_FSX_MOUNT

    def __repr__(self) -> str:  # never show the password
        return (
            f"Settings(base_url={self.base_url!r}, email={self.email!r}, project_root={self.project_root!r})"
        )


def _region(env: Mapping[str, str]) -> str | None:
    return env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None


def settings_from_env(env: Mapping[str, str]) -> Settings:
    base_url = env.get("CRYOSPARC_BASE_URL") or DEFAULT_BASE_URL
    email = env.get("CRYOSPARC_EMAIL") or ""
    password = env.get("CRYOSPARC_PASSWORD") or ""
    secret_id = env.get("CRYOPILOT_CRYOSPARC_SECRET_ID")
    if secret_id and not (email and password):
        import boto3

        client = boto3.client("secretsmanager", region_name=_region(env))
        raw = client.get_secret_value(SecretId=secret_id).get("SecretString") or ""
        try:
            doc = json.loads(raw)
        except ValueError:
            raise AgentConfigError(f"secret {secret_id} is not JSON with email and password") from None
        if not isinstance(doc, dict):
            raise AgentConfigError(f"secret {secret_id} is not a JSON object")
        email = str(doc.get("email") or email)
        password = str(doc.get("password") or password)
        base_url = env.get("CRYOSPARC_BASE_URL") or str(doc.get("base_url") or base_url)
    if not email or not password:
        raise AgentConfigError(
            "no cryoSPARC credentials: set CRYOSPARC_EMAIL and CRYOSPARC_PASSWORD, "
            "or CRYOPILOT_CRYOSPARC_SECRET_ID"
        )
    return Settings(
        base_url=base_url.rstrip("/"),
        email=email,
        password=password,
        project_root=env.get("CRYOPILOT_PROJECT_ROOT") or DEFAULT_PROJECT_ROOT,
        region=_region(env),
        fsx_mount=env.get("CRYOPILOT_FSX_MOUNT") or DEFAULT_FSX_MOUNT,
    )


def _parser() -> _Parser:
    parser = _Parser(prog="cryopilot-agent", add_help=False)
    verbs = parser.add_subparsers(dest="verb", required=True, parser_class=_Parser)
    submit = verbs.add_parser("submit", add_help=False)
    submit.add_argument("--project", required=True)
    submit.add_argument("--spec-b64", required=True)
    status = verbs.add_parser("status", add_help=False)
    status.add_argument("--project", required=True)
    status.add_argument("--stage", action="append", default=[])
    kill = verbs.add_parser("kill", add_help=False)
    kill.add_argument("--project", required=True)
    kill.add_argument("--stage", required=True)
    requeue = verbs.add_parser("requeue", add_help=False)
    requeue.add_argument("--project", required=True)
    requeue.add_argument("--stage", required=True)
    requeue.add_argument("--lane", required=True)
    export = verbs.add_parser("export", add_help=False)
    export.add_argument("--project", required=True)
    export.add_argument("--stage", required=True)
    export.add_argument("--dest", required=True)
    export.add_argument("--partial", action="store_true")
    return parser


def decode_spec(b64: str) -> PlannedStage:
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("--spec-b64 is not base64") from None
    try:
        return PlannedStage.model_validate_json(raw)
    except ValidationError as exc:
        raise ValueError(f"--spec-b64 is not a PlannedStage: {exc.errors()[0]['msg']}") from None


def encode_spec(spec: PlannedStage) -> str:
    """What a caller passes as ``--spec-b64``."""
    return base64.b64encode(spec.model_dump_json().encode()).decode()


def _connect(settings: Settings) -> Any:
    """The client for ``settings.base_url``. ``CryoSPARC.__init__`` (cryosparc-tools' tools.py)
    defaults ``host`` and ``base_port`` to ``CRYOSPARC_MASTER_HOSTNAME`` and ``CRYOSPARC_BASE_PORT``
    as read when the module is imported, and refuses either together with a base URL; those can be
    set in a cryoSPARC master's environment, so both are passed as None."""
    from cryosparc.tools import CryoSPARC

    return CryoSPARC(
        settings.base_url,
        host=None,
        base_port=None,
        email=settings.email,
        password=settings.password,
    )


def run(args: argparse.Namespace, env: Mapping[str, str]) -> BaseModel:
    from cryopilot_agent.driver import Driver

    spec = decode_spec(args.spec_b64) if args.verb == "submit" else None
    settings = settings_from_env(env)
    driver = Driver(_connect(settings), project_root=settings.project_root, fsx_mount=settings.fsx_mount)
    if args.verb == "submit":
        assert spec is not None
        return driver.submit(args.project, spec)
    if args.verb == "status":
        return with_lanes(driver.status(args.project, list(args.stage)))
    if args.verb == "kill":
        return driver.kill(args.project, args.stage)
    if args.verb == "requeue":
        return driver.requeue(args.project, args.stage, args.lane)
    rel, local = export_dir(settings.fsx_mount, args.dest)
    if args.partial:
        return driver.export_partial(args.project, args.stage, rel, local)
    return driver.export(args.project, args.stage, rel, local)


def export_dir(fsx_mount: str, dest: str) -> tuple[str, str]:
    """``dest`` (relative to the FSx mount, e.g. ``results/results``) and the directory it is on
    this node; ValueError for a path that would leave the file system."""
    rel = PurePosixPath(dest)
    if rel.is_absolute() or not rel.parts or any(p in ("", ".", "..") for p in rel.parts):
        raise ValueError(f"--dest {dest!r} must be a relative path inside the FSx file system")
    return str(rel), os.path.join(fsx_mount, *rel.parts)


def with_lanes(result: StatusResult) -> StatusResult:
    """The status with the Slurm state of the lanes its stages' jobs run on (where Slurm answers)."""
    lanes = sorted({j.lane for stage in result.stages for j in stage.jobs if j.lane})
    if not lanes:
        return result
    try:
        states = slurm.lane_states(lanes, result.project_uid)
    except (OSError, subprocess.SubprocessError) as exc:
        return result.model_copy(update={"slurm_error": f"{type(exc).__name__}: {exc}"[:500]})
    return result.model_copy(update={"lanes": states})


def _scrub(message: str, env: Mapping[str, str]) -> str:
    secret = env.get("CRYOSPARC_PASSWORD")
    if secret:
        message = message.replace(secret, "***")
    return message


def main(
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
) -> int:
    """Run one verb; print one JSON document; 0 on success, 1 with an AgentFailure.

    ``stdout``: where the document goes (default: the process's stdout). When it is the process's
    stdout, anything else the client libraries print is sent to stderr so that stdout holds only
    the document. A caller that passes its own stream (the offline harness, which runs several
    agents in one process) gets the document there and nothing global is redirected.
    """
    env = os.environ if env is None else env
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = next((a for a in argv if not a.startswith("-")), "unknown")
    out = sys.stdout if stdout is None else stdout
    try:
        args = _parser().parse_args(argv)
        verb = args.verb
        quiet = contextlib.redirect_stdout(sys.stderr) if stdout is None else contextlib.nullcontext()
        with quiet:
            result = run(args, env)
        out.write(result.model_dump_json() + "\n")
        out.flush()
        return 0
    except Exception as exc:
        failure = AgentFailure(
            verb=verb,
            error_type="UsageError" if isinstance(exc, _ArgumentError) else type(exc).__name__,
            message=_scrub(str(exc), env)[:4000],
        )
        out.write(failure.model_dump_json() + "\n")
        out.flush()
        return 1
