"""Properties of the manifest parser, checked with hypothesis.

1. Any valid manifest (drawn from a strategy built from the model's own JSON schema, plus the
   rules its validators add) reads back equal after a trip through YAML and through JSON.
2. Whatever the bytes, text or structure, ``parse_manifest`` raises nothing but ``ManifestError``,
   and its message is one non-empty line of at most ``MAX_MESSAGE_CHARS`` characters that never
   quotes more than ``ECHO_LIMIT`` consecutive characters of the input.
3. A valid manifest with one field made invalid (or missing, or one unknown field added) always
   fails with a message naming that field.
4. Any manifest Validate accepts (the manifest's rules, then its preset's overrides checked against
   the job-type register and the stages placed) makes run-table items under 350 KB and agent
   commands under SSM's limits, however long each value is within its bounds.
"""

from __future__ import annotations

import copy
import json
import math
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryopilot.core.errors import ManifestError
from cryopilot.core.validation import MAX_EXCERPT_CHARS, MAX_MESSAGE_CHARS
from cryopilot.domain.manifest import (
    DATASET_RE,
    MAX_EMAIL_CHARS,
    MAX_SYMMETRY_ORDER,
    MAX_TEXT_CHARS,
    SYMMETRY_RE,
    Manifest,
    manifest_from_dict,
    parse_manifest,
)
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

#: The longest run of input characters a message may repeat (excerpts are clipped shorter).
ECHO_LIMIT = 100
assert MAX_EXCERPT_CHARS < ECHO_LIMIT

#: Numbers a run record can store; the model rejects non-zero numbers outside this.
STORABLE = (1e-100, 1e100)

FAST = settings(
    max_examples=100, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
BOM = b"\xef\xbb\xbf"
SCHEMA = Manifest.model_json_schema()


# --- valid manifests, from the schema ------------------------------------------------------------

symmetries = (
    st.sampled_from(["T", "O", "I"])
    | st.integers(1, MAX_SYMMETRY_ORDER).map(lambda n: f"C{n}")
    | st.integers(2, MAX_SYMMETRY_ORDER).map(lambda n: f"D{n}")
)
_path_part = st.from_regex(r"[A-Za-z0-9_*?\[\]{}. -]{1,20}", fullmatch=True).filter(
    lambda p: p not in (".", "..") and p.strip() == p
)
#: relative paths the validators accept (no "..", no control characters, no surrounding spaces)
paths = st.lists(_path_part, min_size=1, max_size=4).map("/".join)
emails = st.from_regex(
    r"[a-z0-9_+-]{1,10}(\.[a-z0-9_+-]{1,10})?@[a-z0-9]([a-z0-9-]{0,18}[a-z0-9])?\.[a-z]{2,6}", fullmatch=True
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**18), max_value=10**18)
    | st.floats(allow_nan=False, allow_infinity=False).filter(
        lambda x: x == 0 or STORABLE[0] <= abs(x) <= STORABLE[1]
    )
    | st.text(max_size=30)
)
overrides = st.dictionaries(
    st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True),
    st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,23}", fullmatch=True), scalars, max_size=3),
    max_size=3,
)

#: Fields whose rules live in validators, not in the schema.
SPECIAL: dict[str, st.SearchStrategy[Any]] = {
    "input.glob": paths,
    "acquisition.gain_reference": st.none() | paths,
    "notify": st.lists(emails, max_size=3),
    "pipeline.overrides": overrides,
    # a preset's options: the repeat preset's, or names and choices no preset has
    "pipeline.options": st.dictionaries(
        st.sampled_from(["templates"]) | st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True),
        st.sampled_from(["class_averages", "projections"]) | st.text(max_size=20),
        max_size=2,
    ),
    "pipeline.preset": st.none() | st.text(max_size=20),
    "symmetry": symmetries,
    "compound": st.none() | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9 ._#()-]{0,40}[A-Za-z0-9]", fullmatch=True),
    # one source: an earlier run, or a map in S3 with its pixel size (and files in its folder)
    "reference": st.none()
    | st.builds(lambda run: {"run": run}, st.from_regex(r"[A-Za-z0-9_-]{1,80}", fullmatch=True))
    | st.builds(
        lambda folder, px, mask: {
            "map": f"s3://{folder}/map.mrc",
            "pixel_size_A": px,
            **({"mask": f"s3://{folder}/mask.mrc"} if mask else {}),
        },
        st.from_regex(r"[a-z0-9]{3,20}/[A-Za-z0-9._-]{1,10}", fullmatch=True).filter(
            lambda f: f.split("/")[1] not in (".", "..")
        ),
        st.floats(0.2, 20.0),
        st.booleans(),
    ),
}


