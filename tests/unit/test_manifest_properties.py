"""Properties of the manifest parser, checked with hypothesis.

1. Any valid manifest (drawn from a strategy built from the model's own JSON schema, plus the
   rules its validators add) reads back equal after a trip through YAML and through JSON.
2. Whatever the bytes, text or structure, ``parse_manifest`` raises nothing but ``ManifestError``,
   and its message is one non-empty line of at most ``MAX_MESSAGE_CHARS`` characters that never
   quotes more than ``ECHO_LIMIT`` consecutive characters of the input.
3. A valid manifest with one field made invalid (or missing, or one unknown field added) always
   fails with a message naming that field.
"""

from __future__ import annotations

import copy
import json
import math
import re
from typing import Any

import pytest
import yaml
from cryopilot.core.errors import ManifestError
from cryopilot.core.validation import MAX_EXCERPT_CHARS, MAX_MESSAGE_CHARS
from cryopilot.domain.manifest import (
    DATASET_RE,
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

_path_part = st.from_regex(r"[A-Za-z0-9_*?\[\]{}. -]{1,20}", fullmatch=True).filter(
    lambda p: p not in (".", "..") and p.strip() == p
)
#: relative paths the validators accept (no "..", no control characters, no surrounding spaces)
paths = st.lists(_path_part, min_size=1, max_size=4).map("/".join)
emails = st.from_regex(r"[a-z0-9._+-]{1,20}@[a-z0-9-]{1,20}\.[a-z]{2,6}", fullmatch=True)
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
    "pipeline.preset": st.none() | st.text(max_size=20),
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
    """Apply the one rule across fields: a gain reference only for raw movies."""
    if doc["input"]["kind"] == "micrographs":
        doc["acquisition"].pop("gain_reference", None)
    return doc


manifests = _from_schema(SCHEMA).map(_consistent)


@FAST
@given(manifests)
def test_valid_manifests_round_trip_through_yaml_and_json(doc: dict[str, Any]) -> None:
    expected = Manifest.model_validate(doc)
    dumped = expected.model_dump(mode="json")
    as_yaml = yaml.safe_dump(dumped, allow_unicode=True).encode()
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
