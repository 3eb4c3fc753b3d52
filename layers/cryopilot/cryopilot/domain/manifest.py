"""The dataset manifest: what a scientist writes next to the data.

A manifest lives at ``datasets/<dataset>/cryopilot.yaml`` (or ``.yml``/``.json``) in the input
bucket. :func:`parse_manifest` turns its bytes into a :class:`Manifest` or raises one
:class:`~cryopilot.core.errors.ManifestError` whose message names every field at fault (on one line, at
most :data:`MAX_MESSAGE_CHARS` long: past that the rest are counted, not listed).
"""

import json
import math
import re
from functools import cache
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
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
from cryopilot.domain.location import NAME_PATTERN, RUN_ID_PATTERN, S3_FOLDER_RE
from cryopilot.domain.reference import RepeatThresholds

#: Largest manifest accepted, in bytes.
MAX_MANIFEST_BYTES = 1024 * 1024

# Every value a manifest holds is bounded (the README's manifest reference lists these limits), so
# that whatever Validate accepts makes run items far below DynamoDB's 400 KB item limit and agent
# commands far below SSM's limits (tests/unit/test_manifest_properties.py shows it).
#: Longest path (``input.glob``, ``acquisition.gain_reference``, a path-valued override) and longest
#: text override value, in characters.
MAX_TEXT_CHARS = 512
#: Longest preset name, stage id or parameter name in ``pipeline``.
MAX_NAME_CHARS = 64
#: Most stages ``pipeline.overrides`` may name, and most parameters per stage.
MAX_OVERRIDE_STAGES = 32
#: A preset's options a manifest may choose (``pipeline.options``); a preset has a few at most.
MAX_PIPELINE_OPTIONS = 8
MAX_OVERRIDE_PARAMS = 16
#: Most bytes ``pipeline.overrides`` may take as JSON (non-ASCII characters written \uXXXX).
MAX_OVERRIDES_BYTES = 32 * 1024
#: Longest ``notify`` address (RFC 5321's limit on a forward path).
MAX_EMAIL_CHARS = 254
#: Largest n of the point groups C<n> and D<n> (our own bound: far above any cyclic or dihedral
#: symmetry a single-particle structure has shown).
MAX_SYMMETRY_ORDER = 120

DATASET_RE = NAME_PATTERN  # the one rule for dataset names and folders
#: The shape of a point group in cryoSPARC's spelling; :func:`check_symmetry` also bounds n.
SYMMETRY_RE = r"^(C[1-9][0-9]{0,2}|D[2-9]|D[1-9][0-9]{1,2}|T|O|I)$"
#: The characters of an address's local part: RFC 5322's ``atext`` (ASCII only).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
#: A host name label: letters, digits and hyphens, not starting or ending with a hyphen (RFC 1123).
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
#: An address ``notify`` accepts, matched whole (``fullmatch``: ``$`` would let a trailing newline
#: by): an RFC 5322 dot-atom local part of at most 64 characters (RFC 5321), ``@``, and a host name
#: of dot-separated labels ending in a top-level domain of letters. ASCII only: no quoted local
#: parts, no address literals, no internationalised names, so no invisible or look-alike character.
EMAIL_RE = re.compile(rf"(?=[^@]{{1,64}}@){_ATEXT}+(?:\.{_ATEXT}+)*@(?:{_LABEL}\.)+[A-Za-z]{{2,63}}")

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


def check_symmetry(value: str) -> str:
    """A point group in cryoSPARC's spelling: C1..C120, D2..D120, T, O or I."""
    if not (
        isinstance(value, str)
        and re.fullmatch(SYMMETRY_RE, value)
        and (value in ("T", "O", "I") or int(value[1:]) <= MAX_SYMMETRY_ORDER)
    ):
        raise ValueError(
            f"must be a point group: C1 to C{MAX_SYMMETRY_ORDER}, D2 to D{MAX_SYMMETRY_ORDER}, T, O or I"
        )
    return value


