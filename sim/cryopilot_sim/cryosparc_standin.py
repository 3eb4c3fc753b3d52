"""A local cryoSPARC 5 stand-in that the real cryosparc-tools client talks to.

The client (``cryosparc.tools.CryoSPARC``) fetches ``<base_url>/api/cmd/openapi.json``, builds one
Python function per operation from each operation's ``summary`` (``"jobs.enqueue"`` becomes
``api.jobs.enqueue``), its parameters (path parameters positional, query parameters by keyword) and
its request body (named after the body schema's ``title``), and decodes each response through the
model its ``$ref`` names (``#/components/schemas/Job`` → ``cryosparc.models.job.Job``). This server
publishes such a document for the operations it implements and answers them with documents that
validate against the client's own models.

It enforces the register of job types in ``cryopilot/presets/job_types.yaml`` (an unknown job type,
parameter, input or output name is a 422 the client raises as ``APIError``), runs queued jobs once
their inputs are complete for the minutes of ``profiles.yaml`` on a simulated clock, produces outputs
with plausible statistics and small real files, and injects faults (:meth:`CryoSparcStandIn.inject`,
:meth:`CryoSparcStandIn.fail_finish`) or a reference of the wrong protein
(:meth:`CryoSparcStandIn.wrong_reference`). Where cryoSPARC's behaviour is not documented, the
stand-in's choice is named as such and can be switched (``finish_seconds``, ``finishing_status``,
``monitor_seconds``, ``queue_rules``).

This module is the REST/RPC surface (the OpenAPI document, routes, handlers and the documents they
answer); the job model and its timing are in :mod:`cryopilot_sim.cryosparc_jobs`, what finished jobs
produce in :mod:`cryopilot_sim.cryosparc_outputs`.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
from cryopilot.domain.presets import JobTypeSpec, job_types
from cryosparc.dataset import Dataset

from cryopilot_sim.clock import Clock
from cryopilot_sim.cryosparc_bytes import JobBytes
from cryopilot_sim.cryosparc_jobs import (
    MONITOR_SECONDS,
    Connection,
    DurationFn,
    FaultKind,
    JobTiming,
    QueueRules,
    SimJob,
    SimProject,
    load_profiles,
)
from cryopilot_sim.cryosparc_jobs import (
    STAGE_OF_TYPE as STAGE_OF_TYPE,  # the stand-in's register, as its users import it
)
from cryopilot_sim.cryosparc_outputs import JobOutputs

API_PREFIX = "/api/cmd"
VERSION = "v5.0.3"
#: Seconds from Select 2D's ``finish`` to its completion. cryosparc-tools' custom-workflow example
#: calls ``interact("finish")`` and then ``wait_for_done()``: the job completes after the call
#: returns, once it has written its outputs. How long that takes is not documented; a stand-in figure.
FINISH_SECONDS = 20.0

#: The lanes headnode-setup.sh registers by default (one per Slurm queue of --lanes); a stand-in
#: attached to a cluster registers that cluster's queues instead (``CryoSparcStandIn.lanes``).
LANES = {"gpu8": 8, "gpu4": 4, "gpu1": 1}


#: Statuses of a job the scheduler holds (queued or launched to its end).
ACTIVE = ("queued", "launched", "started", "running", "waiting")


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat()


def _oid(n: int) -> str:
    return f"{n:024x}"


@dataclass
class Route:
    method: str
    path: str
    summary: str
    handler: Callable[..., Any]
    path_params: list[str]
    query: list[tuple[str, bool, dict[str, Any]]]
    body: tuple[str, str, dict[str, Any]] | None  # (mime, title, schema)
    response: tuple[str, dict[str, Any]] | None  # (mime, schema)
    auth: bool = True
    pattern: re.Pattern[str] = field(init=False)

    def __post_init__(self) -> None:
        regex = re.sub(r"\\\{([a-z_]+)\\\}", r"(?P<\1>[^/]+)", re.escape(self.path))
        self.pattern = re.compile(f"^{regex}$")


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _list_of(name: str) -> dict[str, Any]:
    return {"type": "array", "items": _ref(name)}


_STR: dict[str, Any] = {"type": "string"}
_INT: dict[str, Any] = {"type": "integer"}
_BOOL: dict[str, Any] = {"type": "boolean"}
_LIST_STR: dict[str, Any] = {"type": "array", "items": {"type": "string"}}
_ANY: dict[str, Any] = {}

_JOB_FIND_QUERY = [
    ("order", False, _INT),
    ("after", False, _STR),
    ("limit", False, _INT),
    ("project_uid", False, _LIST_STR),
    ("workspace_uid", False, _LIST_STR),
    ("uid", False, _LIST_STR),
    ("type", False, _LIST_STR),
    ("status", False, _LIST_STR),
    ("category", False, _LIST_STR),
    *[
        (f"{t}_at", False, {"type": "array", "items": _STR})
        for t in (
            "created",
            "updated",
            "queued",
            "started",
            "waiting",
            "completed",
            "killed",
            "failed",
            "exported",
        )
    ],
    ("deleted", False, _BOOL),
]


class CryoSparcStandIn(JobTiming, JobOutputs, JobBytes):
    """A cryoSPARC 5 instance in a thread: ``with CryoSparcStandIn(clock) as cs: url = cs.base_url``."""

    def __init__(
        self,
        clock: Clock,
        profile: str = "cgrp",
        *,
        duration_fn: DurationFn | None = None,
        email: str = "pilot@example.com",
        password: str = "standin-password",  # noqa: S107 - a local test instance
        seed: int = 7,
    ) -> None:
        profiles = load_profiles()
        if profile not in profiles["profiles"]:
            raise ValueError(f"unknown profile {profile!r}; known: {', '.join(profiles['profiles'])}")
        self.clock = clock
        self.profile_name = profile
        self.profile: dict[str, Any] = profiles["profiles"][profile]
        self.duration_fn = duration_fn
        self.email = email
        self._password_sha = hashlib.sha256(password.encode()).hexdigest()
        self.seed = seed
        self.register: dict[str, JobTypeSpec] = job_types()
        self.projects: dict[str, SimProject] = {}
        self._tokens: set[str] = set()
        self._faults: list[dict[str, Any]] = []
        self._finish_faults: list[dict[str, Any]] = []
        self.monitor_seconds = MONITOR_SECONDS
        #: What queue requests cryoSPARC's docs leave open get (:class:`QueueRules`).
        self.queue_rules = QueueRules()
        #: Seconds from Select 2D's ``finish`` to its completion (0: complete within the call).
        self.finish_seconds = FINISH_SECONDS
        #: The status a finishing Select 2D shows until it completes. Not documented: "waiting"
        #: (the default: the job looks as if nothing had happened) or "running".
        self.finishing_status: Literal["waiting", "running"] = "waiting"
        self._launch_counts: dict[str, int] = {}
        self._lock = threading.RLock()
        self._counter = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.base_url = ""
        self.requests: list[tuple[str, str]] = []
        self.routes = self._routes()
        #: The cluster's compute nodes (``cryopilot_sim.slurm.SlurmNodes``): when set, a lane job
        #: starts once its node is up and runs at its GPU's speed; None = every job starts at once.
        self.slurm: Any = None
        #: The cluster lanes registered (name → GPUs per job).
        self.lanes: dict[str, int] = dict(LANES)
        #: The cluster's file systems (``cryopilot_sim.filesystems.Volumes``): when set, jobs write
        #: their bytes there and fail when one is full (``cryopilot_sim.cryosparc_bytes``).
        self.volumes: Any = None
        self._data_loaded: set[str] = set()
        self.other_protein_paths: list[str] = []
        self.read_fsx: Callable[[str], bytes | None] | None = None

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> str:
        """Serve on 127.0.0.1 (ephemeral port); return the base URL the client is given."""
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # answer small requests at once (no Nagle / delayed-ACK stalls on loopback)
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return

            def _serve(self, method: str) -> None:
                standin._handle(self, method)

            def do_GET(self) -> None:
                self._serve("get")

            def do_POST(self) -> None:
                self._serve("post")

            def do_PUT(self) -> None:
                self._serve("put")

            def do_DELETE(self) -> None:
                self._serve("delete")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="cryosparc-standin",
            daemon=True,
        )
        self._thread.start()
        host, port = self._server.server_address[:2]
        self.base_url = f"http://{host!s}:{port}"
        return self.base_url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> CryoSparcStandIn:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- faults

    def inject(self, kind: FaultKind, job_type: str, occurrence: int = 1) -> None:
        """Make the ``occurrence``-th job of ``job_type`` to run fail, be killed, or never end."""
        if kind not in ("fail", "kill", "stuck"):
            raise ValueError(f"unknown fault kind {kind!r}")
        if job_type not in self.register:
            raise ValueError(f"unknown job type {job_type!r}")
        with self._lock:
            self._faults.append({"kind": kind, "job_type": job_type, "occurrence": occurrence})

    def fail_finish(
        self, kind: Literal["timeout", "error"] = "timeout", *, acted: bool = False, times: int = 1
    ) -> None:
        """Make the next ``times`` Select 2D ``finish`` calls answer with an error: ``timeout`` (the
        job did not answer within the call's ``timeout``) or ``error`` (the call failed). With
        ``acted`` the job still got the request and finishes as usual; without, it keeps waiting.

        cryosparc-tools documents the ``timeout`` of ``JobController.interact`` ("maximum time to
        wait for the action to complete") but not what the server answers when it runs out, nor the
        failures an interactive call can meet; the status codes and messages here are the
        stand-in's.
        """
        if kind not in ("timeout", "error"):
            raise ValueError(f"unknown finish fault {kind!r}")
        with self._lock:
            self._finish_faults.extend({"kind": kind, "acted": acted} for _ in range(times))

    def wrong_reference(self, pattern: str = "*") -> None:
        """Model a repeat run whose reference is another protein than the dataset's: every file an
        Import 3D Volumes or Import Templates job imports whose path matches the fnmatch
        ``pattern`` is of that other protein (the path the job is given: a reference the agent
        resampled is imported from the run's project directory, ``*/cryopilot_resampled/*``). A
        heterogeneous refinement seeded with it then keeps few particles in the reference's class,
        every class stays at junk resolutions, and the refinement that follows ends far from the
        dataset's resolution (:meth:`~cryopilot_sim.cryosparc_outputs.JobOutputs._class_model`).

        This is the stand-in's model, not cryoSPARC's documented behaviour: what a real instance
        produces from a wrong reference is not specified anywhere (it depends on the two proteins);
        the model only has it fail the way the repeat run's checks must notice.
        """
        with self._lock:
            self.other_protein_paths.append(pattern)

    # ---------------------------------------------------------------- HTTP plumbing

    def _handle(self, req: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(req.path)
        path = url.path
        self.requests.append((method.upper(), path))
        length = int(req.headers.get("Content-Length") or 0)
        raw = req.rfile.read(length) if length else b""
        try:
            if not path.startswith(API_PREFIX):
                raise ApiError(404, f"not found: {path}")
            sub = path[len(API_PREFIX) :] or "/"
            if method == "get" and sub == "/openapi.json":
                self._send_json(req, 200, self.openapi())
                return
            route, match = self._match(method, sub)
            if route.auth:
                auth = req.headers.get("Authorization", "")
                token = auth[len("Bearer ") :] if auth.startswith("Bearer ") else ""
                if token not in self._tokens:
                    raise ApiError(401, "Not authenticated")
            args = self._arguments(route, match, parse_qs(url.query, keep_blank_values=True), raw, req)
            with self._lock:
                self._tick()
                result = route.handler(**args)
            if route.response is None:
                req.send_response(204)
                req.send_header("Content-Length", "0")
                req.end_headers()
                return
            mime = route.response[0]
            if mime == "application/json":
                self._send_json(req, 200, result)
            else:
                body = result if isinstance(result, bytes) else b""
                req.send_response(200)
                req.send_header("Content-Type", mime)
                req.send_header("Content-Length", str(len(body)))
                req.end_headers()
                req.wfile.write(body)
        except ApiError as exc:
            self._send_json(req, exc.status, {"detail": exc.message})
        except Exception as exc:  # a bug in the stand-in: answer 500, never hang the client
            self._send_json(req, 500, {"detail": f"{type(exc).__name__}: {exc}"})

    @staticmethod
    def _send_json(req: BaseHTTPRequestHandler, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        req.send_response(status)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        req.wfile.write(body)

    def _match(self, method: str, path: str) -> tuple[Route, re.Match[str]]:
        for route in self.routes:
            if route.method == method and (m := route.pattern.match(path)):
                return route, m
        raise ApiError(404, f"no operation {method.upper()} {path}")

    @staticmethod
    def _convert(raw_values: list[str], schema: dict[str, Any]) -> Any:
        kind = schema.get("type")
        if kind == "array":
            return list(raw_values)
        value = raw_values[-1]
        if kind == "integer":
            return int(value)
        if kind == "boolean":
            return value.lower() == "true"
        return value

    def _arguments(
        self,
        route: Route,
        match: re.Match[str],
        query: dict[str, list[str]],
        raw: bytes,
        req: BaseHTTPRequestHandler,
    ) -> dict[str, Any]:
        args: dict[str, Any] = {name: unquote(match.group(name)) for name in route.path_params}
        for name, required, schema in route.query:
            if name in query:
                args[name] = self._convert(query[name], schema)
            elif required:
                raise ApiError(422, f"missing query parameter {name!r}")
        if route.body is not None:
            mime, title, _ = route.body
            key = title.lower().replace(" ", "_")
            if mime == "application/json":
                args[key] = json.loads(raw) if raw else None
            else:
                form = parse_qs(raw.decode(), keep_blank_values=True)
                args[key] = {k: v[-1] for k, v in form.items()}
        return args

    # ---------------------------------------------------------------- OpenAPI

    def openapi(self) -> dict[str, Any]:
        paths: dict[str, dict[str, Any]] = {}
        schemas: dict[str, Any] = {}
        for r in self.routes:
            op: dict[str, Any] = {"summary": r.summary, "operationId": r.summary.replace(".", "_")}
            params = [{"name": p, "in": "path", "required": True, "schema": _STR} for p in r.path_params] + [
                {"name": n, "in": "query", "required": req, "schema": s} for n, req, s in r.query
            ]
            if params:
                op["parameters"] = params
            if r.body is not None:
                mime, title, schema = r.body
                op["requestBody"] = {
                    "required": True,
                    "content": {mime: {"schema": {"title": title, **schema}}},
                }
            if r.response is None:
                op["responses"] = {"204": {"description": "Successful Response"}}
            else:
                mime, schema = r.response
                op["responses"] = {
                    "200": {"description": "Successful Response", "content": {mime: {"schema": schema}}}
                }
                for ref in re.findall(r"#/components/schemas/(\w+)", json.dumps(schema)):
                    schemas[ref] = {"title": ref, "type": "object"}
            paths.setdefault(r.path, {})[r.method] = op
        return {
            "openapi": "3.1.0",
            "info": {"title": "CryoSPARC API (cryopilot stand-in)", "version": VERSION},
            "paths": paths,
            "components": {"schemas": schemas},
        }

    def _routes(self) -> list[Route]:
        def route(
            method: str,
            path: str,
            summary: str,
            handler: Callable[..., Any],
            *,
            query: list[tuple[str, bool, dict[str, Any]]] | None = None,
            body: tuple[str, str, dict[str, Any]] | None = None,
            response: tuple[str, dict[str, Any]] | None = ("application/json", _ANY),
            auth: bool = True,
        ) -> Route:
            return Route(
                method,
                path,
                summary,
                handler,
                re.findall(r"\{([a-z_]+)\}", path),
                query or [],
                body,
                response,
                auth,
            )

        j = "application/json"
        job = (j, _ref("Job"))
        pj = "/projects/{project_uid}/jobs/{job_uid}"
        return [
            route("get", "/health", "health", lambda: "OK", response=(j, _STR), auth=False),
            route(
                "post",
                "/login",
                "login",
                self._login,
                body=("application/x-www-form-urlencoded", "Body_login", {"type": "object"}),
                response=(j, _ref("Token")),
                auth=False,
            ),
            route("get", "/config/version", "config.get_version", lambda: VERSION, response=(j, _STR)),
            route("get", "/users/me", "users.me", self._me, response=(j, _ref("User"))),
            route(
                "get", "/job_register", "job_register", self._job_register, response=(j, _ref("JobRegister"))
            ),
            route(
                "get",
                "/resources/lanes",
                "resources.find_lanes",
                self._lanes,
                response=(j, _list_of("SchedulerLane")),
            ),
            route(
                "get",
                "/projects",
                "projects.find",
                self._find_projects,
                query=[("order", False, _INT), ("after", False, _STR), ("limit", False, _INT)],
                response=(j, _list_of("Project")),
            ),
            route(
                "post",
                "/projects",
                "projects.create",
                self._create_project,
                query=[("title", True, _STR), ("description", False, _STR), ("parent_dir", True, _STR)],
                response=(j, _ref("Project")),
            ),
            route(
                "get",
                "/projects/{project_uid}",
                "projects.find_one",
                self._find_project,
                response=(j, _ref("Project")),
            ),
            route(
                "get",
                "/projects/{project_uid}/directory",
                "projects.get_directory",
                lambda project_uid: self._project(project_uid).project_dir,
                response=(j, _STR),
            ),
            route(
                "get",
                "/projects/{project_uid}/files",
                "projects.download_file",
                self._download_file,
                query=[("path", False, _STR)],
                response=("application/octet-stream", {"type": "string", "format": "binary"}),
            ),
            route(
                "get",
                "/workspaces",
                "workspaces.find",
                self._find_workspaces,
                query=[
                    ("order", False, _INT),
                    ("after", False, _STR),
                    ("limit", False, _INT),
                    ("project_uid", False, _LIST_STR),
                ],
                response=(j, _list_of("Workspace")),
            ),
            route(
                "post",
                "/projects/{project_uid}/workspaces",
                "workspaces.create",
                self._create_workspace,
                query=[("title", True, _STR), ("description", False, _STR)],
                response=(j, _ref("Workspace")),
            ),
            route(
                "get",
                "/jobs",
                "jobs.find",
                self._find_jobs,
                query=_JOB_FIND_QUERY,
                response=(j, _list_of("Job")),
            ),
            route(
                "post",
                "/projects/{project_uid}/workspaces/{workspace_uid}/jobs",
                "jobs.create",
                self._create_job,
                query=[("type", True, _STR), ("title", False, _STR), ("description", False, _STR)],
                body=(j, "Params", {"type": "object"}),
                response=job,
            ),
            route("get", pj, "jobs.find_one", self._find_job, response=job),
            route("delete", pj, "jobs.delete", self._delete_job, response=None),
            route(
                "get",
                pj + "/status",
                "jobs.get_status",
                lambda project_uid, job_uid: self._job(project_uid, job_uid).status,
                response=(j, _STR),
            ),
            route(
                "get",
                pj + "/directory",
                "jobs.get_directory",
                lambda project_uid, job_uid: self._job(project_uid, job_uid).uid,
                response=(j, _STR),
            ),
            route(
                "put",
                pj + "/params/{param}",
                "jobs.set_param",
                self._set_param,
                body=(j, "Value", {}),
                response=job,
            ),
            route(
                "post",
                pj + "/connect/{input_name}",
                "jobs.connect",
                self._connect,
                query=[("source_output_name", True, _STR), ("source_job_uid", True, _STR)],
                response=job,
            ),
            route(
                "post",
                pj + "/enqueue",
                "jobs.enqueue",
                self._enqueue,
                query=[
                    ("lane", False, _STR),
                    ("hostname", False, _STR),
                    ("gpus", False, {"type": "array", "items": _INT}),
                    ("no_check_inputs_ready", False, _BOOL),
                ],
                response=job,
            ),
            route("post", pj + "/kill", "jobs.kill", self._kill, response=job),
            # cryosparc-tools' JobController.clear calls api.jobs.clear: "Clears a job to get it back
            # to building state (do not clear params or inputs)"
            route("post", pj + "/clear", "jobs.clear", self._clear, response=job),
            route(
                "put",
                pj + "/title",
                "jobs.set_title",
                self._set_title,
                query=[("title", True, _STR)],
                response=job,
            ),
            route(
                "put",
                pj + "/description",
                "jobs.set_description",
                self._set_description,
                query=[("description", True, _STR)],
                response=job,
            ),
            route(
                "get",
                pj + "/outputs/{output_name}/dataset",
                "jobs.load_output",
                self._load_output,
                query=[("version", False, _STR), ("slots", False, _LIST_STR)],
                response=(Dataset.media_type, {"type": "string", "format": "binary"}),
            ),
            route(
                "post",
                pj + "/interactive",
                "jobs.interactive_post",
                self._interactive,
                query=[("endpoint", True, _STR), ("timeout", False, _INT)],
                body=(j, "Body", {"type": "object"}),
                response=(j, _ANY),
            ),
        ]

    # ---------------------------------------------------------------- helpers

    def _next_id(self) -> int:
        self._counter += 1
        return self._counter

    def _project(self, project_uid: str) -> SimProject:
        p = self.projects.get(project_uid)
        if p is None:
            raise ApiError(404, f"Project {project_uid} not found")
        return p

    def _job(self, project_uid: str, job_uid: str) -> SimJob:
        job = self._project(project_uid).jobs.get(job_uid)
        if job is None:
            raise ApiError(404, f"Job {project_uid}-{job_uid} not found")
        return job

    def _spec(self, job_type: str) -> JobTypeSpec:
        spec = self.register.get(job_type)
        if spec is None:
            raise ApiError(422, f"Unknown job type {job_type!r}")
        return spec

    def _num_classes(self, job: SimJob) -> int:
        spec = self._spec(job.type)
        src = spec.classes_from or {}
        if "param" in src:
            default = spec.params[src["param"]].get("default", 1)
            return int(job.params.get(src["param"], default))
        if "input" in src:
            return max(1, sum(1 for c in job.connections if c.input == src["input"]))
        return 0

    def _output_names(self, job: SimJob) -> dict[str, str]:
        """Every output name the job has (per-class names expanded) and its type."""
        spec = self._spec(job.type)
        names: dict[str, str] = {}
        for pattern, out in spec.outputs.items():
            if "{k}" in pattern:
                for k in range(self._num_classes(job)):
                    names[pattern.replace("{k}", str(k))] = out["type"]
            else:
                names[pattern] = out["type"]
        return names

    @staticmethod
    def _check_type(name: str, value: Any, pspec: dict[str, Any]) -> None:
        if value is None:
            return
        kind = pspec.get("type")
        ok = {
            "integer": isinstance(value, int) and not isinstance(value, bool),
            "number": isinstance(value, int | float) and not isinstance(value, bool),
            "boolean": isinstance(value, bool),
            "string": isinstance(value, str),
        }.get(str(kind), True)
        if not ok:
            raise ApiError(422, f"Invalid value for parameter {name!r}: expected {kind}, got {value!r}")

    # ---------------------------------------------------------------- documents

    def _user_doc(self) -> dict[str, Any]:
        return {
            "_id": _oid(1),
            "name": "cryopilot",
            "first_name": "Cryo",
            "last_name": "Pilot",
            "emails": [{"address": self.email, "verified": True}],
            "roles": {"__global_roles__": ["admin"]},
            "lanes": list(self.lanes),
        }

    def _project_doc(self, p: SimProject) -> dict[str, Any]:
        return {
            "_id": _oid(p.num),
            "uid": p.uid,
            "uid_num": p.num,
            "title": p.title,
            "description": p.description,
            "project_dir": p.project_dir,
            "owner_user_id": _oid(1),
            "created_at": _iso(p.created_at),
            "size_last_updated": _iso(p.created_at),
        }

    def _workspace_doc(self, p: SimProject, w: dict[str, Any]) -> dict[str, Any]:
        return {
            "_id": w["_id"],
            "uid": w["uid"],
            "uid_num": int(w["uid"][1:]),
            "project_uid": p.uid,
            "project_uid_num": p.num,
            "workspace_type": "base",
            "title": w["title"],
            "description": w.get("description"),
        }

    def _job_doc(self, job: SimJob) -> dict[str, Any]:
        spec = self._spec(job.type)
        gpus = int(job.params.get("compute_num_gpus", 1 if spec.gpu else 0))
        inputs: dict[str, Any] = {}
        for name, ispec in spec.inputs.items():
            conns = [
                {"job_uid": c.job_uid, "output": c.output, "results": []}
                for c in job.connections
                if c.input == name
            ]
            inputs[name] = {
                "type": ispec["type"],
                "title": name.replace("_", " ").title(),
                "count_min": ispec.get("count_min", 0),
                "count_max": ispec.get("count_max", "inf"),
                "connections": conns,
            }
        status_num = [
            "building",
            "queued",
            "launched",
            "started",
            "running",
            "waiting",
            "completed",
            "killed",
            "failed",
        ].index(job.status)
        progress = self._progress(job)
        return {
            "_id": _oid(1000 + job.num),
            "uid": job.uid,
            "uid_num": job.num,
            "project_uid": job.project_uid,
            "project_uid_num": int(job.project_uid[1:]),
            "workspace_uids": [job.workspace_uid],
            "job_dir": job.uid,
            "job_dir_size_last_updated": _iso(job.created_at),
            "title": job.title,
            "description": job.description,
            "status": job.status,
            "status_num": status_num,
            "deleted": job.deleted,
            "build_errors": [],
            "created_at": _iso(job.created_at),
            "queued_at": _iso(job.queued_at),
            "started_at": self._iso_past(job.started_at),
            "launched_at": self._iso_past(job.launched_at),
            "running_at": self._iso_past(job.running_at),
            "waiting_at": self._iso_past(job.waiting_at),
            "completed_at": _iso(job.completed_at),
            "killed_at": _iso(job.killed_at),
            "failed_at": _iso(job.failed_at),
            "queued_to_lane": job.lane,
            "errors_run": [{"message": job.error, "warning": False}] if job.error else [],
            "progress": [{"progress": progress}] if progress is not None else [],
            "parents": sorted({c.job_uid for c in job.connections}),
            "spec": {
                "type": job.type,
                "params": dict(job.params),
                "inputs": inputs,
                "outputs": job.outputs,
                "ui_tile_width": 1,
                "ui_tile_height": 1,
                "resource_spec": {"cpu": 4, "gpu": gpus, "ram": 4},
            },
        }

    def _iso_past(self, t: float | None) -> str | None:
        """A timestamp the job has reached (a lane job's times are set ahead, when its node is known)."""
        return _iso(t) if t is not None and t <= self.clock.now() else None

    def _progress(self, job: SimJob) -> float | None:
        if job.status == "completed":
            return 1.0
        if job.status != "running" or job.running_at is None:
            return None
        if job.end_at is None:  # stuck: creeps towards, never reaches, the end
            return 0.5
        span = max(job.end_at - job.running_at, 1e-9)
        return max(0.0, min(0.99, (self.clock.now() - job.running_at) / span))

    # ---------------------------------------------------------------- handlers: session

    def _login(self, body_login: dict[str, str]) -> dict[str, Any]:
        if body_login.get("username") != self.email or body_login.get("password") != self._password_sha:
            raise ApiError(401, "Incorrect email or password")
        token = secrets.token_hex(16)
        self._tokens.add(token)
        return {"access_token": token, "token_type": "bearer"}

    def _me(self) -> dict[str, Any]:
        return self._user_doc()

    def _lanes(self) -> list[dict[str, Any]]:
        return [
            {"name": n, "type": "cluster", "title": f"{n} ({g} GPUs per job)"} for n, g in self.lanes.items()
        ]

    def _job_register(self) -> dict[str, Any]:
        specs = []
        for name, spec in self.register.items():
            specs.append(
                {
                    "type": name,
                    "title": spec.title,
                    "shorttitle": spec.title,
                    "description": spec.source,
                    "stability": "stable",
                    "category": spec.category,
                    "interactive": spec.interactive,
                    "inputs": {
                        k: {
                            "type": v["type"],
                            "title": k,
                            "count_min": v.get("count_min", 0),
                            "count_max": v.get("count_max", "inf"),
                        }
                        for k, v in spec.inputs.items()
                    },
                    "outputs": {k: {"type": v["type"], "title": k} for k, v in spec.outputs.items()},
                    "params": {
                        k: {"type": v["type"], "default": v.get("default"), "title": k}
                        for k, v in spec.params.items()
                    },
                }
            )
        return {"specs": specs, "categories": {}}

    # ---------------------------------------------------------------- handlers: projects, workspaces

    def _find_projects(
        self, order: int = 1, after: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        docs = sorted(
            (self._project_doc(p) for p in self.projects.values()),
            key=lambda d: d["_id"],
            reverse=order == -1,
        )
        if after:
            docs = [d for d in docs if (d["_id"] > after if order != -1 else d["_id"] < after)]
        return docs[:limit]

    def _create_project(self, title: str, parent_dir: str, description: str | None = None) -> dict[str, Any]:
        num = len(self.projects) + 1
        slug = re.sub(r"[^A-Za-z0-9]+", "-", title).strip("-") or "project"
        p = SimProject(
            uid=f"P{num}",
            num=num,
            title=title,
            description=description or "",
            project_dir=f"{parent_dir.rstrip('/')}/CS-{slug.lower()}",
            created_at=self.clock.now(),
        )
        self.projects[p.uid] = p
        return self._project_doc(p)

    def _find_project(self, project_uid: str) -> dict[str, Any]:
        return self._project_doc(self._project(project_uid))

    def _download_file(self, project_uid: str, path: str = "") -> bytes:
        p = self._project(project_uid)
        if path not in p.files:
            raise ApiError(404, f"File {path!r} not found in project {project_uid}")
        return p.files[path]

    def _find_workspaces(
        self, project_uid: list[str] | None = None, order: int = 1, after: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        docs = [
            self._workspace_doc(p, w)
            for p in self.projects.values()
            if not project_uid or p.uid in project_uid
            for w in p.workspaces.values()
        ]
        docs.sort(key=lambda d: d["_id"], reverse=order == -1)
        if after:
            docs = [d for d in docs if (d["_id"] > after if order != -1 else d["_id"] < after)]
        return docs[:limit]

    def _create_workspace(
        self, project_uid: str, title: str, description: str | None = None
    ) -> dict[str, Any]:
        p = self._project(project_uid)
        uid = f"W{len(p.workspaces) + 1}"
        w = {"_id": _oid(500_000 + self._next_id()), "uid": uid, "title": title, "description": description}
        p.workspaces[uid] = w
        return self._workspace_doc(p, w)

    # ---------------------------------------------------------------- handlers: jobs

    def _find_jobs(self, **query: Any) -> list[dict[str, Any]]:
        jobs = [
            j
            for p in self.projects.values()
            if not query.get("project_uid") or p.uid in query["project_uid"]
            for j in p.jobs.values()
        ]
        jobs = [j for j in jobs if j.deleted == bool(query.get("deleted", False))]
        if query.get("workspace_uid"):
            jobs = [j for j in jobs if j.workspace_uid in query["workspace_uid"]]
        if query.get("uid"):
            jobs = [j for j in jobs if j.uid in query["uid"]]
        if query.get("type"):
            jobs = [j for j in jobs if j.type in query["type"]]
        if query.get("status"):
            jobs = [j for j in jobs if j.status in query["status"]]
        docs = sorted(
            (self._job_doc(j) for j in jobs), key=lambda d: d["_id"], reverse=query.get("order") == -1
        )
        if query.get("after"):
            a = query["after"]
            docs = [d for d in docs if (d["_id"] > a if query.get("order") != -1 else d["_id"] < a)]
        return docs[: int(query.get("limit") or 100)]

    def _find_job(self, project_uid: str, job_uid: str) -> dict[str, Any]:
        return self._job_doc(self._job(project_uid, job_uid))

    def _create_job(
        self,
        project_uid: str,
        workspace_uid: str,
        type: str,
        params: dict[str, Any] | None = None,
        title: str = "",
        description: str = "",
    ) -> dict[str, Any]:
        p = self._project(project_uid)
        if workspace_uid not in p.workspaces:
            raise ApiError(404, f"Workspace {project_uid}-{workspace_uid} not found")
        spec = self._spec(type)
        params = params or {}
        for name, value in params.items():
            if name not in spec.params:
                raise ApiError(422, f"Job type {type} has no parameter {name!r}")
            self._check_type(name, value, spec.params[name])
        num = max((j.num for j in p.jobs.values()), default=0) + 1
        job = SimJob(
            uid=f"J{num}",
            num=num,
            project_uid=project_uid,
            workspace_uid=workspace_uid,
            type=type,
            title=title,
            description=description,
            params={k: v for k, v in params.items() if v is not None},
            created_at=self.clock.now(),
        )
        p.jobs[job.uid] = job
        return self._job_doc(job)

    def _delete_job(self, project_uid: str, job_uid: str) -> None:
        """api.pyi ``jobs.delete``: "Will kill (if running) and clearing the job before deleting".
        The job is marked deleted (models/job.py ``deleted``), not removed: its uid is not reused."""
        job = self._job(project_uid, job_uid)
        if job.status in ACTIVE:
            self._finish(job, "killed", self.clock.now())
        self._reset(job)
        job.deleted = True

    def _building(self, job: SimJob) -> None:
        if job.status != "building":
            raise ApiError(422, f"Job {job.project_uid}-{job.uid} is {job.status}, not building")

    def _set_param(self, project_uid: str, job_uid: str, param: str, value: Any) -> dict[str, Any]:
        job = self._job(project_uid, job_uid)
        self._building(job)
        spec = self._spec(job.type)
        if param not in spec.params:
            raise ApiError(422, f"Job type {job.type} has no parameter {param!r}")
        self._check_type(param, value, spec.params[param])
        job.params[param] = value
        return self._job_doc(job)

    def _connect(
        self, project_uid: str, job_uid: str, input_name: str, source_output_name: str, source_job_uid: str
    ) -> dict[str, Any]:
        job = self._job(project_uid, job_uid)
        self._building(job)
        spec = self._spec(job.type)
        if input_name not in spec.inputs:
            raise ApiError(422, f"Job type {job.type} has no input {input_name!r}")
        source = self._job(project_uid, source_job_uid)
        outputs = self._output_names(source)
        if source_output_name not in outputs:
            raise ApiError(
                422,
                f"Job {source_job_uid} ({source.type}) has no output {source_output_name!r}; "
                f"outputs: {', '.join(outputs)}",
            )
        want = spec.inputs[input_name]["type"]
        if outputs[source_output_name] != want:
            raise ApiError(
                422,
                f"Cannot connect {source.type} output {source_output_name} ({outputs[source_output_name]}) "
                f"to input {input_name} ({want})",
            )
        count_max = spec.inputs[input_name].get("count_max", "inf")
        current = sum(1 for c in job.connections if c.input == input_name)
        if count_max != "inf" and current >= int(count_max):
            raise ApiError(422, f"Input {input_name} of {job.type} takes at most {count_max} connection(s)")
        job.connections.append(Connection(input_name, source_job_uid, source_output_name))
        return self._job_doc(job)

    def _enqueue(
        self,
        project_uid: str,
        job_uid: str,
        lane: str | None = None,
        hostname: str | None = None,
        gpus: list[str] | None = None,
        no_check_inputs_ready: bool = False,
    ) -> dict[str, Any]:
        job = self._job(project_uid, job_uid)
        self._building(job)
        spec = self._spec(job.type)
        if lane is not None and lane not in self.lanes:
            raise ApiError(422, f"Unknown lane {lane!r}; lanes: {', '.join(self.lanes)}")
        lane = self._target_lane(job, spec, lane)
        job.submit_error = self._oversized_gpus(job, lane)
        for name, ispec in spec.inputs.items():
            if sum(1 for c in job.connections if c.input == name) < int(ispec.get("count_min", 0)):
                raise ApiError(422, f"Input {name!r} of {job.type} is required but not connected")
        for name in spec.required_params:
            if job.params.get(name) is None:
                raise ApiError(422, f"Parameter {name!r} of {job.type} is required")
        job.status = "queued"
        job.lane = lane
        job.queued_at = self.clock.now()
        self._tick()
        return self._job_doc(job)

    def _target_lane(self, job: SimJob, spec: JobTypeSpec, lane: str | None) -> str | None:
        """The lane the job is queued to, by :class:`QueueRules` where the docs are silent."""
        rules = self.queue_rules
        if spec.interactive:
            if lane is not None and rules.interactive_on_lane == "refuse":  # a stand-in rule
                raise ApiError(422, f"{job.type} is interactive and runs on the master only (no lane)")
            return None
        if lane is None and rules.default_lane is None:  # a stand-in rule (QueueRules.default_lane)
            raise ApiError(
                422, f"{job.type} runs on a worker: queue it to a lane (the stand-in has no default lane)"
            )
        return lane if lane is not None else rules.default_lane

    def _oversized_gpus(self, job: SimJob, lane: str | None) -> str | None:
        """Why a job asking more GPUs than its lane's nodes have will fail when submitted (None if
        it does not); refused at once with ``QueueRules.oversized_gpus == "refuse"``."""
        wanted = int(job.params.get("compute_num_gpus", 1))
        if lane is None or wanted <= self.lanes[lane]:
            return None
        if self.queue_rules.oversized_gpus == "refuse":  # a stand-in rule
            raise ApiError(
                422, f"Lane {lane} has {self.lanes[lane]} GPU(s) per job; compute_num_gpus is too large"
            )
        # sbatch's refusal of a --gres request no node of the partition can meet; how cryoSPARC
        # words a failed cluster submission is the stand-in's
        return (
            f"Cluster job submission to lane {lane} failed (asks {wanted} GPUs, nodes have "
            f"{self.lanes[lane]}): sbatch: error: Batch job submission failed: Requested node "
            "configuration is not available"
        )

    def _kill(self, project_uid: str, job_uid: str) -> dict[str, Any]:
        job = self._job(project_uid, job_uid)
        if job.status not in ACTIVE:
            raise ApiError(
                422,
                f"Job {project_uid}-{job_uid} is {job.status}; only a queued or running job can be killed",
            )
        self._finish(job, "killed", self.clock.now())
        return self._job_doc(job)

    def _clear(self, project_uid: str, job_uid: str) -> dict[str, Any]:
        """cryosparc-tools' jobs.ipynb: "A queued, completed, killed or failed job may be cleared".
        A job the scheduler has launched must be killed first; a building job stays as it is."""
        job = self._job(project_uid, job_uid)
        if job.status in ACTIVE and job.status != "queued":
            raise ApiError(422, f"Job {project_uid}-{job_uid} is {job.status}; kill it before clearing it")
        self._reset(job)
        return self._job_doc(job)

    def _reset(self, job: SimJob) -> None:
        """Back to building, parameters and inputs kept (api.pyi ``jobs.clear``), outputs gone."""
        job.status = "building"
        job.lane = None
        for attr in (
            "queued_at",
            "started_at",
            "launched_at",
            "running_at",
            "waiting_at",
            "completed_at",
            "failed_at",
            "killed_at",
            "end_at",
        ):
            setattr(job, attr, None)
        job.error = None
        job.fault = None
        job.submit_error = None
        job.outputs = {}
        job.datasets = {}
        job.class_info = []

    def _set_title(self, project_uid: str, job_uid: str, title: str) -> dict[str, Any]:
        job = self._job(project_uid, job_uid)
        job.title = title
        return self._job_doc(job)

    def _set_description(self, project_uid: str, job_uid: str, description: str) -> dict[str, Any]:
        job = self._job(project_uid, job_uid)
        job.description = description
        return self._job_doc(job)

    def _load_output(
        self, project_uid: str, job_uid: str, output_name: str, version: str | None = None, slots: Any = None
    ) -> bytes:
        job = self._job(project_uid, job_uid)
        if output_name not in self._output_names(job):
            raise ApiError(422, f"Job {job_uid} ({job.type}) has no output {output_name!r}")
        rows = job.datasets.get(output_name)
        if rows is None:
            raise ApiError(404, f"Output {output_name} of {job_uid} has no results (job is {job.status})")
        cols: list[tuple[str, Any]] = [("uid", np.arange(1, len(rows) + 1, dtype=np.uint64))]
        for key in rows[0] if rows else {}:
            values = [row[key] for row in rows]
            if isinstance(values[0], str):
                cols.append((key, np.array(values, dtype=object)))
            elif isinstance(values[0], (list, int)):  # shapes, indices (blob/idx): uint32 as cryoSPARC's
                cols.append((key, np.array(values, dtype=np.uint32)))
            else:
                cols.append((key, np.array(values, dtype=np.float32)))
        return b"".join(Dataset(cols).stream())

    def _interactive(
        self, project_uid: str, job_uid: str, endpoint: str, body: Any = None, timeout: int = 10
    ) -> Any:
        job = self._job(project_uid, job_uid)
        if job.type != "select_2D":
            raise ApiError(422, f"{job.type} has no interactive endpoints")
        if job.status != "waiting":
            raise ApiError(422, f"Job {project_uid}-{job_uid} is {job.status}, not waiting for interaction")
        if endpoint == "get_class_info":
            return [dict(c) for c in job.class_info]
        if endpoint == "set_class_selected":
            body = body or {}
            idx = body.get("class_idx")
            if not isinstance(idx, int) or not 0 <= idx < len(job.class_info):
                raise ApiError(422, f"No class {idx!r}")
            job.class_info[idx]["selected"] = bool(body.get("selected", True))
            return {"class_idx": idx, "selected": job.class_info[idx]["selected"]}
        if endpoint == "finish":
            return self._finish_select(job, timeout)
        raise ApiError(404, f"Unknown interactive endpoint {endpoint!r} for select_2D")

    def _finish_select(self, job: SimJob, timeout: int) -> bool:
        """Select 2D's ``finish``: the job completes ``finish_seconds`` later (at once with 0). A job
        already finishing ignores another request (what the real job does then is not documented)."""
        now = self.clock.now()
        job.finish_requests.append((now, timeout))
        fault = self._finish_faults.pop(0) if self._finish_faults else None
        if fault is None or fault["acted"]:
            if self.finish_seconds <= 0:
                self._complete(job, now)
            elif job.end_at is None:
                job.end_at = now + self.finish_seconds
                job.status = self.finishing_status
        if fault is not None and fault["kind"] == "timeout":
            raise ApiError(504, f"Timed out after {timeout} s waiting for job {job.uid} to answer finish")
        if fault is not None:
            raise ApiError(500, f"Job {job.uid} could not be sent finish")
        return True

    # ---------------------------------------------------------------- inspection (tests, harness)

    def job_by_title(self, project_title: str, title: str) -> SimJob | None:
        for p in self.projects.values():
            if p.title == project_title:
                for j in p.jobs.values():
                    if j.title == title and not j.deleted:
                        return j
        return None