def _number(node: dict[str, Any]) -> st.SearchStrategy[float]:
    low = node.get("minimum", node.get("exclusiveMinimum", -STORABLE[1]))
    high = node.get("maximum", node.get("exclusiveMaximum", STORABLE[1]))
    return st.floats(
        min_value=low,
        max_value=high,
        exclude_min="exclusiveMinimum" in node,
        exclude_max="exclusiveMaximum" in node,
        allow_nan=False,
        allow_infinity=False,
    ).filter(lambda x: x == 0 or STORABLE[0] <= abs(x) <= STORABLE[1])


def _from_schema(node: dict[str, Any], where: str = "") -> st.SearchStrategy[Any]:
    """A strategy for the values ``node`` (a JSON schema piece of :class:`Manifest`) allows."""
    if where in SPECIAL:
        return SPECIAL[where]
    if "$ref" in node:
        return _from_schema(SCHEMA["$defs"][node["$ref"].rsplit("/", 1)[1]], where)
    if "anyOf" in node:
        return st.one_of([_from_schema(n, where) for n in node["anyOf"]])
    if "enum" in node:
        return st.sampled_from(node["enum"])
    kind = node.get("type")
    if kind == "null":
        return st.none()
    if kind == "string":
        return st.from_regex(node["pattern"], fullmatch=True) if "pattern" in node else st.text(max_size=20)
    if kind == "integer":
        low = node.get("minimum", node.get("exclusiveMinimum", -1) + 1)
        return st.integers(min_value=low, max_value=node.get("maximum"))
    if kind == "number":
        return _number(node)
    if kind == "array":
        return st.lists(_from_schema(node["items"], where + ".items"), max_size=node.get("maxItems", 5))
    assert kind == "object", (where, node)
    fields = {
        name: _from_schema(sub, f"{where}.{name}".lstrip(".")) for name, sub in node["properties"].items()
    }
    required = set(node.get("required", ()))
    return st.fixed_dictionaries(
        {k: v for k, v in fields.items() if k in required},
        optional={k: v for k, v in fields.items() if k not in required},
    )


def _consistent(doc: dict[str, Any]) -> dict[str, Any]:
    """Apply the rules across fields: a gain reference only for raw movies; Spot only on
    cryopilot's layout."""
    if doc["input"]["kind"] == "micrographs":
        doc["acquisition"].pop("gain_reference", None)
    pipeline = doc.get("pipeline") or {}
    if pipeline.get("capacity") == "spot-where-safe" and pipeline.get("layout") == "whitepaper":
        pipeline["layout"] = "cryopilot"
    return doc


manifests = _from_schema(SCHEMA).map(_consistent)


@FAST
@given(manifests)
def test_valid_manifests_round_trip_through_yaml_and_json(doc: dict[str, Any]) -> None:
    expected = Manifest.model_validate(doc)
    dumped = expected.model_dump(mode="json")
    # YAML 1.1 counts NEL, LS and PS as line breaks: written raw inside a scalar (PyYAML's emitter
    # does so with allow_unicode) they read back as a fold. A manifest holding one round-trips
    # through YAML's escapes instead, as it would have to be written by hand.
    raw_ok = not any(c in json.dumps(dumped, ensure_ascii=False) for c in "\x85\u2028\u2029")
    as_yaml = yaml.safe_dump(dumped, allow_unicode=raw_ok).encode()
    as_json = json.dumps(dumped).encode()
    for data, source in [(as_yaml, "m.yaml"), (as_json, "m.json")]:
        parsed = parse_manifest(data, source=source)
        assert parsed == expected
        assert parsed.model_dump() == expected.model_dump()
        # the byte order mark some editors write changes nothing (see test_bad_input.py)
        assert parse_manifest(BOM + data, source=source) == expected


