"""The dataset manifest: what a scientist writes next to the data.

A manifest lives at ``datasets/<dataset>/cryopilot.yaml`` (or ``.yml``/``.json``) in the input
bucket. :func:`parse_manifest` turns its bytes into a :class:`Manifest` or raises one
:class:`~cryopilot.core.errors.ManifestError` whose message names every field at fault (on one line, at
most :data:`MAX_MESSAGE_CHARS` long: past that the rest are counted, not listed).
"""

import json
import math
import re
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from cryopilot.core.errors import ManifestError
from cryopilot.core.validation import (
    MAX_MESSAGE_CHARS,
    clip,
    excerpt,
    printable,
    validation_message,
)

#: Largest manifest accepted, in bytes.
MAX_MANIFEST_BYTES = 1024 * 1024


DATASET_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,47}$"
SYMMETRY_RE = r"^(C[1-9][0-9]*|D[2-9][0-9]*|T|O|I)$"
EMAIL_RE = re.compile(r"^[^@\s,;\x00-\x1f\x7f]+@[^@\s,;\x00-\x1f\x7f]+\.[A-Za-z]{2,}$")

# What a run record can store: DynamoDB numbers have at most 38 digits and a magnitude between
# 1e-130 and 1e126; a manifest number outside that would fail the run's first write, not Validate.
_NUMBER_RANGE = (1e-100, 1e100)
_MAX_INT = 10**18


class _Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False, defer_build=True
    )


def _storable(value: float) -> float:
    low, high = _NUMBER_RANGE
    if value and not low <= abs(value) <= high:
        raise ValueError(f"must be 0 or between {low:g} and {high:g} in size")
    return value


def _override_value(value: Any) -> Any:
    """A cryoSPARC parameter value: text, a number, true/false or null (every parameter is one)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) > _MAX_INT:
            raise ValueError("must be an integer of at most 18 digits")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return _storable(value)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("must be valid Unicode text") from None
        return value
    raise ValueError(f"must be text, a number, true/false or null, not {type(value).__name__}")


#: A float field's value must also be storable.
_STORABLE = AfterValidator(_storable)


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
    cs_mm: Annotated[float, Field(ge=0.0, le=10.0), _STORABLE] = Field(
        description="spherical aberration in mm"
    )
    total_dose_e_per_A2: Annotated[float, Field(gt=0.0, le=500.0), _STORABLE] = Field(
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
    overrides: dict[str, dict[str, Annotated[Any, AfterValidator(_override_value)]]] = Field(
        default_factory=dict,
        description="per-stage cryoSPARC parameters, {stage id: {parameter: value}}",
    )
    layout: Literal["cryopilot", "whitepaper"] = Field(
        default="cryopilot",
        description="cryopilot: each GPU stage on the queue the preset's placement picks, queues scale to"
        " zero; whitepaper: every GPU stage on the gpu8 queue with one node held for the whole run",
    )


class Limits(_Strict):
    max_hours: Annotated[float, Field(gt=0, le=24 * 14), _STORABLE] | None = Field(
        default=None, description="stop the run after this many hours (default: the stack's MaxRunHours)"
    )
    max_cost_usd: Annotated[float, Field(gt=0), _STORABLE] | None = Field(
        default=None, description="stop the run when its estimated cost would exceed this"
    )


class StorageHints(_Strict):
    """What the storage model (:mod:`cryopilot.domain.storage`) cannot measure in the data; each
    unset field takes the value of the preset's white-paper dataset (``profiles.yaml``)."""

    expected_particles: Annotated[int, Field(gt=0, le=10_000_000_000)] | None = Field(
        default=None, description="particles the extraction will write (picked and kept)"
    )
    micrograph_mb: Annotated[float, Field(gt=0, le=10_000), _STORABLE] | None = Field(
        default=None, description="bytes of one motion-corrected micrograph, in MB (10^6 bytes)"
    )
    reextract_fraction: Annotated[float, Field(gt=0, le=1), _STORABLE] | None = Field(
        default=None, description="share of the extracted particles the re-extraction writes again"
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
    storage: StorageHints = Field(default_factory=StorageHints)

    @field_validator("notify")
    @classmethod
    def _emails(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if not EMAIL_RE.match(v)]
        if bad:
            raise ValueError(f"not an email address: {', '.join(excerpt(v) for v in bad[:3])}")
        return value

    @model_validator(mode="after")
    def _preset_matches_input(self) -> Self:
        if self.input.kind == "micrographs" and self.acquisition.gain_reference:
            raise ValueError("gain_reference applies to raw movies only, not to micrographs")
        return self

    @property
    def preset_name(self) -> str:
        return self.pipeline.preset or self.input.kind


def _error(source: str, detail: str) -> ManifestError:
    return ManifestError(clip(printable(f"{source}: {detail}"), MAX_MESSAGE_CHARS))


def parse_manifest(data: bytes, *, source: str = "manifest") -> Manifest:
    """Parse manifest bytes (YAML or JSON) into a :class:`Manifest`.

    Raises :class:`ManifestError` with a message that starts with ``source``. A leading UTF-8
    byte order mark (as some Windows editors write) is skipped, in YAML and in JSON alike.
    """
    if len(data) > MAX_MANIFEST_BYTES:
        raise _error(source, f"is {len(data):,} bytes; a manifest may be at most 1 MB")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _error(source, f"is not UTF-8 text (byte {exc.start})") from None
    if not text.strip():
        raise _error(source, "is empty")
    fmt = "JSON" if source.endswith(".json") else "YAML"
    try:
        doc = json.loads(text) if fmt == "JSON" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise _error(source, f"is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise _error(
            source, f"is not valid YAML: character #x{exc.character:04x} is not allowed (line {line})"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = clip(str(getattr(exc, "problem", None) or "syntax error"), 100)
        raise _error(source, f"is not valid YAML: {problem}{where}") from None
    except RecursionError:
        raise _error(source, f"is not valid {fmt}: it is nested too deeply") from None
    except ValueError as exc:  # a value the parser cannot convert (a 5,000-digit number, 2026-13-45)
        reason = "a number has too many digits" if "integer string conversion" in str(exc) else str(exc)
        reason = clip(reason, 100)
        raise _error(source, f"is not valid {fmt}: {reason}") from None
    return manifest_from_dict(doc, source=source)


def manifest_from_dict(doc: Any, *, source: str = "manifest") -> Manifest:
    if not isinstance(doc, dict):
        raise _error(
            source,
            "must be a mapping of fields (dataset, input, acquisition, particle, ...), "
            f"not {type(doc).__name__}",
        )
    try:
        return Manifest.model_validate(doc)
    except ValidationError as exc:
        raise _error(source, validation_message(exc)) from None
