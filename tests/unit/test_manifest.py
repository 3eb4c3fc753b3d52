from __future__ import annotations

import json

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
