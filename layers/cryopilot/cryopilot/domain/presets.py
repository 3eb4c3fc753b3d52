"""Pipeline presets as data, and the plan they make for one manifest.

A preset (``presets/<name>.yaml``) lists the cryoSPARC stages of a pipeline: job type, GPUs,
parameters (which may reference the manifest), input connections, the automatic decision a person
would otherwise make, and a time limit. :func:`expand` turns a preset and a :class:`Manifest` into
the :class:`PlannedStage` list the state machine submits one by one through the head-node agent.
A preset's ``placement`` says how each GPU stage's queue (lane) is chosen: unless a stage pins its
``lane``, :func:`cryopilot.domain.placement.plan` applies it to what :func:`expand` makes.

A preset may also use the values of a repeat run's reference (``${reference.<field>}``, see
:class:`cryopilot.domain.reference.ReferenceInputs`); :func:`expand` resolves them from the
``reference`` it is given, and refuses such a preset without one.

``presets/job_types.yaml`` is the register of cryoSPARC job types (parameters, inputs, outputs) the
presets use; an override naming a parameter its job type does not have is a :class:`ManifestError`.
"""

import math
import re
from functools import cache
from importlib import resources
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cryopilot.core.errors import ManifestError
from cryopilot.core.naming import REPEATED_STAGE
from cryopilot.core.validation import excerpt
from cryopilot.domain.datafiles import read_data_file
from cryopilot.domain.manifest import Manifest, check_relative_path, check_symmetry
from cryopilot.domain.reference import (
    PIXEL_SIZE_TOLERANCE,
    REFERENCE_PREFIX,
    SAME_PIXEL_SIZE,
    ReferenceInputs,
    pixel_size_offset,
)
from cryopilot.protocol.stage import (
    DecisionDef,
    InputConnection,
    Lane,
    PlannedStage,
    Resample,
)

#: Name of the repeated stage's "rounds" pseudo-parameter.
ROUNDS_PARAM = "rounds"

_REF = re.compile(r"\$\{([A-Za-z0-9_.]+)\}")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class OutputRef(_Model):
    """One connection: output ``output`` of the job of stage ``stage``.

    ``output`` may end in ``_*`` (every class output of that job) or ``_{chosen}`` (the class chosen
    by that stage's ``choose_hetero_class`` decision).
    """

    stage: str
    output: str
    #: the preset's options this connection is made for (all of them must hold); None: always
    when: dict[str, str] | None = None


class ResampleDef(_Model):
    """A stage's map that is resampled to another pixel size before its job is made, when the two
    differ (see ``repeat.yaml``): ``path`` and ``pixel_size`` name two of the stage's parameters,
    ``to`` the pixel size wanted (a ``${...}`` value, e.g. the data's)."""

    path: str
    pixel_size: str
    to: str


class StageDef(_Model):
    id: str
    title: str
    job_type: str
    #: the preset's options this stage runs for (all of them must hold); None: always
    when: dict[str, str] | None = None
    lane: Lane | None = None
    gpus: int = Field(ge=0, le=8)
    params: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, list[OutputRef]] = Field(default_factory=dict)
    next_round_inputs: dict[str, list[OutputRef]] | None = None
    rounds: int | None = Field(default=None, ge=1, le=20)
    decision: DecisionDef | None = None
    resample: ResampleDef | None = None
    time_limit_hours: float = Field(gt=0, le=24 * 7)

    @model_validator(mode="after")
    def _resample_names_params(self) -> "StageDef":
        if self.resample is not None:
            for name in (self.resample.path, self.resample.pixel_size):
                if name not in self.params:
                    raise ValueError(
                        f"stage {self.id}: resample names {name!r}, which is not one of its params"
                    )
        return self


class PlacementDef(_Model):
    """How the GPU stages' queues are chosen (see the comment in the preset files)."""

    rule: Literal["cheapest_within_time_budget"]
    queues: list[Lane] = Field(min_length=1)
    time_budget: Literal["whitepaper"] = "whitepaper"
    tolerance_percent: float = Field(default=0.0, ge=0, le=100)


class OptionDef(_Model):
    """A choice a manifest may make (``pipeline.options``): ``choices``, and the one taken
    without it."""

    default: str
    choices: list[str] = Field(min_length=2)


