"""``cryopilot local``: the local stack, kept running and reachable over HTTP on loopback, so the
operator commands (``cryopilot submit|status|watch|cancel|report … --local``) work against it from
another terminal exactly as they work against a deployed stack.

The stack is the one the tests and ``cryopilot demo`` use (:class:`LocalCloud`: moto with the
template's resources and the stand-ins); moto's own server serves the same in-memory services on
``127.0.0.1``. The stack's names and endpoint go to ``.cryopilot/local/stack.json``.
"""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cryopilot_sim.clock import ScaledClock
from cryopilot_sim.harness import LocalCloud
from cryopilot_sim.template import ROOT

STACK_FILE = ROOT / ".cryopilot" / "local" / "stack.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalServer:
    """A running local stack plus moto's HTTP server on loopback. A context manager."""

    def __init__(
        self,
        *,
        profile: str = "cgrp",
        speed: float = 500.0,
        port: int | None = None,
        stack_file: Path = STACK_FILE,
    ) -> None:
        # Time runs on by itself (speed x the wall clock), as it must for a stack that serves
        # several runs and deletions with nobody waiting on it; the Lambdas' own compute time
        # counts too, so simulated durations are approximate (`cryopilot demo` is exact).
        self.cloud = LocalCloud(clock=ScaledClock(speed), profile=profile)
        self.port = port or _free_port()
        self.stack_file = stack_file
        self._server: Any = None
        self.stopped = threading.Event()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LocalServer:
        from moto.server import ThreadedMotoServer

        self.cloud.start()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        stack = self.cloud.operator_stack()
        self.stack_file.parent.mkdir(parents=True, exist_ok=True)
        self.stack_file.write_text(
            json.dumps({**asdict(stack), "endpoint": self.endpoint}, indent=2) + "\n", encoding="utf-8"
        )
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stack_file.unlink(missing_ok=True)
            if self._server is not None:
                self._server.stop()
        finally:
            self.cloud.stop()
            self.stopped.set()


def commands_to_try(profile: str) -> list[str]:
    """The operator commands ``cryopilot local`` suggests, each one that runs as printed (from the
    repository's root, ``RUN_ID`` replaced by the id ``submit`` prints)."""
    return [
        f"cryopilot submit events/manifests/{profile}.yaml --local",
        "cryopilot status --local",
        "cryopilot watch RUN_ID --local",
        "cryopilot cancel RUN_ID --local",
        "cryopilot report RUN_ID --local",
    ]


def serve(profile: str, speed: float, port: int | None, stop: threading.Event | None = None) -> int:
    """Run the local stack until interrupted (Ctrl-C) or ``stop`` is set."""
    with LocalServer(profile=profile, speed=speed, port=port) as server:
        print(f"cryopilot local stack running at {server.endpoint} (profile {profile})")
        print(f"  stack file: {server.stack_file.relative_to(ROOT)}")
        print("  in another terminal, from the repository's root (cryopilot is .venv/bin/cryopilot):")
        for command in commands_to_try(profile):
            print(f"    {command}")
        print("  submit reads the data from s3://<input bucket>/datasets/<dataset>/ (or --data S3_FOLDER)")
        print("  Ctrl-C stops it (running executions are stopped, nothing persists).")
        if stop is not None:
            stop.wait()
        else:
            _wait_forever()
    return 0


def _wait_forever() -> None:
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        print("stopping the local stack")