# --- anything else: only ManifestError, and a bounded message ------------------------------------


def _check_message(exc: ManifestError, source: str, raw: str | None) -> None:
    message = str(exc)
    assert message.startswith(f"{source}: ")
    assert len(message) > len(source) + 2
    assert len(message) <= MAX_MESSAGE_CHARS
    assert message.isprintable(), "one line: no newlines or control characters"
    if raw:
        assert not _echo(raw, message), f"the message repeats more than {ECHO_LIMIT} characters of the input"


def _echo(raw: str, message: str) -> bool:
    """Does ``message`` contain more than ECHO_LIMIT consecutive characters of ``raw``? (Any such
    run contains an aligned block of half that length: look only around those.)"""
    half = ECHO_LIMIT // 2
    for j in range(0, len(raw) - half + 1, half):
        if raw[j : j + half] in message:
            start = max(0, j - half)
            if any(raw[i : i + ECHO_LIMIT + 1] in message for i in range(start, j + 1)):
                return True
    return False


def _parse_fails_cleanly(data: bytes, source: str) -> None:
    try:
        parse_manifest(data, source=source)
    except ManifestError as exc:
        _check_message(exc, source, data.decode("utf-8", "replace"))
    # anything else propagates and fails the test; a valid manifest is fine


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.binary(max_size=400), st.sampled_from(["m.yaml", "m.json"]))
@example(b"[" * 100_000, "m.yaml")
@example(b"[" * 100_000, "m.json")
@example(b'{"a": ' + b"[" * 3000 + b"]" * 3000 + b"}", "m.json")
@example(b"a: " + b"9" * 5000, "m.yaml")
@example(b'{"a": ' + b"9" * 5000 + b"}", "m.json")
@example(b"a: 2026-13-45", "m.yaml")
@example(b"a: !!python/object/apply:os.system ['true']", "m.yaml")
@example(b"dataset: x\x00", "m.yaml")
@example(BOM, "m.json")
@example(b"\xff\xfe\x00d\x00a", "m.yaml")
@example(b"x" * 2_000_000, "m.yaml")
def test_arbitrary_bytes_give_only_manifest_errors(data: bytes, source: str) -> None:
    _parse_fails_cleanly(data, source)


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.text(max_size=400), st.sampled_from(["m.yaml", "m.json"]))
@example("k: " + "v" * 5000 + "\n" + "\n".join(f"x{i}: {i}" for i in range(5000)), "m.yaml")
@example("notify: [" + ", ".join(["a" * 500] * 20) + "]", "m.yaml")
@example("!" + "t" * 3000 + " {}", "m.yaml")
@example('{"dataset": "' + "\\ud800" * 300 + '"}', "m.json")
@example("\t" * 500, "m.yaml")
def test_arbitrary_text_gives_only_manifest_errors(text: str, source: str) -> None:
    _parse_fails_cleanly(text.encode("utf-8", "surrogatepass"), source)


_keys = st.text(max_size=120) | st.sampled_from(sorted(SCHEMA["properties"])) | st.integers() | st.none()
structures = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(st.characters(exclude_categories=()), max_size=150)
    | st.binary(max_size=10)
    | st.dates(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_keys, children, max_size=4),
    max_leaves=30,
)