class Preset(_Model):
    name: str
    description: str
    placement: PlacementDef | None = None
    options: dict[str, OptionDef] = Field(default_factory=dict)
    stages: list[StageDef]

    def chosen(self, asked: dict[str, str]) -> dict[str, str]:
        """The preset's options with the manifest's choices (``pipeline.options``) applied; an
        unknown option or choice is a one-line :class:`ManifestError`."""
        for name, choice in asked.items():
            if name not in self.options:
                known = ", ".join(self.options) or "none"
                raise ManifestError(
                    f"pipeline.options.{name}: preset {self.name} has no option {name!r} (options: {known})"
                )
            if choice not in self.options[name].choices:
                raise ManifestError(
                    f"pipeline.options.{name}: must be one of {', '.join(self.options[name].choices)}"
                    f" (got {excerpt(choice)})"
                )
        return {name: asked.get(name, opt.default) for name, opt in self.options.items()}

    def stages_for(self, chosen: dict[str, str]) -> list["StageDef"]:
        """The stages run with the options ``chosen`` (:meth:`chosen`)."""
        return [s for s in self.stages if _applies(s.when, chosen)]


def _applies(when: dict[str, str] | None, chosen: dict[str, str]) -> bool:
    return when is None or all(chosen.get(k) == v for k, v in when.items())


class JobTypeSpec(_Model):
    """A register entry (see ``presets/job_types.yaml``)."""

    title: str
    category: str
    source: str
    gpu: bool = False
    interactive: bool = False
    classes_from: dict[str, str] | None = None
    params: dict[str, dict[str, Any]]
    required_params: list[str] = Field(default_factory=list)
    inputs: dict[str, dict[str, Any]]
    outputs: dict[str, dict[str, Any]]

    def has_output(self, name: str) -> bool:
        if name in self.outputs:
            return True
        return any(
            "{k}" in pattern and re.fullmatch(re.escape(pattern).replace(r"\{k\}", r"\d+"), name)
            for pattern in self.outputs
        )


def _read(name: str) -> Any:
    return read_data_file("presets", name)


def preset_names() -> list[str]:
    folder = resources.files("cryopilot.domain").joinpath("presets")
    return sorted(
        p.name[: -len(".yaml")]
        for p in folder.iterdir()
        if p.name.endswith(".yaml") and p.name != "job_types.yaml"
    )


@cache
def job_types() -> dict[str, JobTypeSpec]:
    """The register of cryoSPARC job types used by the presets."""
    raw = _read("job_types.yaml")
    return {name: JobTypeSpec.model_validate(spec) for name, spec in raw.items()}


@cache
def load_preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name is a :class:`ManifestError` listing the known ones."""
    known = preset_names()
    if name not in known:
        raise ManifestError(f"pipeline.preset: unknown preset {name!r}; known presets: {', '.join(known)}")
    try:
        return Preset.model_validate(_read(f"{name}.yaml"))
    except ValidationError as exc:  # a broken preset file is a bug, but say where
        raise ManifestError(f"preset {name}: {exc}") from None


def _even_up(value: float) -> int:
    n = math.ceil(value)
    return n + (n % 2)


def _in_folder(data_dir: str, path: str) -> str:
    return (data_dir if data_dir.endswith("/") else data_dir + "/") + path


#: A value made from the reference's box (not a field of it): the Fourier-crop box of a first
#: extraction at the reference's box, by the rule of ``${box_pix_binned}``.
_BINNED_REFERENCE_BOX = REFERENCE_PREFIX + "box_pix_binned"


def _binned(box: int) -> int:
    """The Fourier-crop box of a first extraction at ``box``: about half of it, even, at least 64."""
    return min(box, max(64, _even_up(box / 2)))


def _references(manifest: Manifest, data_dir: str, reference: ReferenceInputs | None) -> dict[str, Any]:
    acq = manifest.acquisition
    diameter = manifest.particle.diameter_A
    box = max(64, _even_up(1.5 * diameter / acq.pixel_size_A))
    binned = _binned(box)
    base = data_dir if data_dir.endswith("/") else data_dir + "/"
    of_reference: dict[str, Any] = {}
    if reference is not None:
        of_reference = dict(reference.placeholders())
        if reference.box_pix is not None:
            of_reference[_BINNED_REFERENCE_BOX] = _binned(reference.box_pix)
    return {
        **of_reference,
        "data_glob": base + manifest.input.glob,
        "gain_ref": base + acq.gain_reference if acq.gain_reference else None,
        "acquisition.pixel_size_A": acq.pixel_size_A,
        "acquisition.voltage_kV": acq.voltage_kV,
        "acquisition.cs_mm": acq.cs_mm,
        "acquisition.total_dose_e_per_A2": acq.total_dose_e_per_A2,
        "particle.diameter_A": diameter,
        "particle_diameter_max_A": round(1.25 * diameter),
        "box_pix": box,
        "box_pix_binned": binned,
        "symmetry": manifest.symmetry,
    }


def needs_reference(name: str) -> bool:
    """Whether preset ``name`` names ``${reference.<field>}`` (a repeat preset)."""
    return any(
        isinstance(v, str) and f"${{{REFERENCE_PREFIX}" in v
        for stage in load_preset(name).stages
        for v in stage.params.values()
    )


def assumed_reference(manifest: Manifest, folder: str = "/fsx/reference/assumed") -> ReferenceInputs:
    """The reference a full run of ``manifest`` would leave, for what needs one before a campaign
    has it (an estimate, the benchmark): its files under ``folder`` (names only: nothing reads
    them), the manifest's pixel size, the box the full pipeline extracts at (``${box_pix}``), and
    its class averages' pixel size (that box Fourier-cropped to ``${box_pix_binned}``)."""
    acq = manifest.acquisition
    base = folder.rstrip("/")
    refs = _references(manifest, "/", None)
    return ReferenceInputs(
        map_path=f"{base}/map.mrc",
        mask_path=f"{base}/mask.mrc",
        templates_path=f"{base}/templates_selected.mrcs",
        pixel_size_A=acq.pixel_size_A,
        # 2D classification's particles: the first extraction, Fourier-cropped
        templates_pixel_size_A=round(acq.pixel_size_A * refs["box_pix"] / refs["box_pix_binned"], 6),
        box_pix=refs["box_pix"],
    )


