from __future__ import annotations

import json
import re

import pytest
import yaml
from cryopilot.core.errors import ManifestError
from cryopilot.domain.location import is_manifest_key, manifest_prefix
from cryopilot.domain.manifest import MAX_MANIFEST_BYTES, Manifest, check_notify_domains, parse_manifest

from tests.conftest import EVENTS


@pytest.mark.parametrize("name", ["cgrp.yaml", "glp1r.yaml", "spike.yaml"])
def test_documented_examples_parse(name: str) -> None:
    m = parse_manifest((EVENTS / "manifests" / name).read_bytes(), source=name)
    assert isinstance(m, Manifest)
    assert m.preset_name in ("movies", "micrographs")


def test_preset_defaults_to_input_kind() -> None:
    m = parse_manifest((EVENTS / "manifests" / "spike.yaml").read_bytes())
    assert m.preset_name == "micrographs"
    assert m.symmetry == "C3"


def test_json_manifest_is_accepted(manifest_text: str) -> None:
    doc = yaml.safe_load(manifest_text)
    m = parse_manifest(json.dumps(doc).encode(), source="datasets/x/cryopilot.json")
    assert m.dataset == "CGRP-2026-11"


def _bad(doc_change: dict, manifest_text: str) -> str:
    doc = yaml.safe_load(manifest_text)
    for dotted, value in doc_change.items():
        node = doc
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        if value is ...:
            del node[leaf]
        else:
            node[leaf] = value
    with pytest.raises(ManifestError) as info:
        parse_manifest(yaml.safe_dump(doc).encode(), source="m.yaml")
    return str(info.value)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"acquisition.voltage_kV": 250}, "acquisition.voltage_kV"),
        ({"acquisition.pixel_size_A": -1}, "acquisition.pixel_size_A"),
        ({"acquisition.pixel_size_A": "small"}, "acquisition.pixel_size_A"),
        ({"particle.diameter_A": 5}, "particle.diameter_A"),
        ({"dataset": "bad name!"}, "dataset"),
        ({"symmetry": "X9"}, "symmetry"),
        ({"input.kind": "tomograms"}, "input.kind"),
        ({"input.glob": "../other/*.tif"}, "'..'"),
        ({"input.glob": "/abs/*.tif"}, "relative"),
        ({"acquisition": ...}, "acquisition: required field is missing"),
        ({"colour": "blue"}, "colour: unknown field"),
        ({"notify": ["not-an-address"]}, "not an email address"),
        ({"notify": ["a@b.co\n"]}, "notify: not an email address: 'a@b.co\\n'"),
        ({"notify": ["a@b.co\nBcc: x@y.org"]}, "notify: not an email address"),
        ({"input.expected_files": 0}, "input.expected_files"),
    ],
)
def test_bad_field_is_named(change: dict, expected: str, manifest_text: str) -> None:
    message = _bad(change, manifest_text)
    assert message.startswith("m.yaml: ")
    assert expected in message


@pytest.mark.parametrize(
    "address",
    [
        "a\u200b@b.co",  # zero width space
        "\uff41@b.co",  # fullwidth a
        "a@b\u202e.co",  # right-to-left override
        "caf\u00e9@b.co",  # any non-ASCII letter
        "a@b\u00fc.co",  # an internationalised domain (SNS takes ASCII only)
        "a b@c.co",
        '"a b"@c.co',  # quoted local parts are not accepted
        "a..b@c.co",
        ".a@b.co",
        "a.@b.co",
        "a@-b.co",
        "a@b-.co",
        "a@b_c.co",
        "a@b..co",
        "a@b.c0",
        "a@[192.0.2.1]",
        "x" * 65 + "@b.co",  # RFC 5321: a local part has at most 64 characters
    ],
)
def test_notify_addresses_are_ascii_dot_atoms_at_host_names(address: str, manifest_text: str) -> None:
    message = _bad({"notify": [address]}, manifest_text)
    assert "notify: not an email address: " in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "address",
    [
        "a@b.co",
        "first.last+tag@lab-1.example.org",
        "o'neil@example.org",
        "x!#$%&*/=?^_`{|}~-@b.co",
        "x" * 64 + "@b.co",
    ],
)
def test_notify_accepts_every_rfc_5322_dot_atom_local_part(address: str, manifest_text: str) -> None:
    doc = {**yaml.safe_load(manifest_text), "notify": [address]}
    assert parse_manifest(yaml.safe_dump(doc).encode(), source="m.yaml").notify == [address]


