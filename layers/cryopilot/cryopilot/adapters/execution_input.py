"""What a state machine execution takes as input (documented in the README for manual starts).

StartRun builds it from an upload or an operator's start, Validate reads it; both check it with
this one model.
"""

from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cryopilot.domain.location import ManifestLocation, data_uri_problem, foreign_bucket


class RunSettings(BaseModel):
    """Waits and bounds of the run's polling loops. Defaults suit AWS; tests and the local run
    pass their own in the execution input (``settings``)."""

    model_config = ConfigDict(extra="forbid")

    cluster_poll_seconds: int = Field(default=60, ge=0, le=3600)
    max_cluster_polls: int = Field(default=90, ge=1, le=10_000)
    min_poll_seconds: int = Field(default=60, ge=0, le=3600)
    max_poll_seconds: int = Field(default=1800, ge=0, le=86_400)
    delete_poll_seconds: int = Field(default=30, ge=0, le=3600)
    max_delete_polls: int = Field(default=120, ge=1, le=10_000)
    #: the export's data repository task: checked every ``export_poll_seconds``, at most
    #: ``max_export_polls`` times in all (4 h by default: see cryopilot.steps.export)
    export_poll_seconds: int = Field(default=60, ge=0, le=3600)
    max_export_polls: int = Field(default=240, ge=1, le=10_000)

    @model_validator(mode="after")
    def _order(self) -> Self:
        if self.max_poll_seconds < self.min_poll_seconds:
            raise ValueError("max_poll_seconds must be at least min_poll_seconds")
        return self


class ExecutionInput(BaseModel):
    """What a state machine execution takes. Give exactly one of ``manifest`` (what StartRun
    sends), ``manifest_s3_uri`` or ``manifest_inline`` (manual starts)."""

    model_config = ConfigDict(extra="forbid")

    manifest: ManifestLocation | None = None
    manifest_s3_uri: str | None = Field(default=None, pattern=r"^s3://[^/]+/.+")
    manifest_inline: dict[str, Any] | None = None
    data_s3_uri: str | None = Field(
        default=None,
        description="with manifest_inline: the S3 folder holding the data (ends with /), in the"
        " stack's input bucket",
    )
    trigger: str = "manual"
    settings: RunSettings = Field(default_factory=RunSettings)

    @field_validator("data_s3_uri")
    @classmethod
    def _data_uri(cls, value: str | None) -> str | None:
        problem = data_uri_problem(value) if value is not None else None
        if problem:
            raise ValueError(problem)
        return value

    def bucket_problem(self, input_bucket: str) -> str | None:
        """Why this input names a bucket the stack does not read from (``field: reason``), or None.
        StartRun (operator starts) and Validate (every start) both ask."""
        if self.manifest is not None:
            problem = foreign_bucket(self.manifest.uri, input_bucket)
            if problem:
                return f"manifest: {problem}"
        if self.manifest_s3_uri is not None:
            problem = foreign_bucket(self.manifest_s3_uri, input_bucket)
            if problem:
                return f"manifest_s3_uri: {problem}"
        if self.data_s3_uri is not None:
            problem = foreign_bucket(self.data_s3_uri, input_bucket)
            if problem:
                return f"data_s3_uri: {problem}"
        return None

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        given = [
            n for n in ("manifest", "manifest_s3_uri", "manifest_inline") if getattr(self, n) is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of manifest, manifest_s3_uri, manifest_inline"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if self.manifest_inline is not None and self.data_s3_uri is None:
            raise ValueError("manifest_inline needs data_s3_uri: the S3 folder that holds the data")
        return self