def _graft(doc: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    """``doc`` with the node at ``path`` (made if absent) replaced by ``value``."""
    out = copy.deepcopy(doc)
    node = out
    for key in path[:-1]:
        child = node.get(key)
        node[key] = child = child if isinstance(child, dict) else {}
        node = child
    node[path[-1]] = value
    return out


_places = st.sampled_from(
    [
        ["dataset"],
        ["input"],
        ["input", "glob"],
        ["acquisition"],
        ["acquisition", "voltage_kV"],
        ["acquisition", "gain_reference"],
        ["pipeline", "overrides"],
        ["pipeline", "overrides", "extract"],
        ["notify"],
        ["limits"],
        ["extra"],
    ]
)


@settings(max_examples=150, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(structures | st.builds(_graft, manifests, _places, structures), st.sampled_from(["m.yaml", "m.json"]))
def test_arbitrary_structures_give_only_manifest_errors(doc: Any, source: str) -> None:
    try:
        manifest_from_dict(doc, source=source)
    except ManifestError as exc:
        _check_message(exc, source, None)
    text = yaml.safe_dump(doc) if source == "m.yaml" else json.dumps(doc, default=repr)
    _parse_fails_cleanly(text.encode("utf-8", "surrogatepass"), source)


# --- one field wrong: the message names it ---------------------------------------------------------

_letters = st.text(st.characters(categories=["Lu", "Ll"]), min_size=1, max_size=12)
_floats = st.floats()


def _outside(low: float, high: float, *, low_ok: bool = False) -> st.SearchStrategy[Any]:
    """Numbers outside [low, high] (``low`` itself is invalid unless ``low_ok``), NaN, infinities,
    numbers too small to store, and things that are not numbers at all."""
    below = st.floats(max_value=low, exclude_max=low_ok)
    above = st.floats(min_value=high, exclude_min=True)
    tiny = st.floats(min_value=1e-300, max_value=1e-101)
    return below | above | tiny | st.just(math.nan) | _letters | st.lists(st.integers(), max_size=2)


def _bad_paths() -> st.SearchStrategy[Any]:
    return (
        paths.map(lambda p: "/" + p)
        | paths.map(lambda p: f"{p}/../{p}")
        | paths.map(lambda p: "../" + p)
        | st.tuples(paths, st.characters(max_codepoint=31), paths).map("".join)
        | paths.map(lambda p: f" {p}")
        | paths.map(lambda p: f"s3://bucket/{p}")
        | st.just("")
        | st.integers()
    )


def _not_matching(pattern: str) -> st.SearchStrategy[Any]:
    return st.text(max_size=60).filter(lambda s: not re.fullmatch(pattern, s)) | st.integers() | st.none()


#: (field, invalid values): each strategy draws values the model must refuse for that field.
INVALID: list[tuple[str, st.SearchStrategy[Any]]] = [
    ("dataset", _not_matching(DATASET_RE)),
    ("input.kind", st.text(max_size=20).filter(lambda s: s not in ("movies", "micrographs")) | st.integers()),
    ("input.glob", _bad_paths()),
    (
        "input.expected_files",
        st.integers(max_value=0)
        | st.integers(min_value=10_000_001)
        | _floats.filter(lambda x: not x.is_integer())
        | _letters,
    ),
    ("acquisition.pixel_size_A", _outside(0.1, 20.0)),
    ("acquisition.voltage_kV", st.integers().filter(lambda v: v not in (100, 120, 200, 300)) | _letters),
    ("acquisition.cs_mm", _outside(0.0, 10.0, low_ok=False).filter(lambda x: x != 0.0)),
    ("acquisition.total_dose_e_per_A2", _outside(0.0, 500.0)),
    ("acquisition.gain_reference", _bad_paths()),
    ("particle.diameter_A", _outside(20.0, 2000.0, low_ok=True).filter(lambda x: x != 20.0)),
    ("symmetry", _not_matching(SYMMETRY_RE)),
    ("pipeline.preset", st.integers() | st.lists(st.text(max_size=5), min_size=1, max_size=2)),
    (
        "pipeline.overrides",
        st.lists(st.integers(), max_size=2)
        | st.dictionaries(st.just("extract"), st.integers() | st.text(max_size=5), min_size=1)
        | st.dictionaries(
            st.just("extract"),
            st.dictionaries(
                st.just("box_size_pix"),
                st.binary(max_size=4)
                | st.lists(st.integers(), max_size=2)
                | st.just(math.inf)
                | st.integers(min_value=10**19)
                | st.floats(min_value=1e101, allow_infinity=False),
                min_size=1,
            ),
            min_size=1,
        ),
    ),
    (
        "notify",
        st.lists(_letters, min_size=1, max_size=3)
        | st.lists(emails, min_size=21, max_size=22)
        | st.tuples(emails, st.characters(max_codepoint=31)).map("".join).map(lambda e: [e])
        | emails,
    ),
    ("limits.max_hours", _outside(0.0, 24 * 14)),
    ("limits.max_cost_usd", _outside(0.0, STORABLE[1])),
]

REQUIRED = ["dataset", "input", "input.kind", "input.glob", "acquisition", "acquisition.pixel_size_A"]
REQUIRED += ["acquisition.voltage_kV", "acquisition.cs_mm", "acquisition.total_dose_e_per_A2"]
REQUIRED += ["particle", "particle.diameter_A"]
SECTIONS = ["", "input", "acquisition", "particle", "pipeline", "limits"]


def _set(doc: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    return _graft(doc, dotted.split("."), value)


def _delete(doc: dict[str, Any], dotted: str) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    *parents, leaf = dotted.split(".")
    node = out
    for p in parents:
        node = node[p]
    del node[leaf]
    return out


def _wrong_value(name: str, invalid: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[dict[str, Any], str]]:
    return st.tuples(manifests, invalid).map(lambda t: (_set(t[0], name, t[1]), name))


def _unknown_field(doc: dict[str, Any], section: str, key: str) -> tuple[dict[str, Any], str]:
    name = f"{section}.x_{key}".lstrip(".")
    return _set(doc, name, 1), name


def _mutations() -> st.SearchStrategy[tuple[dict[str, Any], str]]:
    """(a valid manifest with one thing wrong, the field the message must name)."""
    missing = st.tuples(manifests, st.sampled_from(REQUIRED)).map(lambda t: (_delete(t[0], t[1]), t[1]))
    unknown = st.builds(
        _unknown_field,
        manifests,
        st.sampled_from(SECTIONS),
        st.from_regex(r"[a-z][a-z_]{0,15}", fullmatch=True),
    )
    return st.one_of([*(_wrong_value(n, s) for n, s in INVALID), missing, unknown])


def _has_bytes(value: Any) -> bool:
    if isinstance(value, bytes | bytearray):
        return True
    if isinstance(value, dict):
        return any(_has_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_bytes(v) for v in value)
    return False


def _names(message: str, field: str) -> bool:
    """Does ``message`` have a problem about ``field`` (``field: ...`` or ``field.<part>: ...``)?"""
    return re.search(rf"(?:^|: |; ){re.escape(field)}[.:]", message) is not None


@settings(max_examples=250, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutations(), st.sampled_from(["m.yaml", "m.json"]))
def test_one_invalid_field_is_named(mutation: tuple[dict[str, Any], str], source: str) -> None:
    doc, field = mutation
    # JSON has no binary values: json.dumps(default=repr) would turn b"" into the valid text "b''"
    assume(source == "m.yaml" or not _has_bytes(doc))
    data = yaml.safe_dump(doc).encode() if source == "m.yaml" else json.dumps(doc, default=repr).encode()
    with pytest.raises(ManifestError) as info:
        parse_manifest(data, source=source)
    assert _names(str(info.value), field), (field, str(info.value))
    _check_message(info.value, source, None)


# --- what Validate accepts fits DynamoDB and SSM ---------------------------------------------------

EVENTS_MANIFESTS = Path(__file__).resolve().parents[2] / "events" / "manifests"

#: The run table's items must stay this far below DynamoDB's 400 KB item limit: the record grows
#: during the run (stage results, decisions, mails), so Validate's part must leave room.
ITEM_BUDGET = 350 * 1024

#: SSM's limits for the agent's commands (``AWS-RunShellScript``, one ``commands`` entry):
#: - the SSM API Reference, CreateDocument ``Content``: a document "must not exceed 64KB. This quota
#:   also includes the content specified for input parameters at runtime"
#:   (https://docs.aws.amazon.com/systems-manager/latest/APIReference/API_CreateDocument.html), so
#:   the parameters of one SendCommand share 64 KB with the document's own content;
#: - the SSM API Reference, SendCommand ``Comment``: at most 100 characters
#:   (https://docs.aws.amazon.com/systems-manager/latest/APIReference/API_SendCommand.html).
#: We keep a command to 24 KB, leaving the rest of the 64 KB to AWS-RunShellScript itself and the
#: executionTimeout parameter.
SSM_DOCUMENT_LIMIT = 64 * 1024
SSM_COMMAND_BUDGET = 24 * 1024
SSM_COMMENT_LIMIT = 100


def ddb_size(value: Any) -> int:
    """Bytes DynamoDB counts for a value, by "DynamoDB item sizes and formats" (Developer Guide,
    https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/CapacityUnitCalculations.html):
    strings and names in UTF-8 bytes; a number 1 byte per two significant digits plus 1; null and
    booleans 1; a list or map 3 bytes plus 1 per element plus its elements (a map's with names)."""
    if value is None or isinstance(value, bool):
        return 1
    if isinstance(value, Decimal | int | float):
        digits = str(Decimal(str(value)).normalize()).lstrip("-").replace(".", "").lstrip("0")
        digits = re.sub(r"E.*", "", digits.upper())
        return (max(1, len(digits)) + 1) // 2 + 1
    if isinstance(value, str):
        return len(value.encode("utf-8"))
    if isinstance(value, list):
        return 3 + sum(1 + ddb_size(v) for v in value)
    assert isinstance(value, dict), type(value)
    return 3 + sum(1 + len(k.encode("utf-8")) + ddb_size(v) for k, v in value.items())


def item_size(item: dict[str, Any]) -> int:
    """An item's size: its attributes' names and values (no overhead for the item itself)."""
    stored = json.loads(json.dumps(item), parse_float=Decimal)
    return sum(len(k.encode("utf-8")) + ddb_size(v) for k, v in stored.items())


def test_item_size_follows_the_documented_rules() -> None:
    # the examples worked out by hand from the rules above
    assert item_size({"a": "xyz"}) == 1 + 3
    assert item_size({"n": 12345}) == 1 + 4  # 5 digits: 3 bytes + 1
    assert item_size({"l": ["ab", True]}) == 1 + 3 + (1 + 2) + (1 + 1)
    assert item_size({"m": {"k": "é"}}) == 1 + 3 + (1 + 1 + 2)


#: Characters of long values: ASCII, and 2- and 3-byte UTF-8 ones (the worst case per character).
_WIDE = st.sampled_from("aZ09_-*?é漢")
_wide_part = st.text(_WIDE, min_size=1, max_size=MAX_TEXT_CHARS)
#: Paths under the path rules, up to the longest allowed.
long_paths = st.lists(_wide_part, min_size=1, max_size=4).map(lambda ps: "/".join(ps)[:MAX_TEXT_CHARS])
#: Addresses up to the longest allowed: a dot-atom local part of up to 64 characters, host labels
#: of up to 63.
long_emails = st.builds(
    lambda local, labels: f"{'.'.join(local)}@{'.'.join(labels)}.org",
    st.lists(st.text(st.sampled_from("abc+_-"), min_size=1, max_size=16), min_size=1, max_size=4),
    st.lists(st.text(st.sampled_from("abc"), min_size=1, max_size=63), min_size=1, max_size=3),
).filter(lambda e: len(e) <= MAX_EMAIL_CHARS and len(e.partition("@")[0]) <= 64)


def _param_values(pspec: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values the register allows for one parameter (see presets/job_types.yaml)."""
    kind = pspec["type"]
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(pspec.get("min", -(10**18)), pspec.get("max", 10**18))
    if kind == "number":
        low, high = pspec.get("min", -1e100), pspec.get("max", 1e100)
        floats = st.floats(low, high, allow_nan=False, allow_infinity=False)
        return st.integers(math.ceil(low), math.floor(high)) | floats.filter(
            lambda x: x == 0 or STORABLE[0] <= abs(x) <= STORABLE[1]
        )
    if pspec.get("format") == "path":
        return long_paths
    if pspec.get("format") == "symmetry":
        return symmetries
    return st.from_regex(pspec["pattern"], fullmatch=True)


@st.composite
def accepted_manifests(draw: st.DrawFn) -> dict[str, Any]:
    """Manifests at the edges of every bound, with overrides drawn from the job-type register."""
    from cryopilot.core.naming import REPEATED_STAGE
    from cryopilot.domain.presets import ROUNDS_PARAM, job_types, load_preset

    doc = copy.deepcopy(draw(manifests))
    kind = doc["input"]["kind"]
    doc["input"]["glob"] = draw(long_paths)
    if kind == "movies":
        doc["acquisition"]["gain_reference"] = draw(st.none() | long_paths)
    doc["notify"] = draw(st.lists(long_emails, max_size=20))
    preset = load_preset(kind)
    register = job_types()
    overrides: dict[str, dict[str, Any]] = {}
    rounds = draw(st.integers(1, 20))
    ids = [s.id for s in preset.stages] + [f"{REPEATED_STAGE}{k}" for k in range(1, rounds + 1)]
    for stage_id in draw(st.lists(st.sampled_from(ids), unique=True, max_size=len(ids))):
        base = REPEATED_STAGE if stage_id.startswith(REPEATED_STAGE) else stage_id
        job = register[next(s.job_type for s in preset.stages if s.id == base)]
        names = draw(st.lists(st.sampled_from(sorted(job.params) or ["-"]), unique=True, max_size=16))
        params = {n: draw(_param_values(job.params[n])) for n in names if n in job.params}
        if params:
            overrides[stage_id] = params
    overrides.setdefault(REPEATED_STAGE, {})[ROUNDS_PARAM] = rounds
    doc["pipeline"] = {
        "preset": kind,
        "overrides": overrides,
        "layout": draw(st.sampled_from(["cryopilot", "whitepaper"])),
    }
    return doc


def _largest(kind: str) -> dict[str, Any]:
    """The largest manifest Validate accepts for ``kind``: every stage and round overridden, every
    parameter set, each text at its longest in 3-byte characters, 20 addresses of 254 characters."""
    from cryopilot.core.naming import REPEATED_STAGE
    from cryopilot.domain.presets import ROUNDS_PARAM, job_types, load_preset

    longest = "/".join(["漢" * 127] * 4)
    assert len(longest) <= MAX_TEXT_CHARS

    def widest(pspec: dict[str, Any]) -> Any:
        if pspec["type"] == "boolean":
            return True
        if pspec["type"] in ("integer", "number"):
            return 1 if pspec.get("max") == 8 else pspec.get("max", 1)  # 1 GPU fits every lane
        if pspec.get("format") == "path":
            return longest
        if pspec.get("format") == "symmetry":
            return f"D{MAX_SYMMETRY_ORDER}"
        return "x" * 32

    preset = load_preset(kind)
    ids = [s.id for s in preset.stages] + [f"{REPEATED_STAGE}{k}" for k in range(1, 21)]
    overrides = {}
    for stage_id in ids:
        base = REPEATED_STAGE if stage_id.startswith(REPEATED_STAGE) else stage_id
        job = job_types()[next(s.job_type for s in preset.stages if s.id == base)]
        overrides[stage_id] = {n: widest(p) for n, p in job.params.items()}
    overrides[REPEATED_STAGE][ROUNDS_PARAM] = 20
    email = "a" * 64 + "@" + "b" * 63 + "." + "c" * 60 + "." + "d" * (MAX_EMAIL_CHARS - 194) + ".org"
    doc = yaml.safe_load((EVENTS_MANIFESTS / ("cgrp.yaml" if kind == "movies" else "spike.yaml")).read_text())
    doc["input"]["glob"] = longest
    if kind == "movies":
        doc["acquisition"]["gain_reference"] = longest
    doc["dataset"] = "D" * 48
    doc["notify"] = [email] * 20
    doc["pipeline"] = {"preset": kind, "overrides": overrides}
    return doc


@settings(max_examples=60, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(accepted_manifests())
@example(_largest("movies"))
@example(_largest("micrographs"))
def test_what_validate_accepts_fits_dynamodb_and_ssm(doc: dict[str, Any]) -> None:
    from cryopilot.adapters.agent_client import command_line
    from cryopilot.adapters.execution_input import ExecutionInput
    from cryopilot.core.naming import cluster_name_for
    from cryopilot.domain import placement
    from cryopilot.domain.clusterconfig.mounts import FSX_DATA_DIR
    from cryopilot.steps.stage import submit_argv
    from cryopilot.steps.validate import context_fields, record_fields

    manifest = manifest_from_dict(doc)
    try:
        stages = placement.plan(manifest, data_dir=f"{FSX_DATA_DIR}/")
    except ManifestError:  # Validate refuses it (a GPU count beyond its stage's lane)
        assume(False)
        raise

    # the longest names the stack allows: run ids of 80 characters, a 63-character bucket, an S3
    # key of 1,024 bytes, a version id as long as S3 gives (1,024)
    run_id = "r" * 80
    bucket = "b" * 63
    location = {"bucket": bucket, "key": "k" * 1024, "version_id": "v" * 1024, "etag": '"' + "e" * 32 + '"'}
    exec_input = ExecutionInput.model_validate({"manifest": location, "trigger": "s3"})
    run_item = {
        "pk": f"run#{run_id}",
        "kind": "run",
        "run_id": run_id,
        "status": "RUNNING",
        "created_at": "2026-01-01T00:00:00.000000+00:00",
        "updated_at": "2026-01-01T00:00:00.000000+00:00",
        "execution_arn": "arn:aws:states:us-east-1:123456789012:execution:" + "s" * 80 + ":" + run_id,
        "started_at": "2026-01-01T00:00:00.000000+00:00",
        "started_epoch": 1767225600.123456,
        "decisions": [],
        "mails": [],
        # a run waiting for a slot keeps its execution input; an operator's start of a local file
        # carries the manifest inline in it
        "start_input": json.dumps(
            {
                "trigger": "operator",
                "manifest_inline": manifest.model_dump(mode="json", exclude_none=True),
                "data_s3_uri": f"s3://{bucket}/datasets/{manifest.dataset}/",
            }
        ),
        **record_fields(
            manifest,
            stages,
            location_doc=location,
            data_uri=f"s3://{bucket}/datasets/{manifest.dataset}/",
            cluster_name=cluster_name_for(run_id),
            exec_input=exec_input,
        ),
    }
    plan_item = {
        "pk": f"plan#{run_id}",
        "kind": "plan",
        "run_id": run_id,
        "plan": [s.model_dump(mode="json") for s in stages],
    }
    ctx_item = {
        "pk": f"ctx#{run_id}",
        **context_fields(manifest, exec_input, started_epoch=1767225600.123456),
    }
    for item in (run_item, plan_item, ctx_item):
        assert item_size(item) < ITEM_BUDGET, (item["pk"][:5], item_size(item))

    for stage in stages:
        argv = submit_argv(run_id, stage)
        command = command_line(argv)
        assert len(command.encode("utf-8")) <= SSM_COMMAND_BUDGET < SSM_DOCUMENT_LIMIT, (
            stage.id,
            len(command),
        )
        assert len(f"cryopilot-agent {argv[0]}") <= SSM_COMMENT_LIMIT
