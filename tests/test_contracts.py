"""Every model is declared either durable (tolerant) or human-facing (strict).

A rolling deploy runs two worker versions side by side: whatever one writes (a workflow
input or result, an activity input or result, an internal signal, a query answer) the
other must decode. So every model that crosses a Temporal boundary is a `DurableModel`
(unknown fields ignored), and only the arguments a person types are `HumanInput`
(unknown fields rejected, named). These tests walk the package so that a model added
later cannot be forgotten: it must pick one of the two bases (or be listed below with
the reason it never crosses a worker boundary).
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import types
import typing
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError
from temporalio import activity, workflow

import temporal_handoff
from temporal_handoff.schemas.base import DurableModel, HumanInput, validate_human
from temporal_handoff.schemas.config import SessionConfig
from temporal_handoff.schemas.events import HandoffDelta, SealRequest
from temporal_handoff.schemas.project import ProjectState
from temporal_handoff.schemas.session import (
    Command,
    CommandKind,
    DecideArgs,
    Health,
    SessionInput,
)
from temporal_handoff.schemas.tokens import TokenLedger
from temporal_handoff.testing.synthetic import synthetic_project
from temporal_handoff.workers.plugin import HandoffPlugin
from temporal_handoff.workflows import _command_input as command_input

NOT_CONTRACTS = {
    # Plugin options: built in Python by whoever runs a worker, never serialized.
    "temporal_handoff.workers.plugin.UserTool",
    "temporal_handoff.workers.plugin.HandoffOptions",
    # Rows of local reports, built from decoded histories, never sent to Temporal.
    "temporal_handoff.chain.RunSummary",
    "temporal_handoff.plotting.TurnUsage",
    "temporal_handoff.plotting.RunUsage",
}

HUMAN_UPDATES = {"decide", "say", "skip_task", "retry_task"}
"""Updates whose argument a person types (`temporal workflow update execute`)."""


def _all_models() -> list[type[BaseModel]]:
    for info in pkgutil.walk_packages(temporal_handoff.__path__, "temporal_handoff."):
        importlib.import_module(info.name)
    seen: dict[str, type[BaseModel]] = {}
    stack: list[type[BaseModel]] = [BaseModel]
    while stack:
        for sub in stack.pop().__subclasses__():
            stack.append(sub)
            if sub.__module__.startswith("temporal_handoff."):
                seen[f"{sub.__module__}.{sub.__qualname__}"] = sub
    return [seen[k] for k in sorted(seen)]


MODELS = _all_models()


def _name(model: type) -> str:
    return f"{model.__module__}.{model.__qualname__}"


def _nested_models(tp: Any) -> set[type[BaseModel]]:
    """Every model class a type annotation mentions (through lists, dicts, unions...)."""
    out: set[type[BaseModel]] = set()
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        out.add(tp)
        return out
    for arg in typing.get_args(tp):
        out |= _nested_models(arg)
    return out


def _reachable(model: type[BaseModel]) -> set[type[BaseModel]]:
    """`model` and every model nested in its fields, at any depth."""
    out: set[type[BaseModel]] = set()
    todo = [model]
    while todo:
        m = todo.pop()
        if m in out:
            continue
        out.add(m)
        for field in m.model_fields.values():
            todo.extend(_nested_models(field.annotation))
    return out


def test_the_package_has_models_of_both_kinds() -> None:
    names = {_name(m) for m in MODELS}
    assert "temporal_handoff.schemas.session.SessionInput" in names
    assert "temporal_handoff.schemas.session.DecideArgs" in names
    assert len(MODELS) > 40, len(MODELS)


@pytest.mark.parametrize("model", MODELS, ids=_name)
def test_every_model_is_durable_or_human_facing(model: type[BaseModel]) -> None:
    if model in (DurableModel, HumanInput) or _name(model) in NOT_CONTRACTS:
        return
    extra = model.model_config.get("extra")
    if issubclass(model, DurableModel):
        assert extra == "ignore", f"{_name(model)} is durable but extra={extra!r}"
        nested_human = [_name(m) for m in _reachable(model) if issubclass(m, HumanInput)]
        assert not nested_human, f"{_name(model)} carries human-facing {nested_human}"
    elif issubclass(model, HumanInput):
        assert extra == "forbid", f"{_name(model)} is human-facing but extra={extra!r}"
    else:
        pytest.fail(
            f"{_name(model)} derives from neither DurableModel (crosses worker versions: "
            "ignores unknown fields) nor HumanInput (typed by a person: rejects them)"
        )


def _hints(fn: Any) -> dict[str, Any]:
    return typing.get_type_hints(fn)


def _boundary_types() -> list[tuple[str, Any, bool]]:
    """(where, type, typed by a person) for every argument and result that crosses a
    Temporal boundary: workflow run/signal/query/update, activity input/result."""
    out: list[tuple[str, Any, bool]] = []
    plugin = HandoffPlugin()
    for cls in plugin.workflows or []:
        defn = workflow._Definition.must_from_class(cls)
        for key, tp in _hints(defn.run_fn).items():
            out.append((f"{defn.name}.run {key}", tp, False))
        for name, sig in defn.signals.items():
            for key, tp in _hints(sig.fn).items():
                out.append((f"{defn.name} signal {name} {key}", tp, False))
        for name, q in defn.queries.items():
            out.append((f"{defn.name} query {name}", _hints(q.fn).get("return"), False))
        for name, upd in defn.updates.items():
            for key, tp in _hints(upd.fn).items():
                human = key != "return" and name in HUMAN_UPDATES
                out.append((f"{defn.name} update {name} {key}", tp, human))
    # The session's command handlers take untyped input and read it with these models
    # (`workflows/_command_input.py`): human input.
    for kind, model in command_input._MODELS.items():
        out.append((f"AgentSessionWorkflow command {kind.value}", model, True))
    # The handoff child reads its `delta` and `seal` signals by hand, too.
    out.append(("HandoffWorkflow signal delta", HandoffDelta, False))
    out.append(("HandoffWorkflow signal seal", SealRequest, False))
    for fn in plugin.activities or []:
        adef = activity._Definition.must_from_callable(fn)
        target = inspect.unwrap(fn)
        for key, tp in _hints(target).items():
            out.append((f"activity {adef.name} {key}", tp, False))
    return out


def test_every_temporal_boundary_type_is_of_the_right_kind() -> None:
    boundary = _boundary_types()
    wrong = []
    seen_models: set[type[BaseModel]] = set()
    for where, tp, human in boundary:
        for model in _nested_models(tp):
            seen_models.add(model)
            want = HumanInput if human else DurableModel
            if not issubclass(model, want):
                wrong.append(f"{where}: {_name(model)} is not a {want.__name__}")
    assert not wrong, "\n".join(wrong)
    # The walk did see the contracts that matter.
    names = {m.__name__ for m in seen_models}
    assert {"SessionInput", "SessionResult", "HandoffInput", "HandoffPayload", "SealRequest",
            "HandoffDelta", "ModelRequest", "ModelResponse", "DecideArgs"} <= names, names


# ---- fields added later have defaults ------------------------------------------------

REQUIRED_FIELDS: dict[str, set[str]] = {
    "activities.handoff_activity.BuildHandoffInput": {"context", "state"},
    "activities.tokenizer.EstimateTokensRequest": set(),
    "activities.tokenizer.EstimateTokensResult": set(),
    "schemas.cache_ttl.HumanWaits": set(),
    "schemas.config.SessionConfig": set(),
    "schemas.events.HandoffDelta": set(),
    "schemas.events.HandoffInput": {"generation", "session_id", "state"},
    "schemas.events.LifecycleEvent": {"event", "generation", "lifecycle", "session_id"},
    "schemas.events.RecallRequest": {"generation", "session_id"},
    "schemas.events.SealRequest": {"ledger", "reason"},
    "schemas.handoff.AgentInfo": {"generation", "next_generation", "reason", "session_id"},
    "schemas.handoff.AlternativeItem": {"title"},
    "schemas.handoff.BlockerItem": {"id"},
    "schemas.handoff.DecisionItem": {"id"},
    "schemas.handoff.ErrorItem": {"message", "source"},
    "schemas.handoff.FailedTaskItem": {"id"},
    "schemas.handoff.FileItem": {"path"},
    "schemas.handoff.HandoffContext": {"generation", "reason", "session_id"},
    "schemas.handoff.HandoffDelta": set(),
    "schemas.handoff.HandoffDocument": {"agent", "lookup"},
    "schemas.handoff.HandoffPayload": {
        "budget", "level", "prompt", "prompt_tokens", "requested_level",
    },
    "schemas.handoff.QuestionItem": {"id"},
    "schemas.handoff.LookupHints": {"generation", "workflow_id"},
    "schemas.handoff.Progress": set(),
    "schemas.handoff.RunRef": {"generation", "run_id", "workflow_id"},
    "schemas.handoff.TaskItem": {"id"},
    "schemas.handoff.TokenSummary": set(),
    "schemas.model_io.BilledAnswers": set(),
    "schemas.model_io.ModelInfoRequest": {"model"},
    "schemas.model_io.ModelInfoResult": {"context_window", "model", "source"},
    "schemas.model_io.ModelRequest": {"messages", "model"},
    "schemas.model_io.ModelResponse": set(),
    "schemas.model_io.ToolPolicy": set(),
    "schemas.model_io.ToolSpec": {"name"},
    "schemas.project.Alternative": {"title"},
    "schemas.project.Blocker": {"id"},
    "schemas.project.Decision": {"id"},
    "schemas.project.ErrorRecord": {"message", "source"},
    "schemas.project.FileNote": {"path"},
    "schemas.project.HandoffRecord": set(),
    "schemas.project.Milestone": set(),
    "schemas.project.Phase": {"id"},
    "schemas.project.Question": {"id"},
    "schemas.project.ProjectState": set(),
    "schemas.estimator.ModelFit": set(),
    "schemas.estimator.NewContent": set(),
    "schemas.estimator.TokenFit": set(),
    "schemas.project.SeedHealth": set(),
    "schemas.project.SeedInfo": set(),
    "schemas.project.Task": {"id"},
    "schemas.session.Command": {"kind"},
    "schemas.session.Health": set(),
    "schemas.session.SessionInput": set(),
    "schemas.session.SessionResult": {"generation", "ledger", "project", "reason", "session_id"},
    "schemas.session.SessionStatus": {
        "context_pct", "context_tokens", "context_window", "cost_usd", "generation",
        "lifecycle", "session_id", "tasks_done", "tasks_total", "total_tokens", "turn",
    },
    "schemas.state_events.AddBlockerArgs": {"description"},
    "schemas.state_events.AddNoteArgs": {"text"},
    "schemas.state_events.AddTodoArgs": {"text"},
    "schemas.state_events.AnswerQuestionArgs": {"question_id"},
    "schemas.state_events.AskQuestionArgs": {"text"},
    "schemas.state_events.CompleteTaskArgs": {"task_id"},
    "schemas.state_events.FailTaskArgs": {"task_id"},
    "schemas.state_events.HumanMessageArgs": {"text"},
    "schemas.state_events.NoteFileArgs": {"path"},
    "schemas.state_events.RecordDecisionArgs": {"title"},
    "schemas.state_events.RecordErrorArgs": {"message"},
    "schemas.state_events.RejectAlternativeArgs": {"title"},
    "schemas.state_events.ResolveBlockerArgs": {"blocker_id"},
    "schemas.state_events.SetEnvironmentArgs": {"key"},
    "schemas.state_events.SetPhaseArgs": {"phase_id"},
    "schemas.state_events.StateEvent": {"op"},
    "schemas.state_events.TaskIdArgs": {"task_id"},
    "schemas.state_events._Args": set(),
    "schemas.tokens.FieldStats": set(),
    "schemas.tokens.ModelPrice": {"cache_read", "cache_write", "input", "output"},
    "schemas.tokens.TokenLedger": set(),
    "schemas.tokens.TokenUsage": set(),
    "schemas.transcript.TranscriptEntry": {"role"},
    "schemas.transcript.TranscriptPage": set(),
}
"""Required fields of every durable model (the same as when the v0 histories were
recorded, or fewer). An input written by an older worker lacks every field added since,
so a field added to a durable model must have a default: this list may shrink, never
grow. A new durable model is added here with its required fields."""


@pytest.mark.parametrize(
    "model", [m for m in MODELS if issubclass(m, DurableModel) and m is not DurableModel],
    ids=_name,
)
def test_a_durable_model_gains_no_required_field(model: type[BaseModel]) -> None:
    key = _name(model).removeprefix("temporal_handoff.")
    assert key in REQUIRED_FIELDS, f"new durable model {key}: list it in REQUIRED_FIELDS"
    required = {k for k, f in model.model_fields.items() if f.is_required()}
    added = required - REQUIRED_FIELDS[key]
    assert not added, (
        f"{key}: {sorted(added)} required; give them defaults (older inputs lack them)"
    )


# ---- what each kind does -----------------------------------------------------------


def test_durable_models_ignore_unknown_fields_at_every_depth() -> None:
    inp = SessionInput(project=synthetic_project(3, 1))
    data = json.loads(inp.model_dump_json())
    data["from_the_future"] = 1
    data["config"]["new_knob"] = True
    data["project"]["new_section"] = []
    data["project"]["tasks"]["P1-T001"]["color"] = "blue"
    data["inbox"] = [{"kind": "say", "args": {"text": "hi"}, "priority": 9}]
    back = SessionInput.model_validate_json(json.dumps(data))
    assert back.project == inp.project and back.config == inp.config
    assert back.inbox[0].kind == CommandKind.SAY
    seal = SealRequest.model_validate(
        {"reason": "CONTEXT_HANDOFF", "ledger": TokenLedger().model_dump(), "urgent": True}
    )
    assert seal.ledger == TokenLedger()


def test_human_input_rejects_unknown_fields_naming_them() -> None:
    with pytest.raises(ValidationError, match="mood"):
        DecideArgs.model_validate({"blocker_id": "B1", "decision": "yes", "mood": "ok"})
    # A durable model written by hand is read strictly, the field named with its path.
    data = json.loads(synthetic_project(3, 1).model_dump_json())
    data["tasks"]["P1-T001"]["color"] = "blue"
    with pytest.raises(ValidationError) as info:
        validate_human(ProjectState, data)
    assert [e["loc"] for e in info.value.errors()] == [("tasks", "P1-T001", "color")]
    with pytest.raises(ValidationError) as info:
        validate_human(SessionConfig, '{"user_tools": [{"name": "t", "colour": 1}]}')
    assert ("user_tools", 0, "colour") in [e["loc"] for e in info.value.errors()]


def test_a_queued_command_from_a_newer_worker_still_applies() -> None:
    """A command queued during a handoff by a newer worker (its arguments carry a field
    this version does not know) is applied by this version's successor, not dropped."""
    from temporal_handoff.workflows import _commands
    from temporal_handoff.workflows._book import SessionBook

    book = SessionBook(state=synthetic_project(3, 1), generation=1, health=Health())
    cmd = Command.model_validate(
        {"kind": "skip_task", "args": {"task_id": "P1-T001", "by": "ann", "urgency": "high"}}
    )
    reply = _commands.apply(book, cmd)
    assert not reply.startswith("not applied"), reply
    assert book.state.tasks["P1-T001"].status.value == "skipped"


def test_walker_sees_through_unions_and_containers() -> None:
    assert _nested_models(dict[str, list[SessionInput | None]]) == {SessionInput}
    assert _nested_models(types.NoneType) == set()