def test_several_problems_in_one_message(manifest_text: str) -> None:
    message = _bad({"acquisition.voltage_kV": 1, "particle.diameter_A": 1}, manifest_text)
    assert "acquisition.voltage_kV" in message
    assert "particle.diameter_A" in message


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "is empty"),
        (b"   \n", "is empty"),
        (b"\xff\xfe\x00bad", "not UTF-8"),
        (b"dataset: [unclosed", "not valid YAML"),
        (b"- a\n- list\n", "must be a mapping"),
        (b"just a string", "must be a mapping"),
        (b"x" * (MAX_MANIFEST_BYTES + 1), "at most 1 MB"),
    ],
)
def test_unreadable_manifests(data: bytes, expected: str) -> None:
    with pytest.raises(ManifestError, match=expected):
        parse_manifest(data, source="m.yaml")


def test_invalid_json_named() -> None:
    with pytest.raises(ManifestError, match="not valid JSON"):
        parse_manifest(b"{ not json", source="datasets/x/cryopilot.json")


def test_gain_reference_only_for_movies() -> None:
    doc = yaml.safe_load((EVENTS / "manifests" / "spike.yaml").read_text())
    doc["acquisition"]["gain_reference"] = "gain.mrc"
    with pytest.raises(ManifestError, match="gain_reference applies to raw movies only"):
        parse_manifest(yaml.safe_dump(doc).encode())


@pytest.mark.parametrize(
    ("key", "ok"),
    [
        ("datasets/CGRP/cryopilot.yaml", True),
        ("datasets/CGRP/cryopilot.yml", True),
        ("datasets/CGRP/cryopilot.json", True),
        ("datasets/CGRP/movies/a.tif", False),
        ("datasets/a/b/cryopilot.yaml", False),
        ("cryopilot.yaml", False),
        ("datasets//cryopilot.yaml", False),
        ("other/CGRP/cryopilot.yaml", False),
    ],
)
def test_manifest_keys(key: str, ok: bool) -> None:
    assert is_manifest_key(key) is ok


def test_manifest_prefix() -> None:
    assert manifest_prefix("datasets/CGRP/cryopilot.yaml") == "datasets/CGRP/"


# --- loose parsing: numbers are numbers, keys are unique, symmetry is a point group -------------