def _missing(key: str, refs: dict[str, Any], where: str) -> ManifestError:
    """The refusal of a ``${key}`` that ``refs`` lacks: a reference value without a reference
    (or one the reference does not have) says so; any other name is unknown."""
    if key.startswith(REFERENCE_PREFIX):
        field = "box_pix" if key == _BINNED_REFERENCE_BOX else key.removeprefix(REFERENCE_PREFIX)
        if not any(k.startswith(REFERENCE_PREFIX) for k in refs):
            preset, _, at = where.partition(": ")
            return ManifestError(
                f"pipeline.preset: {preset} needs a campaign reference ({at} is ${{{key}}}) and this"
                " run has none; a full run is pipeline: {preset: movies}"
            )
        return ManifestError(f"{where}: ${{{key}}}: the run's reference has no {field}")
    return ManifestError(f"{where}: unknown reference ${{{key}}}")


def _resolve(value: Any, refs: dict[str, Any], where: str) -> Any:
    if not isinstance(value, str):
        return value
    whole = _REF.fullmatch(value)
    if whole:
        key = whole.group(1)
        if key not in refs:
            raise _missing(key, refs, where)
        return refs[key]

    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in refs:
            raise _missing(m.group(1), refs, where)
        return str(refs[m.group(1)])

    return _REF.sub(sub, value)


def _resample(
    spec: ResampleDef | None, params: dict[str, Any], refs: dict[str, Any], where: str
) -> Resample | None:
    """The resampling a stage's file needs: None when it has none, or when the file's pixel size
    (its ``pixel_size`` parameter) is the one wanted to within :data:`SAME_PIXEL_SIZE`. A file
    further than :data:`PIXEL_SIZE_TOLERANCE` from it is refused (Validate refuses such a reference
    first; this holds an override of the pixel size to the same rule)."""
    if spec is None or spec.path not in params:
        return None
    given, wanted = params.get(spec.pixel_size), _resolve(spec.to, refs, f"{where}.resample.to")
    have, want = _angstrom(given), _angstrom(wanted)
    if have is None or want is None:
        raise ManifestError(f"{where}: resample needs two pixel sizes in Å (got {given!r} and {wanted!r})")
    off = pixel_size_offset(have, want)
    if off <= SAME_PIXEL_SIZE:
        return None
    if off > PIXEL_SIZE_TOLERANCE:
        raise ManifestError(
            f"{where}.{spec.pixel_size}: {have:g} Å is {off:.1%} from the data's {want:g} Å; at most"
            f" {PIXEL_SIZE_TOLERANCE:.0%} can be resampled"
        )
    return Resample(path=spec.path, pixel_size=spec.pixel_size, from_A=have, to_A=want)


