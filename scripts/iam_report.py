"""``make iam-report``: per role of the stack, the actions template.yaml grants and the actions the
test suite's runs used (recorded by the local stack's IAM enforcement, cryopilot_sim.iam).

Fails (exit 1) when a granted action no run used has no justification, when a run met a denial
nobody provoked (a permission the template lacks), or when no run recorded anything.

A justification is a comment in the block of the resource that grants the action (the function,
state machine or managed policy in template.yaml), of the form

    # iam-unused: dynamodb:Scan, dynamodb:DeleteItem - why the grant stays

Writes build/iam/report.md as well as printing it.
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from typing import Any

from cryopilot_sim.iam import USED_DIR, granted_actions, translated_template
from cryopilot_sim.template import ROOT, TEMPLATE_PATH

REPORT = ROOT / "build" / "iam" / "report.md"
_ACTION = r"[\w-]+:[\w*]+"
_JUSTIFIED = re.compile(rf"#\s*iam-unused:\s*(?P<actions>{_ACTION}(?:\s*,\s*{_ACTION})*)\s+-\s+\S")


def blocks(text: str) -> dict[str, str]:
    """Each top-level resource's lines in template.yaml, by logical id."""
    out: dict[str, list[str]] = {}
    current: str | None = None
    in_resources = False
    for line in text.splitlines():
        if re.match(r"^\S", line):
            in_resources = line.startswith("Resources:")
            current = None
            continue
        m = re.match(r"^  ([A-Za-z0-9]+):\s*$", line)
        if in_resources and m:
            current = m.group(1)
            out[current] = []
        elif current is not None:
            out[current].append(line)
    return {k: "\n".join(v) for k, v in out.items()}


def justified(block: str) -> set[str]:
    out: set[str] = set()
    for m in _JUSTIFIED.finditer(block):
        out |= {a.strip().lower() for a in m.group("actions").split(",") if a.strip()}
    return out


def main() -> int:
    translated = translated_template()
    resources = translated["Resources"]
    text_blocks = blocks(TEMPLATE_PATH.read_text(encoding="utf-8"))
    used: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    denied: set[str] = set()
    files = sorted(USED_DIR.glob("*.jsonl")) if USED_DIR.exists() else []
    for path in files:
        for line in path.read_text(encoding="utf-8").splitlines():
            record: dict[str, Any] = json.loads(line)
            for role, actions in record.get("used", {}).items():
                for action, count in actions.items():
                    used[role][action.lower()] += count
            denied |= set(record.get("denied", []))
    if not files:
        print(f"no recorded runs in {USED_DIR.relative_to(ROOT)}: run the test suite first", file=sys.stderr)
        return 1

    # which roles grant what, and which template blocks may justify it
    owners = {
        logical: res
        for logical, res in resources.items()
        if res["Type"] in ("AWS::Lambda::Function", "AWS::StepFunctions::StateMachine")
    }
    lines = ["# IAM report: granted and used actions per role", ""]
    problems: list[str] = []
    for owner, res in sorted(owners.items()):
        props = res["Properties"]
        role = (props.get("Role") or props.get("RoleArn"))["Fn::GetAtt"][0]
        rprops = resources[role]["Properties"]
        documents = [p["PolicyDocument"] for p in rprops.get("Policies") or []]
        where = [owner]
        for ref in rprops.get("ManagedPolicyArns") or []:
            if isinstance(ref, dict) and "Ref" in ref:
                documents.append(resources[ref["Ref"]]["Properties"]["PolicyDocument"])
                where.append(ref["Ref"])
        granted = sorted(granted_actions(documents), key=str.lower)
        ok_unused = set().union(*(justified(text_blocks.get(w, "")) for w in where))
        lines += [f"## {owner} ({role})", "", "| action | calls | |", "|---|---:|---|"]
        for action in granted:
            calls = used[role].get(action.lower(), 0)
            note = ""
            if not calls:
                if action.lower() in ok_unused:
                    note = "unused, justified in template.yaml"
                else:
                    note = "**unused, not justified**"
                    problems.append(
                        f"{owner}: {action} granted, used by no run, justified by no `# iam-unused:` comment"
                    )
            lines.append(f"| {action} | {calls} | {note} |")
        extra = sorted(set(used[role]) - {a.lower() for a in granted})
        for action in extra:  # allowed through a wildcard grant
            lines.append(f"| {action} (via a wildcard) | {used[role][action]} | |")
        managed = [a for a in rprops.get("ManagedPolicyArns") or [] if isinstance(a, str)]
        if managed:
            lines += [
                "",
                "AWS managed (granted by AWS, used by the Lambda runtime, not by our code): "
                + ", ".join(managed),
            ]
        lines.append("")
    for d in sorted(denied):
        problems.append(f"denied in a run (a permission template.yaml lacks): {d}")
    if problems:
        lines += ["## Problems", ""] + [f"- {p}" for p in problems] + [""]
    lines.append(f"Runs read: {len(files)} process file(s) under {USED_DIR.relative_to(ROOT)}.")
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
