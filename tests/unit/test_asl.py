"""Static checks of the state machine against the template and the package."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from cryopilot.core import errors
from cryopilot_sim.harness import substitute_definition
from cryopilot_sim.template import load_template, resources_of_type

from tests.conftest import ROOT

ASL_FILES = sorted((ROOT / "statemachines").glob("*.asl.json"))


def _machines() -> list[tuple[str, dict[str, Any]]]:
    tpl = load_template()
    return [(k, v["Properties"]) for k, v in resources_of_type(tpl, "AWS::Serverless::StateMachine").items()]


def _states(asl: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return asl["States"]


@pytest.mark.parametrize(("logical", "props"), _machines())
def test_placeholders_and_substitutions_match(logical: str, props: dict[str, Any]) -> None:
    text = (ROOT / props["DefinitionUri"]).read_text()
    used = set(re.findall(r"\$\{([A-Za-z0-9_]+)\}", text))
    given = set(props["DefinitionSubstitutions"])
    assert used == given, f"{logical}: unused {given - used}, missing {used - given}"


def test_substitution_rejects_unknown_placeholder() -> None:
    with pytest.raises(KeyError, match="Missing"):
        substitute_definition('{"a": "${Missing}"}', {"Other": "x"})


def test_every_asl_file_is_deployed() -> None:
    deployed = {(ROOT / p["DefinitionUri"]).resolve() for _, p in _machines()}
    assert {f.resolve() for f in ASL_FILES} == deployed


@pytest.mark.parametrize("path", ASL_FILES, ids=lambda p: p.name)
def test_error_names_exist(path) -> None:
    asl = json.loads(path.read_text())
    named = set()
    for st in _states(asl).values():
        for block in st.get("Retry", []) + st.get("Catch", []):
            named |= set(block["ErrorEquals"])
    ours = {n for n in named if not n.startswith(("States.", "Lambda."))}
    missing = [n for n in ours if not isinstance(getattr(errors, n, None), type)]
    assert not missing, f"ASL names errors the package does not define: {missing}"


@pytest.mark.parametrize("path", ASL_FILES, ids=lambda p: p.name)
def test_retries_are_only_for_transient_errors(path) -> None:
    asl = json.loads(path.read_text())
    for name, st in _states(asl).items():
        for block in st.get("Retry", []):
            for err in block["ErrorEquals"]:
                if err.startswith("Lambda.") or (
                    err == "States.ALL" and st.get("Resource", "").endswith("sns:publish")
                ):
                    continue
                if name in (
                    "RecordFailure",
                    "ComposeFailureMail",
                    "ComposeSuccessMail",
                    "FailureDeleteCluster",
                ):
                    continue  # failure-path bookkeeping: retried whatever went wrong
                cls = getattr(errors, err, None)
                assert isinstance(cls, type), f"{name} retries unknown error {err}"
                assert issubclass(cls, errors.TransientError), f"{name} retries {err}, which is not transient"


@pytest.mark.parametrize("path", ASL_FILES, ids=lambda p: p.name)
def test_every_task_on_the_main_path_is_caught(path) -> None:
    asl = json.loads(path.read_text())
    for name, st in _states(asl).items():
        if st["Type"] == "Task":
            assert st.get("Catch"), f"task {name} has no Catch"
            assert st.get("TimeoutSeconds"), f"task {name} has no TimeoutSeconds"


@pytest.mark.parametrize("path", ASL_FILES, ids=lambda p: p.name)
def test_waits_read_their_time_from_the_input(path) -> None:
    asl = json.loads(path.read_text())
    waits = {n: s for n, s in _states(asl).items() if s["Type"] == "Wait"}
    assert waits
    for name, st in waits.items():
        assert "SecondsPath" in st, f"wait {name} has a fixed time"


@pytest.mark.parametrize("path", ASL_FILES, ids=lambda p: p.name)
def test_every_poll_loop_is_bounded(path) -> None:
    """Each loop back to a Wait passes a Task that gets a counter it returns to the loop, and its
    bound: a poll counter and ``max_polls`` (cluster creation and deletion), or the stage step
    itself (``$.stage``: its polls and waited seconds), which the poll handler holds to the stage's
    time limit."""
    asl = json.loads(path.read_text())
    states = _states(asl)
    loops = 0
    for name, st in states.items():
        if st["Type"] != "Wait":
            continue
        loops += 1
        checker = states[st["Next"]]
        assert checker["Type"] == "Task", f"the loop through {name} checks nothing"
        payload = checker["Parameters"]["Payload"]
        result_path = checker["ResultPath"]
        if "max_polls.$" in payload:
            assert payload.get("polls.$") == f"{result_path}.polls", (
                f"the loop through {name} does not count its polls where the check puts them"
            )
            assert payload["max_polls.$"].startswith("$."), f"the loop through {name} has no bound"
        else:
            assert payload.get("stage.$") == result_path == "$.stage", f"the loop through {name} has no bound"
            carried = checker["ResultSelector"]
            assert {"polls.$", "waited_seconds.$"} <= set(carried), (
                f"the loop through {name} drops its counters"
            )
    assert loops


def test_started_mail_subject_fits_sns_for_the_longest_dataset_name() -> None:
    """SNS refuses a subject of 100 characters or more; dataset names may have 48."""
    import re

    from cryopilot.domain.manifest import DATASET_RE

    states = json.loads((ROOT / "statemachines" / "run.asl.json").read_text())["States"]
    fmt = states["NotifyStarted"]["Parameters"]["Subject.$"]
    template = re.match(r"States\.Format\('(.*)',", fmt)
    assert template is not None
    longest = "D" * 48
    assert re.fullmatch(DATASET_RE, longest)
    assert not re.fullmatch(DATASET_RE, "D" * 49)
    subject = template.group(1).replace("{}", longest, 1).replace("{}", "99", 1)
    assert len(subject) < 100, subject
    # the subject carries the run's label: the dataset and its compound, clipped
    from cryopilot.steps.validate import MAX_LABEL_CHARS

    assert "$.run.label" in fmt
    assert len(template.group(1).replace("{}", "L" * MAX_LABEL_CHARS, 1).replace("{}", "99", 1)) < 100


def test_a_started_mail_that_cannot_be_sent_does_not_stop_the_run() -> None:
    states = json.loads((ROOT / "statemachines" / "run.asl.json").read_text())["States"]
    (catch,) = states["NotifyStarted"]["Catch"]
    assert catch["Next"] == "CreateCluster"
    assert catch["ResultPath"] == "$.notify_error"


#: Seconds a Task state must outlast its function: the function's own timeout ends first, so
#: Step Functions sees the function's error (a retried one, such as ``AgentTimeoutError``), never
#: a ``States.Timeout`` that only the catch-all handles.
TASK_MARGIN_SECONDS = 30


def _function_timeouts() -> dict[str, int]:
    tpl = load_template()
    default = tpl["Globals"]["Function"]["Timeout"]
    return {
        logical: int(res["Properties"].get("Timeout", default))
        for logical, res in resources_of_type(tpl, "AWS::Serverless::Function").items()
    }


def _lambda_tasks(asl: dict[str, Any]) -> dict[str, tuple[str, int]]:
    """{state: (function logical id, TimeoutSeconds)} of every Task that invokes a function."""
    out = {}
    for name, st in _states(asl).items():
        if st["Type"] == "Task" and st["Resource"].endswith(":states:::lambda:invoke"):
            placeholder = st["Parameters"]["FunctionName"]
            match = re.fullmatch(r"\$\{(\w+Function)Arn\}", placeholder)
            assert match, f"{name}: FunctionName {placeholder} is not a function of the stack"
            out[name] = (match.group(1), st["TimeoutSeconds"])
    return out


@pytest.mark.parametrize("path", ASL_FILES, ids=lambda p: p.name)
def test_every_task_outlasts_its_function(path) -> None:
    timeouts = _function_timeouts()
    tasks = _lambda_tasks(json.loads(path.read_text()))
    assert tasks
    for name, (function, state_timeout) in tasks.items():
        assert state_timeout >= timeouts[function] + TASK_MARGIN_SECONDS, (
            f"{name} times out at {state_timeout} s, {function} only at {timeouts[function]} s"
        )


def test_agent_calls_end_before_their_function_does() -> None:
    """A stage poll's agent calls (status, then a requeue or a kill), and the export's one call,
    each bounded by its agent timeout, end before the function's timeout, with a margin for the
    table and the ParallelCluster API."""
    from cryopilot.adapters.settings import Settings
    from cryopilot.steps import export, stage

    timeouts = _function_timeouts()
    field = Settings.model_fields["agent_timeout_seconds"]
    largest = next(m.le for m in field.metadata if getattr(m, "le", None) is not None)
    assert field.default <= largest
    stage_calls = stage.AGENT_CALLS_PER_INVOCATION * largest
    assert stage_calls + TASK_MARGIN_SECONDS <= timeouts["StageFunction"], stage_calls
    assert timeouts["ExportFunction"] >= export.EXPORT_AGENT_TIMEOUT_SECONDS + TASK_MARGIN_SECONDS


#: History events one stage poll adds (Wait, Task and Choice states entered and exited, the task
#: scheduled, started and succeeded), rounded up.
EVENTS_PER_POLL = 10
#: Step Functions' quota: an execution with more history events fails, and no Catch applies.
HISTORY_EVENTS_LIMIT = 25_000


def test_a_run_whose_every_stage_overruns_stays_under_the_history_limit() -> None:
    """Worst case: every stage of the longest built-in plan (its default rounds) stalls, polled
    once a minute until the poll floor slows it, until the run's hour limit, with the cluster's
    create and delete checks. (A manifest asking for 20 hetero rounds and stalling every one of
    them could still reach the limit; Step Functions then fails the execution and the cleanup
    function, on that event, deletes the cluster and mails.)"""
    from cryopilot.adapters.settings import Settings
    from cryopilot.domain.presets import load_preset, preset_names
    from cryopilot.steps import stage as stages

    def polls_in(seconds: float) -> int:
        polls, t = 0, 0.0
        while t < seconds:
            t += max(60, stages.poll_floor(polls))
            polls += 1
        return polls

    hours = Settings.model_fields["max_run_hours"].default
    longest = max(sum(s.rounds or 1 for s in load_preset(name).stages) for name in preset_names())
    best = max(longest * polls_in(hours * 3600 / longest), polls_in(hours * 3600))
    cluster_polls = 2 * 90  # create and delete checks, each bounded by max_polls
    events = (best + cluster_polls) * EVENTS_PER_POLL
    assert events < HISTORY_EVENTS_LIMIT * 0.8, events