SPIKE = (EVENTS / "manifests" / "spike.yaml").read_bytes()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ((b"cs_mm: 2.7", b"cs_mm: on"), "acquisition.cs_mm: Input should be a valid number (got True)"),
        ((b"cs_mm: 2.7", b"cs_mm: yes"), "acquisition.cs_mm: Input should be a valid number (got True)"),
        ((b"cs_mm: 2.7", b'cs_mm: "2.7"'), "acquisition.cs_mm: Input should be a valid number (got '2.7')"),
        ((b"diameter_A: 280", b"diameter_A: '280'"), "particle.diameter_A: Input should be a valid number"),
        (
            (b"glob: micrographs/*.mrc", b"glob: micrographs/*.mrc\n  expected_files: true"),
            "input.expected_files: Input should be a valid integer (got True)",
        ),
        (
            (b"glob: micrographs/*.mrc", b"glob: micrographs/*.mrc\n  expected_files: 5.0"),
            "input.expected_files: Input should be a valid integer (got 5.0)",
        ),
        (
            (b"symmetry: C3", b"symmetry: C3\nlimits: {max_hours: '1e2'}"),
            "limits.max_hours: Input should be a valid number (got '1e2')",
        ),
    ],
)
def test_numbers_must_be_numbers(change: tuple[bytes, bytes], message: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(SPIKE.replace(*change), source="m.yaml")
    assert message in str(info.value)


def test_integers_are_numbers_where_a_number_is_asked() -> None:
    m = parse_manifest(SPIKE.replace(b"cs_mm: 2.7", b"cs_mm: 3"), source="m.yaml")
    assert m.acquisition.cs_mm == 3.0


def test_duplicate_keys_are_an_error_in_yaml_and_json() -> None:
    with pytest.raises(
        ManifestError, match=re.escape("m.yaml: is not valid YAML: duplicate key 'symmetry' at line 14")
    ):
        parse_manifest(SPIKE + b"symmetry: C1\n", source="m.yaml")
    nested = SPIKE.replace(b"  pixel_size_A: 0.83", b"  pixel_size_A: 0.83\n  pixel_size_A: 1.1")
    with pytest.raises(ManifestError, match="duplicate key 'pixel_size_A' at line 8"):
        parse_manifest(nested, source="m.yaml")
    doc = json.dumps(yaml.safe_load(SPIKE))
    with pytest.raises(ManifestError, match=re.escape("m.json: is not valid JSON: duplicate key 'dataset'")):
        parse_manifest(('{"dataset": "X", ' + doc[1:]).encode(), source="m.json")


@pytest.mark.parametrize("symmetry", ["C1", "C7", "C120", "D2", "D120", "T", "O", "I"])
def test_point_groups_are_accepted(symmetry: str) -> None:
    assert parse_manifest(SPIKE.replace(b"C3", symmetry.encode())).symmetry == symmetry


@pytest.mark.parametrize(
    "symmetry", ["C0", "C121", "C99999999999999999999", "D1", "D121", "c3", "C03", "I2", "T1", "H", "C 3", ""]
)
def test_other_symmetries_are_refused(symmetry: str) -> None:
    with pytest.raises(
        ManifestError, match=re.escape("symmetry: must be a point group: C1 to C120, D2 to D120")
    ):
        parse_manifest(SPIKE.replace(b"symmetry: C3", f"symmetry: '{symmetry}'".encode()))


# --- every value is bounded -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("input.glob", "m/" + "a" * 511, "input.glob: String should have at most 512 characters"),
        ("pipeline.preset", "p" * 65, "pipeline.preset: String should have at most 64 characters"),
        ("notify", ["a" * 250 + "@b.org"], "notify.0: String should have at most 254 characters"),
        (
            "pipeline.overrides",
            {"nurefine": {"refine_symmetry": "C" * 513}},
            "pipeline.overrides.nurefine.refine_symmetry: text may be at most 512 characters (got 513)",
        ),
        (
            "pipeline.overrides",
            {f"s{i}": {} for i in range(33)},
            "pipeline.overrides: Dictionary should have at most 32 items",
        ),
        (
            "pipeline.overrides",
            {"extract": {f"p{i}": 1 for i in range(17)}},
            "pipeline.overrides.extract: Dictionary should have at most 16 items",
        ),
        ("pipeline.overrides", {"x" * 65: {}}, "String should have at most 64 characters"),
        (
            "pipeline.overrides",
            {f"s{i}": {"a": "x" * 512, "b": "y" * 512} for i in range(32)},
            "pipeline.overrides: the overrides take 33,",
        ),
    ],
)
def test_every_value_is_bounded(field: str, value: object, message: str) -> None:
    doc = yaml.safe_load(SPIKE)
    node = doc
    *parents, leaf = field.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    with pytest.raises(ManifestError) as info:
        parse_manifest(yaml.safe_dump(doc).encode(), source="m.yaml")
    assert message in str(info.value)


def test_values_at_their_bounds_are_accepted() -> None:
    doc = yaml.safe_load(SPIKE)
    doc["input"]["glob"] = "m/" + "a" * 510
    # 254 characters: a local part of 64, then 63-, 60- and 60-character labels and "org"
    longest = "a" * 64 + "@" + "b" * 63 + "." + "c" * 60 + "." + "d" * 60 + ".org"
    assert len(longest) == 254
    doc["notify"] = [longest] * 20
    doc["pipeline"] = {"overrides": {"nurefine": {"refine_relax_symmetry": "C" * 512}}}
    m = parse_manifest(yaml.safe_dump(doc).encode(), source="m.yaml")
    assert len(m.input.glob) == 512


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("lab@example.org", True),
        ("lab@EXAMPLE.org", True),
        ("lab@cryo.example.org", True),  # a subdomain of an allowed domain
        ("lab@example.com", True),
        ("lab@notexample.org", False),
        ("lab@example.org.elsewhere.net", False),
        ("lab@elsewhere.net", False),
    ],
)
def test_notify_addresses_in_the_allowed_domains_only(
    address: str, allowed: bool, manifest_text: str
) -> None:
    doc = yaml.safe_load(manifest_text)
    manifest = parse_manifest(yaml.safe_dump({**doc, "notify": [address]}).encode(), source="m.yaml")
    check_notify_domains(manifest, [], source="m.yaml")  # no list: any domain
    if allowed:
        check_notify_domains(manifest, ["example.org", "Example.com"], source="m.yaml")
        return
    with pytest.raises(ManifestError) as err:
        check_notify_domains(manifest, ["example.org", "Example.com"], source="m.yaml")
    assert str(err.value) == (
        f"m.yaml: notify: {address} is not in an allowed domain"
        " (NotifyAllowedDomains: example.org, example.com)"
    )
