"""Print ``template.yaml`` as ``sam deploy`` would send it to CloudFormation: translated by the
pinned ``aws-sam-translator`` (the one aws-sam-cli uses), SAM policy templates expanded.

Runs in the tools venv (``.venv-tools``: the translator pins a pydantic the layer cannot share):

    .venv-tools/bin/python scripts/sam_translate.py template.yaml > build/iam/translated.json

Offline: no AWS call. AWS managed policies named by name (none in this template) would need IAM's
ListPolicies; the loader below refuses them instead of guessing their ARNs.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import boto3
from samcli.yamlhelper import yaml_parse
from samtranslator.model.exceptions import InvalidDocumentException
from samtranslator.parser.parser import Parser
from samtranslator.translator.translator import Translator


class _NoManagedPolicyNames(dict[str, str]):
    """The managed policy map: a policy named by name (not by ARN) is an error here."""

    def __missing__(self, name: str) -> str:
        raise KeyError(f"managed policy {name!r} named by name: give its ARN")


#: The local artefacts ``sam package`` uploads before the transform (it rewrites each to the
#: S3 URI of the upload); the translator accepts only S3 URIs there.
_PACKAGED = {"CodeUri", "ContentUri", "DefinitionUri"}


def _as_packaged(template: dict[str, Any]) -> None:
    for resource in template.get("Resources", {}).values():
        if not str(resource.get("Type", "")).startswith("AWS::Serverless::"):
            continue
        props = resource.get("Properties") or {}
        for key in _PACKAGED & set(props):
            if isinstance(props[key], str) and not props[key].startswith("s3://"):
                props[key] = f"s3://sam-package/{props[key].strip('/')}"


def translate(path: Path) -> dict[str, Any]:
    template = yaml_parse(path.read_text(encoding="utf-8"))
    _as_packaged(template)
    # the region only names the partition of the ARNs SAM writes (Fn::Sub of AWS::Partition stays)
    region = os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    translator = Translator(_NoManagedPolicyNames(), Parser(), boto_session=boto3.Session(region_name=region))
    try:
        out: dict[str, Any] = translator.translate(template, parameter_values={})
    except InvalidDocumentException as exc:
        raise SystemExit("; ".join(str(e) for e in exc.causes)) from exc
    return out


def main(argv: list[str]) -> int:
    path = Path(argv[1] if len(argv) > 1 else "template.yaml")
    json.dump(translate(path), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
