"""The dataset manifest: what a scientist writes next to the data.

A manifest lives at ``datasets/<dataset>/cryopilot.yaml`` (or ``.yml``/``.json``) in the input
bucket. :func:`parse_manifest` turns its bytes into a :class:`Manifest` or raises one
:class:`~cryopilot.errors.ManifestError` whose message names every field at fault.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cryopilot.errors import ManifestError

#: Largest manifest accepted, in bytes.
MAX_MANIFEST_BYTES = 1024 * 1024

#: File names StartRun treats as a manifest.
MANIFEST_NAMES = ("cryopilot.yaml", "cryopilot.yml", "cryopilot.json")

DATASET_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,47}$"
SYMMETRY_RE = r"^(C[1-9][0-9]*|D[2-9][0-9]*|T|O|I)$"
EMAIL_RE = re.compile(r"^[^@\s,;]+@[^@\s,;]+\.[A-Za-z]{2,}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _relative_path(value: str, what: str) -> str:
    if not value or value.strip() != value:
        raise ValueError(f"{what} must be a non-empty path without surrounding spaces")
    if value.startswith("/") or "://" in value:
        raise ValueError(f"{what} must be relative to the manifest's folder, not absolute")
    if ".." in value.split("/"):
        raise ValueError(f"{what} must not contain '..'")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError(f"{what} must not contain control characters")
    return value


class InputSpec(_Strict):
    """Which files are the data."""

    kind: Literal["movies", "micrographs"] = Field(
        description="raw movies (motion correction runs) or motion-corrected micrographs"
    )
    glob: str = Field(description="files to import, relative to the manifest's folder, e.g. movies/*.tif")
    expected_files: Annotated[int, Field(gt=0, le=10_000_000)] | None = Field(
        default=None, description="how many files the glob must match before the run starts"
    )

    @field_validator("glob")
    @classmethod
    def _glob(cls, value: str) -> str:
        return _relative_path(value, "glob")


class Acquisition(_Strict):
    """How the data was collected."""

    pixel_size_A: Annotated[float, Field(gt=0.1, le=20.0)] = Field(description="pixel size in Å")
    voltage_kV: Literal[100, 120, 200, 300] = Field(description="accelerating voltage in kV")
    cs_mm: Annotated[float, Field(ge=0.0, le=10.0)] = Field(description="spherical aberration in mm")
    total_dose_e_per_A2: Annotated[float, Field(gt=0.0, le=500.0)] = Field(
        description="total exposure dose in e⁻/Å²"
    )
    gain_reference: str | None = Field(
        default=None, description="gain reference file, relative to the manifest's folder"
    )

    @field_validator("gain_reference")
    @classmethod
    def _gain(cls, value: str | None) -> str | None:
        return None if value is None else _relative_path(value, "gain_reference")


class Particle(_Strict):
    diameter_A: Annotated[float, Field(ge=20.0, le=2000.0)] = Field(
        description="approximate particle diameter in Å (blob picker and box size)"
    )


class Pipeline(_Strict):
    preset: str | None = Field(
        default=None, description="pipeline preset; defaults to the input kind (movies or micrographs)"
    )
    overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="per-stage cryoSPARC parameters, {stage id: {parameter: value}}",
    )


class Limits(_Strict):
    max_hours: Annotated[float, Field(gt=0, le=24 * 14)] | None = Field(
        default=None, description="stop the run after this many hours (default: the stack's MaxRunHours)"
    )
    max_cost_usd: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="stop the run when its estimated cost would exceed this"
    )


class Manifest(_Strict):
    """A dataset manifest (see the README's manifest reference)."""

    dataset: str = Field(pattern=DATASET_RE, description="dataset name: letters, digits, . _ -")
    input: InputSpec
    acquisition: Acquisition
    particle: Particle
    symmetry: str = Field(default="C1", pattern=SYMMETRY_RE, description="point-group symmetry")
    pipeline: Pipeline = Field(default_factory=Pipeline)
    notify: list[str] = Field(default_factory=list, max_length=20, description="extra mail addresses")
    limits: Limits = Field(default_factory=Limits)

    @field_validator("notify")
    @classmethod
    def _emails(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if not EMAIL_RE.match(v)]
        if bad:
            raise ValueError(f"not an email address: {', '.join(bad)}")
        return value

    @model_validator(mode="after")
    def _preset_matches_input(self) -> Manifest:
        if self.input.kind == "micrographs" and self.acquisition.gain_reference:
            raise ValueError("gain_reference applies to raw movies only, not to micrographs")
        return self

    @property
    def preset_name(self) -> str:
        return self.pipeline.preset or self.input.kind


def _describe(err: Any) -> str:
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    elif err["type"] == "missing":
        msg = "required field is missing"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if "input" in err and err["type"] not in ("missing",) and not isinstance(err["input"], dict | list):
        shown = repr(err["input"])
        if len(shown) > 60:
            shown = shown[:57] + "..."
        msg = f"{msg} (got {shown})"
    return f"{where}: {msg}"


def validation_message(exc: ValidationError) -> str:
    """One message naming every field at fault, e.g. ``acquisition.voltage_kV: Input should be …``."""
    return "; ".join(_describe(e) for e in exc.errors())


def parse_manifest(data: bytes, *, source: str = "manifest") -> Manifest:
    """Parse manifest bytes (YAML or JSON) into a :class:`Manifest`.

    Raises :class:`ManifestError` with a message that starts with ``source``.
    """
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{source}: is {len(data):,} bytes; a manifest may be at most 1 MB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{source}: is not UTF-8 text (byte {exc.start})") from None
    if not text.strip():
        raise ManifestError(f"{source}: is empty")
    try:
        doc = json.loads(text) if source.endswith(".json") else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{source}: is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ManifestError(f"{source}: is not valid YAML: {problem}{where}") from None
    return manifest_from_dict(doc, source=source)


def manifest_from_dict(doc: Any, *, source: str = "manifest") -> Manifest:
    if not isinstance(doc, dict):
        raise ManifestError(
            f"{source}: must be a mapping of fields (dataset, input, acquisition, particle, ...), "
            f"not {type(doc).__name__}"
        )
    try:
        return Manifest.model_validate(doc)
    except ValidationError as exc:
        raise ManifestError(f"{source}: {validation_message(exc)}") from None


def is_manifest_key(key: str) -> bool:
    """True for ``datasets/<dataset>/cryopilot.{yaml,yml,json}``."""
    parts = key.split("/")
    return len(parts) == 3 and parts[0] == "datasets" and bool(parts[1]) and parts[2] in MANIFEST_NAMES


def manifest_prefix(key: str) -> str:
    """The folder a manifest's relative paths resolve against (``datasets/<dataset>/``)."""
    return key.rsplit("/", 1)[0] + "/"