def _angstrom(value: Any) -> float | None:
    """A positive number as a float, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return float(value)


def _override_target(preset: Preset, stage_id: str) -> tuple[StageDef, int | None]:
    """The preset stage an override key names, and the round it names (``hetero3``: the hetero
    stage, round 3; ``hetero``: every round, None). A key naming no stage is a ManifestError."""
    by_id = {s.id: s for s in preset.stages}
    if stage_id in by_id:
        return by_id[stage_id], None
    m = re.fullmatch(rf"{REPEATED_STAGE}(\d+)", stage_id)
    if m and REPEATED_STAGE in by_id:
        return by_id[REPEATED_STAGE], int(m.group(1))
    known = ", ".join(by_id)
    raise ManifestError(
        f"pipeline.overrides.{stage_id}: no stage {stage_id!r} in preset {preset.name} (stages: {known})"
    )


def _check_overrides(preset: Preset, overrides: dict[str, dict[str, Any]]) -> int | None:
    """Validate ``pipeline.overrides``; return the hetero round count it sets, if any."""
    rounds: int | None = None
    for stage_id, params in overrides.items():
        stage, round_no = _override_target(preset, stage_id)
        spec = job_types()[stage.job_type]
        for param, value in params.items():
            if stage.id == REPEATED_STAGE and round_no is None and param == ROUNDS_PARAM:
                if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 20:
                    raise ManifestError(
                        f"pipeline.overrides.{stage_id}.{param}: must be an integer from 1 to 20"
                    )
                rounds = value
                continue
            if param not in spec.params:
                raise ManifestError(
                    f"pipeline.overrides.{stage_id}.{param}: job type {stage.job_type} "
                    f"has no parameter {param!r}"
                )
            problem = override_problem(spec.params[param], value, required=param in spec.required_params)
            if problem:
                raise ManifestError(
                    f"pipeline.overrides.{stage_id}.{param}: {problem} (got {excerpt(value)})"
                )
    return rounds


def _check_overrides_apply(
    preset: Preset, chosen: dict[str, str], overrides: dict[str, dict[str, Any]], n_rounds: int
) -> None:
    """An override of a stage the run will not have is refused, never ignored: a stage the
    options leave out, or a round past the last."""
    for stage_id in overrides:
        stage, round_no = _override_target(preset, stage_id)
        if not _applies(stage.when, chosen):
            needs = ", ".join(f"{k}: {v}" for k, v in (stage.when or {}).items())
            has = ", ".join(f"{k}: {chosen.get(k)}" for k in stage.when or {})
            raise ManifestError(
                f"pipeline.overrides.{stage_id}: stage {stage.id!r} of preset {preset.name} runs only with"
                f" pipeline.options {needs}; this run has {has}"
            )
        if round_no is not None and not 1 <= round_no <= n_rounds:
            raise ManifestError(
                f"pipeline.overrides.{stage_id}: this run has {n_rounds} round(s) of {REPEATED_STAGE}"
                f" ({REPEATED_STAGE}1 to {REPEATED_STAGE}{n_rounds}; {REPEATED_STAGE}.rounds sets how many)"
            )


def override_problem(pspec: dict[str, Any], value: Any, *, required: bool = False) -> str | None:
    """What is wrong with ``value`` as an override of a parameter the register describes as
    ``pspec`` (see the comment at the top of ``presets/job_types.yaml``), or None."""
    if value is None:
        return "must be set (the job cannot run without it)" if required else None
    kind = pspec.get("type")
    if kind == "boolean":
        return None if isinstance(value, bool) else "must be true or false"
    if kind in ("integer", "number"):
        numeric = (int,) if kind == "integer" else (int, float)
        if isinstance(value, bool) or not isinstance(value, numeric):
            return "must be an integer" if kind == "integer" else "must be a number"
        low, high = pspec.get("min"), pspec.get("max")
        if (low is not None and value < low) or (high is not None and value > high):
            return f"must be from {low} to {high}"
        return None
    if kind == "string" and isinstance(value, str):
        fmt = pspec.get("format")
        try:
            if fmt == "path":
                check_relative_path(value, "the path")
                return None
            if fmt == "symmetry":
                check_symmetry(value)
                return None
        except ValueError as exc:
            return str(exc).removeprefix("the path ")
        pattern = pspec.get("pattern")
        if pattern and re.fullmatch(pattern, value):
            return None
        return f"must match {pattern}" if pattern else "is not a parameter a manifest may set"
    return "must be text" if kind == "string" else f"has an unknown type {kind!r} in the register"


def _connections(
    inputs: dict[str, list[OutputRef]],
    *,
    previous: str | None,
    last_round: str | None,
    chosen: dict[str, str],
) -> list[InputConnection]:
    out: list[InputConnection] = []
    for input_name, refs in inputs.items():
        for ref in refs:
            if not _applies(ref.when, chosen):
                continue
            stage = ref.stage
            if stage == "previous":
                if previous is None:
                    raise ManifestError("preset: 'previous' used outside a repeated stage")
                stage = previous
            elif stage == REPEATED_STAGE and last_round is not None:
                stage = last_round
            out.append(InputConnection(input=input_name, stage=stage, output=ref.output))
    return out


def expand(
    manifest: Manifest, *, data_dir: str, reference: ReferenceInputs | None = None
) -> list[PlannedStage]:
    """The stages of the manifest's preset with final parameter values, in submission order; a GPU
    stage has a lane only if the preset pins one (:func:`cryopilot.domain.placement.plan` places
    the others).

    ``data_dir`` is where the dataset folder is mounted on the cluster. Parameters are the preset's
    defaults, then manifest references resolved, then ``manifest.pipeline.overrides`` (by stage id;
    ``hetero`` applies to every round, ``hetero3`` to one; ``{hetero: {rounds: N}}`` sets N).

    ``reference``: the run's campaign reference (a repeat run), whose
    :meth:`~cryopilot.domain.reference.ReferenceInputs.placeholders` give the preset's
    ``${reference.<field>}`` values; a preset naming one without it is a :class:`ManifestError`.
    """
    preset = load_preset(manifest.preset_name)
    chosen = preset.chosen(manifest.pipeline.options)
    overrides = manifest.pipeline.overrides
    rounds_override = _check_overrides(preset, overrides)
    refs = _references(manifest, data_dir, reference)

    repeated = next((s for s in preset.stages if s.id == REPEATED_STAGE), None)
    n_rounds = rounds_override or (repeated.rounds if repeated and repeated.rounds else 1)
    _check_overrides_apply(preset, chosen, overrides, n_rounds)
    last_round = f"{REPEATED_STAGE}{n_rounds}" if repeated is not None else None

    planned: list[PlannedStage] = []
    for stage in preset.stages_for(chosen):
        instances: list[tuple[str, str, dict[str, list[OutputRef]], str | None]] = []
        if stage.id == REPEATED_STAGE:
            for k in range(1, n_rounds + 1):
                ins = stage.inputs if k == 1 else (stage.next_round_inputs or stage.inputs)
                prev = f"{REPEATED_STAGE}{k - 1}" if k > 1 else None
                instances.append((f"{REPEATED_STAGE}{k}", f"{stage.title} (round {k}/{n_rounds})", ins, prev))
        else:
            instances.append((stage.id, stage.title, stage.inputs, None))

        for stage_id, title, inputs, previous in instances:
            params: dict[str, Any] = {}
            for name, value in stage.params.items():
                resolved = _resolve(value, refs, f"preset {preset.name}: {stage_id}.{name}")
                if resolved is not None:
                    params[name] = resolved
            pspecs = job_types()[stage.job_type].params
            for key in (stage.id, stage_id) if stage_id != stage.id else (stage.id,):
                for name, value in overrides.get(key, {}).items():
                    if key == REPEATED_STAGE and name == ROUNDS_PARAM:
                        continue
                    if value is None:  # null: the job type's own default
                        params.pop(name, None)
                    elif pspecs[name].get("format") == "path":  # relative to the dataset folder
                        params[name] = _in_folder(data_dir, value)
                    else:
                        params[name] = value
            planned.append(
                PlannedStage(
                    id=stage_id,
                    title=title,
                    job_type=stage.job_type,
                    lane=stage.lane,
                    gpus=stage.gpus,
                    params=params,
                    inputs=_connections(
                        inputs,
                        previous=previous,
                        last_round=None if stage.id == REPEATED_STAGE else last_round,
                        chosen=chosen,
                    ),
                    decision=stage.decision,
                    resample=_resample(stage.resample, params, refs, f"preset {preset.name}: {stage_id}"),
                    time_limit_seconds=round(stage.time_limit_hours * 3600),
                )
            )
    return planned
