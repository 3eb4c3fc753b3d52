"""Talking to the head-node agent: SSM Run Command on the head node, answer read from the
command's output (from S3 when SSM truncated it inline)."""

import json
import shlex
import time
from typing import Any

from botocore.exceptions import ClientError
from pydantic import BaseModel, ValidationError

from cryopilot.adapters import aws
from cryopilot.adapters.observability import logger
from cryopilot.adapters.settings import get_settings
from cryopilot.core.errors import AgentError, AgentTimeoutError, HeadNodeUnreachableError
from cryopilot.protocol.agent import AgentFailure

#: SSM returns at most this many characters of stdout inline.
SSM_INLINE_LIMIT = 24_000
_PENDING = {"Pending", "InProgress", "Delayed"}


class AgentClient:
    """Runs ``cryopilot-agent <verb> …`` on one head node and parses its JSON answer."""

    def __init__(
        self,
        instance_id: str,
        *,
        output_bucket: str,
        output_prefix: str,
        timeout_seconds: int = 120,
        poll_interval: float = 1.0,
    ) -> None:
        self.instance_id = instance_id
        self.output_bucket = output_bucket
        self.output_prefix = output_prefix.rstrip("/")
        self.timeout_seconds = timeout_seconds
        self.poll_interval = poll_interval

    def call[M: BaseModel](self, argv: list[str], model: type[M]) -> M:
        doc = self.run(argv)
        try:
            return model.model_validate(doc)
        except ValidationError as exc:
            raise AgentError(
                f"agent answer to {argv[0]} has an unexpected shape: {exc.errors()[0]['msg']}"
            ) from None

    def run(self, argv: list[str]) -> dict[str, Any]:
        ssm = aws.client("ssm")
        command = command_line(argv)
        try:
            sent = ssm.send_command(
                InstanceIds=[self.instance_id],
                DocumentName="AWS-RunShellScript",
                Comment=f"cryopilot-agent {argv[0]}",
                Parameters={"commands": [command], "executionTimeout": [str(self.timeout_seconds)]},
                TimeoutSeconds=max(30, self.timeout_seconds),
                OutputS3BucketName=self.output_bucket,
                OutputS3KeyPrefix=self.output_prefix,
            )
        except ClientError as exc:
            code = exc.response["Error"]["Code"]
            if code in (
                "InvalidInstanceId",
                "InvalidInstanceInformationFilterValue",
                "UnsupportedPlatformType",
            ):
                raise HeadNodeUnreachableError(
                    f"head node {self.instance_id} does not answer SSM ({code})"
                ) from None
            raise
        command_id = sent["Command"]["CommandId"]
        invocation = self._wait(ssm, command_id, argv[0])
        stdout = invocation.get("StandardOutputContent", "")
        if len(stdout) >= SSM_INLINE_LIMIT or stdout.rstrip().endswith("--output truncated--"):
            stdout = self._full_stdout(command_id)
        doc = self._parse(stdout, argv[0], invocation)
        if not doc.get("ok", False):
            failure = AgentFailure.model_validate({**doc, "verb": doc.get("verb", argv[0])})
            raise AgentError(f"agent {failure.verb} failed: {failure.error_type}: {failure.message}")
        return doc

    def _wait(self, ssm: Any, command_id: str, verb: str) -> dict[str, Any]:
        """Bounded wait for an agent verb (they return at once; the bound covers a stuck node)."""
        deadline = time.monotonic() + self.timeout_seconds
        while True:
            try:
                inv: dict[str, Any] = ssm.get_command_invocation(
                    CommandId=command_id, InstanceId=self.instance_id
                )
            except ClientError as exc:
                if exc.response["Error"]["Code"] != "InvocationDoesNotExist":
                    raise
                inv = {"Status": "Pending"}
            status = inv.get("Status", "Pending")
            if status not in _PENDING:
                break
            if time.monotonic() >= deadline:
                raise AgentTimeoutError(
                    f"agent {verb} on {self.instance_id} did not answer in {self.timeout_seconds} s"
                )
            time.sleep(self.poll_interval)
        if status == "TimedOut":
            raise AgentTimeoutError(f"agent {verb} on {self.instance_id} timed out")
        if status in ("Undeliverable", "Terminated", "Cancelled"):
            raise HeadNodeUnreachableError(
                f"agent {verb}: SSM command {status.lower()} on {self.instance_id}"
            )
        return inv

    def _full_stdout(self, command_id: str) -> str:
        s3 = aws.client("s3")
        prefix = f"{self.output_prefix}/{command_id}/{self.instance_id}/"
        listed = s3.list_objects_v2(Bucket=self.output_bucket, Prefix=prefix)
        for obj in listed.get("Contents", []):
            if obj["Key"].endswith("/stdout"):
                body: bytes = s3.get_object(Bucket=self.output_bucket, Key=obj["Key"])["Body"].read()
                return body.decode("utf-8")
        raise AgentError(
            f"agent output was truncated and no full copy is at s3://{self.output_bucket}/{prefix}"
        )

    @staticmethod
    def _parse(stdout: str, verb: str, invocation: dict[str, Any]) -> dict[str, Any]:
        text = stdout.strip()
        if not text:
            err = (invocation.get("StandardErrorContent") or "").strip().splitlines()[-1:] or ["no output"]
            raise AgentError(
                f"agent {verb} printed nothing (exit {invocation.get('ResponseCode')}): {err[0]}"
            )
        try:
            doc = json.loads(text.splitlines()[-1]) if not text.startswith("{") else json.loads(text)
        except json.JSONDecodeError:
            logger.warning("agent printed non-JSON", extra={"verb": verb, "head": text[:200]})
            raise AgentError(f"agent {verb} printed something that is not JSON") from None
        if not isinstance(doc, dict):
            raise AgentError(f"agent {verb} printed JSON that is not an object")
        return doc


def command_line(argv: list[str]) -> str:
    """The shell command (``AWS-RunShellScript``'s ``commands`` parameter) that runs an agent verb."""
    return shlex.join(["cryopilot-agent", *argv])


def agent_for(
    run_id: str, head_node_instance_id: str | None, timeout_seconds: int | None = None
) -> AgentClient:
    """The agent on the run's head node; each call bounded by ``timeout_seconds`` (the stack's
    agent timeout by default)."""
    settings = get_settings()
    if not head_node_instance_id:
        raise AgentError(f"run {run_id} has no head node yet")
    return AgentClient(
        head_node_instance_id,
        output_bucket=settings.artifacts_bucket,
        output_prefix=f"ssm-output/{run_id}",
        timeout_seconds=timeout_seconds or settings.agent_timeout_seconds,
    )