def _override_value(value: Any) -> Any:
    """A cryoSPARC parameter value: text, a number, true/false or null (every parameter is one).
    Its type and range for its parameter are checked against the job-type register when the
    preset is expanded (:func:`cryopilot.domain.presets.expand`)."""
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
        if len(value) > MAX_TEXT_CHARS:
            raise ValueError(f"text may be at most {MAX_TEXT_CHARS} characters (got {len(value):,})")
        return value
    raise ValueError(f"must be text, a number, true/false or null, not {type(value).__name__}")


#: A float field's value must also be storable.
_STORABLE = AfterValidator(_storable)


def check_relative_path(value: str, what: str) -> str:
    """The path rules of ``input.glob``: relative to the manifest's folder, no ``..``, no scheme, no
    control characters (also applied to path-valued overrides)."""
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
    glob: str = Field(
        max_length=MAX_TEXT_CHARS,
        description="files to import, relative to the manifest's folder, e.g. movies/*.tif",
    )
    expected_files: Annotated[int, Strict(), Field(gt=0, le=10_000_000)] | None = Field(
        default=None, description="how many files the glob must match before the run starts"
    )

    @field_validator("glob")
    @classmethod
    def _glob(cls, value: str) -> str:
        return check_relative_path(value, "glob")


class Acquisition(_Strict):
    """How the data was collected."""

    pixel_size_A: Annotated[float, Strict(), Field(gt=0.1, le=20.0)] = Field(description="pixel size in Å")
    voltage_kV: Literal[100, 120, 200, 300] = Field(description="accelerating voltage in kV")
    cs_mm: Annotated[float, Strict(), Field(ge=0.0, le=10.0), _STORABLE] = Field(
        description="spherical aberration in mm"
    )
    total_dose_e_per_A2: Annotated[float, Strict(), Field(gt=0.0, le=500.0), _STORABLE] = Field(
        description="total exposure dose in e⁻/Å²"
    )
    gain_reference: Annotated[str, Field(max_length=MAX_TEXT_CHARS)] | None = Field(
        default=None, description="gain reference file, relative to the manifest's folder"
    )

    @field_validator("gain_reference")
    @classmethod
    def _gain(cls, value: str | None) -> str | None:
        return None if value is None else check_relative_path(value, "gain_reference")


class Particle(_Strict):
    diameter_A: Annotated[float, Strict(), Field(ge=20.0, le=2000.0)] = Field(
        description="approximate particle diameter in Å (blob picker and box size)"
    )


