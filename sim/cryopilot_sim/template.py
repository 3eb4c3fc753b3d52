"""Read ``template.yaml`` as CloudFormation would: tags, parameters, and the intrinsic functions
the template uses (Ref, GetAtt, Sub, Join, Select, Split, If, Equals, Not).

The offline harness builds every resource from here, so names and wiring are never hand-copied.
Only the intrinsics this project's template uses are supported; an unknown one is an error, not a
silent pass-through.
"""

from __future__ import annotations

import copy
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_PATH = ROOT / "template.yaml"

_SHORT_TAGS = {
    "!Ref": "Ref",
    "!GetAtt": "Fn::GetAtt",
    "!Sub": "Fn::Sub",
    "!Join": "Fn::Join",
    "!Select": "Fn::Select",
    "!Split": "Fn::Split",
    "!If": "Fn::If",
    "!Equals": "Fn::Equals",
    "!Not": "Fn::Not",
    "!And": "Fn::And",
    "!Or": "Fn::Or",
    "!GetAZs": "Fn::GetAZs",
    "!Condition": "Condition",
}


class _CfnLoader(yaml.SafeLoader):
    pass


def _construct(tag: str) -> Any:
    name = _SHORT_TAGS[tag]

    def build(loader: yaml.Loader, node: yaml.Node) -> dict[str, Any]:
        if isinstance(node, yaml.ScalarNode):
            value: Any = loader.construct_scalar(node)
            if name == "Fn::GetAtt":
                value = value.split(".", 1)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)
        return {name: value}

    return build


for _tag in _SHORT_TAGS:
    _CfnLoader.add_constructor(_tag, _construct(_tag))


def load_template(path: Path = TEMPLATE_PATH) -> dict[str, Any]:
    """The template as a dict of its own (the caller may change it). Parsed once per version of
    the file: a test session starts a local stack per test, and the parse takes ~0.1 s."""
    stat = path.stat()
    return copy.deepcopy(_parsed_template(path.resolve(), stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=8)
def _parsed_template(path: Path, mtime_ns: int, size: int) -> dict[str, Any]:
    with path.open(encoding="utf-8") as fh:
        doc = yaml.load(fh, Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass with CFN tags only
    if not isinstance(doc, dict) or "Resources" not in doc:
        raise ValueError(f"{path} is not a CloudFormation template")
    return doc


class UnsupportedIntrinsic(ValueError):
    pass


@dataclass
class Resolver:
    """Evaluates intrinsics against parameters, pseudo parameters and physical resources."""

    template: dict[str, Any]
    parameters: dict[str, Any]
    region: str = "us-east-1"
    account_id: str = "123456789012"
    stack_name: str = "cryopilot-local"
    #: logical id -> value of Ref
    refs: dict[str, Any] = field(default_factory=dict)
    #: (logical id, attribute) -> value of GetAtt
    attrs: dict[tuple[str, str], Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        declared = self.template.get("Parameters", {})
        values: dict[str, Any] = {}
        for name, spec in declared.items():
            value = self.parameters.get(name, spec.get("Default"))
            if value is None:
                raise ValueError(f"template parameter {name} has no value and no default")
            if spec.get("Type") == "CommaDelimitedList" and isinstance(value, str):
                value = [v.strip() for v in value.split(",")] if value else [""]
            values[name] = value
        unknown = set(self.parameters) - set(declared)
        if unknown:
            raise ValueError(f"unknown template parameters: {', '.join(sorted(unknown))}")
        self.parameter_values = values

    @property
    def pseudo(self) -> dict[str, str]:
        return {
            "AWS::Region": self.region,
            "AWS::AccountId": self.account_id,
            "AWS::StackName": self.stack_name,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::NoValue": "",
        }

    def condition(self, name: str) -> bool:
        return bool(self.resolve(self.template.get("Conditions", {})[name]))

    def resolve(self, node: Any) -> Any:
        if isinstance(node, list):
            return [self.resolve(v) for v in node]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((key, arg),) = node.items()
            if key == "Ref":
                return self._ref(arg)
            if key == "Fn::GetAtt":
                logical, attr = arg if isinstance(arg, list) else arg.split(".", 1)
                return self._getatt(logical, attr)
            if key == "Fn::Sub":
                return self._sub(arg)
            if key == "Fn::Join":
                sep, items = arg
                return sep.join(str(v) for v in self.resolve(items))
            if key == "Fn::Select":
                index, items = arg
                return self.resolve(items)[int(self.resolve(index))]
            if key == "Fn::Split":
                sep, text = arg
                return str(self.resolve(text)).split(sep)
            if key == "Fn::If":
                cond, yes, no = arg
                return self.resolve(yes if self.condition(cond) else no)
            if key == "Fn::Equals":
                a, b = arg
                return self.resolve(a) == self.resolve(b)
            if key == "Fn::Not":
                return not self.resolve(arg[0])
            if key == "Condition":
                return self.condition(arg)
            if key.startswith("Fn::"):
                raise UnsupportedIntrinsic(f"{key} is not supported by the local resolver")
        return {k: self.resolve(v) for k, v in node.items()}

    def _ref(self, name: str) -> Any:
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.parameter_values:
            return self.parameter_values[name]
        if name in self.refs:
            return self.refs[name]
        raise KeyError(f"Ref {name}: no such parameter, or resource not created yet")

    def _getatt(self, logical: str, attr: str) -> Any:
        try:
            return self.attrs[(logical, attr)]
        except KeyError:
            raise KeyError(f"GetAtt {logical}.{attr}: not known (resource not created yet?)") from None

    def _sub(self, arg: Any) -> str:
        if isinstance(arg, list):
            text, local = arg
            local_values = {k: self.resolve(v) for k, v in local.items()}
        else:
            text, local_values = arg, {}

        def repl(match: re.Match[str]) -> str:
            expr = match.group(1)
            if expr.startswith("!"):
                return "${" + expr[1:] + "}"
            if expr in local_values:
                return str(local_values[expr])
            if "." in expr and expr.split(".", 1)[0] in self.template["Resources"]:
                logical, attr = expr.split(".", 1)
                return str(self._getatt(logical, attr))
            return str(self._ref(expr))

        return re.sub(r"\$\{([^}]+)\}", repl, text)


def resources_of_type(template: dict[str, Any], *types: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v.get("Type") in types}


def function_environment(template: dict[str, Any]) -> dict[str, Any]:
    """The Globals environment shared by every function (functions add none of their own)."""
    return dict(template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {}))