class Pipeline(_Strict):
    preset: Annotated[str, Field(max_length=MAX_NAME_CHARS)] | None = Field(
        default=None, description="pipeline preset; defaults to the input kind (movies or micrographs)"
    )
    overrides: dict[
        Annotated[str, Field(max_length=MAX_NAME_CHARS)],
        Annotated[
            dict[
                Annotated[str, Field(max_length=MAX_NAME_CHARS)],
                Annotated[Any, AfterValidator(_override_value)],
            ],
            Field(max_length=MAX_OVERRIDE_PARAMS),
        ],
    ] = Field(
        default_factory=dict,
        max_length=MAX_OVERRIDE_STAGES,
        description="per-stage cryoSPARC parameters, {stage id: {parameter: value}}",
    )
    options: dict[
        Annotated[str, Field(max_length=MAX_NAME_CHARS)],
        Annotated[str, Field(max_length=MAX_NAME_CHARS)],
    ] = Field(
        default_factory=dict,
        max_length=MAX_PIPELINE_OPTIONS,
        description="the preset's options, {option: choice} (e.g. the repeat preset's templates)",
    )
    layout: Literal["cryopilot", "whitepaper"] = Field(
        default="cryopilot",
        description="cryopilot: each GPU stage on the queue the preset's placement picks, queues scale to"
        " zero; whitepaper: every GPU stage on the gpu8 queue with one node held for the whole run",
    )

    capacity: Literal["on-demand", "spot-where-safe"] = Field(
        default="on-demand",
        description="on-demand: every node On-Demand; spot-where-safe: the stages the Spot policy marks"
        " safe (expected under 4 h, never the final refinement) run on Spot first, and a stage lost to"
        " a Spot interruption is resubmitted On-Demand once",
    )

    @model_validator(mode="after")
    def _spot_needs_scaling_queues(self) -> Self:
        if self.capacity == "spot-where-safe" and self.layout == "whitepaper":
            raise ValueError(
                "capacity: spot-where-safe needs layout: cryopilot (the white paper's layout holds one"
                " On-Demand node for the run)"
            )
        return self

    @field_validator("overrides")
    @classmethod
    def _overrides_in_all(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        # an inline manifest travels whole in the execution input (and a queued run's start
        # input on its record): the overrides together are bounded too
        size = len(json.dumps(value))
        if size > MAX_OVERRIDES_BYTES:
            raise ValueError(
                f"the overrides take {size:,} bytes as JSON; at most {MAX_OVERRIDES_BYTES:,} in all"
            )
        return value


class Limits(_Strict):
    max_hours: Annotated[float, Strict(), Field(gt=0, le=24 * 14), _STORABLE] | None = Field(
        default=None, description="stop the run after this many hours (default: the stack's MaxRunHours)"
    )
    max_cost_usd: Annotated[float, Strict(), Field(gt=0), _STORABLE] | None = Field(
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


#: Longest ``compound`` (the chemist's identifier of the ligand), in characters.
MAX_COMPOUND_CHARS = 64


def check_compound(value: str) -> str:
    """The chemist's identifier of a compound: printable text on one line (it goes into every mail
    subject and report), without surrounding spaces."""
    if not value or value.strip() != value:
        raise ValueError("must be non-empty text without surrounding spaces")
    if not value.isprintable():
        raise ValueError("must be printable text on one line (no control or invisible characters)")
    return value


def check_reference_file(value: str) -> str:
    """An ``s3://bucket/folder/.../name.mrc(s)`` file of a reference solved elsewhere: the bucket
    by S3's naming rules, the folders and the name by the rule of dataset folders."""
    folder, _, name = value.rpartition("/")
    if not S3_FOLDER_RE.fullmatch(folder + "/") or not re.fullmatch(r"[A-Za-z0-9._-]{1,255}", name):
        raise ValueError(
            "must be an s3://bucket/folder/file URI whose folders and file name are ASCII letters,"
            " digits, '.', '_' and '-'"
        )
    if not name.endswith((".mrc", ".mrcs", ".map")):
        raise ValueError("must be an MRC file (.mrc, .mrcs or .map)")
    return value


_S3_FILE = Annotated[str, Field(max_length=MAX_TEXT_CHARS), AfterValidator(check_reference_file)]


class ReferenceSpec(_Strict):
    """``reference:``: the structure a repeat run starts from, when it is not the campaign's own
    (see the README's "Repeat structures")."""

    run: Annotated[str, Field(pattern=RUN_ID_PATTERN)] | None = Field(
        default=None, description="an earlier cryopilot run of this stack whose results are the reference"
    )
    map: _S3_FILE | None = Field(default=None, description="a map solved elsewhere, s3://…/map.mrc")
    pixel_size_A: Annotated[float, Strict(), Field(gt=0.1, le=20.0)] | None = Field(
        default=None, description="the map's pixel size in Å (with map)"
    )
    mask: _S3_FILE | None = Field(default=None, description="its mask (with map), in the map's folder")
    templates: _S3_FILE | None = Field(
        default=None, description="2D class averages to pick with (with map), in the map's folder"
    )

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.run is None) == (self.map is None):
            raise ValueError("name either run (an earlier run's id) or map (an s3:// map), not both or none")
        if self.run is not None and (self.pixel_size_A, self.mask, self.templates) != (None, None, None):
            raise ValueError("pixel_size_A, mask and templates go with map, not with run")
        if self.map is not None and self.pixel_size_A is None:
            raise ValueError("a map needs its pixel_size_A")
        if self.map is not None:
            folder = self.map.rpartition("/")[0]
            for name, value in (("mask", self.mask), ("templates", self.templates)):
                if value is not None and value.rpartition("/")[0] != folder:
                    raise ValueError(f"{name} must be in the map's folder ({folder}/)")
        return self


class Manifest(_Strict):
    """A dataset manifest (see the README's manifest reference)."""

    dataset: str = Field(pattern=DATASET_RE, description="dataset name: letters, digits, . _ -")
    input: InputSpec
    acquisition: Acquisition
    particle: Particle
    symmetry: Annotated[str, AfterValidator(check_symmetry)] = Field(
        default="C1", description="point-group symmetry: C1 to C120, D2 to D120, T, O or I"
    )
    pipeline: Pipeline = Field(default_factory=Pipeline)
    notify: list[Annotated[str, Field(max_length=MAX_EMAIL_CHARS)]] = Field(
        default_factory=list, max_length=20, description="extra mail addresses"
    )
    limits: Limits = Field(default_factory=Limits)
    storage: StorageHints = Field(default_factory=StorageHints)
    campaign: Annotated[str, Field(pattern=DATASET_RE)] | None = Field(
        default=None, description="one target, many compounds: the campaign this dataset belongs to"
    )
    compound: Annotated[str, Field(max_length=MAX_COMPOUND_CHARS), AfterValidator(check_compound)] | None = (
        Field(default=None, description="the chemist's identifier of the compound (mails and reports)")
    )
    reference: ReferenceSpec | None = Field(
        default=None, description="the reference of a repeat run, when not the campaign's own"
    )
    repeat: RepeatThresholds = Field(default_factory=RepeatThresholds)
    export: Literal["results", "project"] = Field(
        default="results",
        description="results: the map, half maps, mask, FSC and particles; project: those and the"
        " whole cryoSPARC project directory (everything but the raw data)",
    )

    @field_validator("notify")
    @classmethod
    def _emails(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if not EMAIL_RE.fullmatch(v)]
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


@cache
def _unique_key_loader() -> Any:
    """PyYAML's safe loader, refusing a mapping that repeats a key (YAML 1.2 requires keys to be
    unique; PyYAML would keep the last value silently). Made when a manifest is first parsed:
    PyYAML costs a cold start tens of milliseconds, and of the functions only Validate parses
    manifests (the others import this module for its models)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
            self.flatten_mapping(node)
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: the constructor below says so
                    continue
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {excerpt(key)}", key_node.start_mark
                    )
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads`` hook: a JSON object that repeats a key is refused, as in YAML."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {excerpt(key)}")
        out[key] = value
    return out


def check_dataset_folder(manifest: Manifest, folder: str, *, source: str) -> None:
    """A manifest read from ``datasets/<folder>/`` names that folder's dataset and no other, so an
    upload to one folder cannot start runs, nor subscribe addresses to the mails, of another
    dataset. (An inline manifest names its dataset itself: only an operator can start one.)"""
    if manifest.dataset != folder:
        raise _error(
            source,
            f"dataset: must be the name of the manifest's folder, {excerpt(folder)}"
            f" (got {excerpt(manifest.dataset)})",
        )


def check_notify_domains(manifest: Manifest, allowed: list[str], *, source: str) -> None:
    """Every ``notify`` address is in one of the ``allowed`` domains (or a subdomain of one), when
    the stack lists any (``NotifyAllowedDomains``); compared without regard to case."""
    if not allowed:
        return
    wanted = [d.lower().lstrip("@") for d in allowed]
    for address in manifest.notify:
        domain = address.rpartition("@")[2].lower()
        if not any(domain == d or domain.endswith("." + d) for d in wanted):
            raise _error(
                source,
                f"notify: {address} is not in an allowed domain (NotifyAllowedDomains: {', '.join(wanted)})",
            )


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
    import yaml  # see _unique_key_loader

    try:
        if fmt == "JSON":
            doc = json.loads(text, object_pairs_hook=_unique_keys)
        else:
            doc = yaml.load(text, Loader=_unique_key_loader())  # noqa: S506 (a SafeLoader)
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
