"""`PayloadAgent`: a scripted model that continues from the handoff alone.

Like a model, it reads only the HTTP request: the system prompt (the plan of
`fidelity_plan`, then the continuation prompt in generations ≥ 1), the messages (its
own tool calls, their results, human text, `recall` results). It keeps no memory
between requests (`actions` is a log for scoring, never read back). Run the session
with ``progress_hints=False``: then nothing but the handoff tells a successor what is
done, decided, failed or half-finished, and every gap in the payload shows up as a
repeated task, a skipped task, a forgotten decision or a failed approach tried again.

What it infers, and from where:

* **Done tasks.** The last ``Next eligible tasks:`` line (the continuation prompt's, or
  generation 0's opening) is the frontier: every task downstream of it is still to do,
  every other task is done. Plus the tasks its own `complete_task` calls completed.
* **Decisions.** ``use <option> for `T``` (its `record_decision`), ``… `B-T`…: use
  <option>`` (a human decision, live or in the handoff), rejected options
  (``<option> — rejected by D-T``).
* **Failures.** ```T`: approach '<a>' failed`` in `fail_task` errors, failed-task lines
  and ``recall`` results; a retry takes the next approach no error names.
* **Work in progress.** ``finish `T`: step 2`` (its todo) or ``scaffold of `T``` (its
  file note): step 1 is done, do step 2 only. A handoff that says ``In progress:`` is
  trusted to list all of it; one that does not, while it leaves todos or files to
  `recall`, makes the agent look before it starts a two-step task over.

Its predecessor's ``<agent_note>`` is skipped (a note is not state; the fidelity score
must measure what the state carried), and it answers the session's note request with a
note that names no task.

When something it needs is not in the prompt but the handoff points at `recall`, it
calls `recall` (once per section and generation), as a model should. With
``blank_handoff=True`` it ignores the continuation prompt (the control: a session whose
handoff carried nothing must fail visibly).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass
from typing import Any

from temporal_handoff.agent_note import is_note_request, without_notes
from temporal_handoff.schemas.model_io import block_text, message_text, prompt_text
from temporal_handoff.testing.brain import (
    AWAITING_DECISION,
    NEXT_ELIGIBLE_RE,
    BrainReply,
    filler,
)
from temporal_handoff.testing.fidelity_plan import (
    APPROACHES,
    PLAN_HEADER,
    agent_choice,
    bad_approaches,
)

__all__ = ["HANDOFF_HEADER", "PayloadAgent"]

HANDOFF_HEADER = "# Handoff from your previous generation"
"""Where the session's system prompt starts the continuation prompt."""

_PLAN_LINE = re.compile(r"^- (\S+)(?: < ([^|]+?))?(?: \| (\w+)(?: (.*))?)?$")
_BACKTICKED = re.compile(r"`([^`\n]+)`")
_HANDOFF_GEN = re.compile(r"This handoff is generation (\d+)")


@dataclass(frozen=True)
class _Task:
    id: str
    deps: tuple[str, ...]
    kind: str
    args: tuple[str, ...]


def _plan(system: str) -> dict[str, _Task]:
    """The plan section of the system prompt (see `PlanTask.line`)."""
    tasks: dict[str, _Task] = {}
    if PLAN_HEADER not in system:
        return tasks
    body = system.split(PLAN_HEADER, 1)[1].split(HANDOFF_HEADER, 1)[0]
    for line in body.splitlines():
        m = _PLAN_LINE.match(line.strip())
        if m:
            deps = tuple((m.group(2) or "").split())
            kind = m.group(3) or "plain"
            args = tuple((m.group(4) or "").split())
            tasks[m.group(1)] = _Task(m.group(1), deps, kind, args)
    return tasks


def _tid(task_id: str) -> str:
    """A regex for a whole task id (not a prefix of a longer one)."""
    return re.escape(task_id) + r"(?![\w-])"


@dataclass
class _View:
    """Everything the agent reads in one request, as text plus its own calls."""

    text: str
    """System (the continuation prompt blanked if asked) and every message, in order."""
    handoff_gen: int | None
    """The generation the continuation prompt comes from (None in generation 0)."""
    uses: list[tuple[str, str, dict[str, Any]]]
    """Own tool calls of this generation: (id, name, input)."""
    results: dict[str, tuple[str, bool]]
    """tool_use id → (result text, is_error)."""
    last_user: str


def _view(request: dict[str, Any], blank: bool) -> _View:
    system = request.get("system")
    sys_text = system if isinstance(system, str) else "\n".join(block_text(b) for b in system or [])
    if blank and HANDOFF_HEADER in sys_text:
        sys_text = sys_text.split(HANDOFF_HEADER, 1)[0] + HANDOFF_HEADER + "\n(nothing)\n"
    sys_text = without_notes(sys_text)
    parts = [sys_text]
    uses: list[tuple[str, str, dict[str, Any]]] = []
    results: dict[str, tuple[str, bool]] = {}
    last_user = ""
    for message in request.get("messages") or []:
        content = message.get("content", "")
        blocks = [content] if isinstance(content, str) else list(content or [])
        texts = []
        for b in blocks:
            if isinstance(b, dict) and b.get("type") == "tool_use":
                raw = b.get("input")
                args: dict[str, Any] = raw if isinstance(raw, dict) else {}
                uses.append((str(b.get("id", "")), str(b.get("name", "")), args))
                texts.append(f"{b.get('name')} {json.dumps(args, ensure_ascii=False)}")
            elif isinstance(b, dict) and b.get("type") == "tool_result":
                text = block_text(b)
                results[str(b.get("tool_use_id", ""))] = (text, bool(b.get("is_error")))
                texts.append(text)
            else:
                texts.append(block_text(b))
        parts.extend(texts)
        if message.get("role") == "user":
            last_user = "\n".join(texts)
    m = _HANDOFF_GEN.search(sys_text)
    return _View(
        text="\n".join(parts),
        handoff_gen=int(m.group(1)) if m else None,
        uses=uses,
        results=results,
        last_user=last_user,
    )


class PayloadAgent:
    """A deterministic agent whose right next step depends on the handoff payload.

    Plug it into `FakeAnthropicServer(brain=PayloadAgent())` and start a session whose
    system prompt is `fidelity_plan(...).system_prompt()`, with ``progress_hints=False``.

    Attributes:
        actions: Every state tool call it made, in order, once per tool-use id (a
            retried request repeats ids): what `score_fidelity` grades. Never read by
            the agent itself.
        progress_hints_seen: Requests in which a tool result or a later user message
            (not the opening one) carried a ``Next eligible tasks:`` line: the
            workflow's progress hints. 0 when the session runs with them off.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        tasks_per_turn: int = 2,
        summary_words: int = 30,
        blank_handoff: bool = False,
    ) -> None:
        """Configure the agent.

        Args:
            seed: Seeds its own choices (which option a ``decide`` task takes) and filler.
            tasks_per_turn: Task steps per reply (each task at most once per reply).
            summary_words: Filler words per summary: how fast the context grows.
            blank_handoff: Read the continuation prompt as "(nothing)" (the control).
        """
        if tasks_per_turn < 1 or summary_words < 0:
            raise ValueError("tasks_per_turn must be >= 1 and summary_words >= 0")
        self.seed = seed
        self.tasks_per_turn = tasks_per_turn
        self.summary_words = summary_words
        self.blank_handoff = blank_handoff
        self.actions: list[tuple[str, dict[str, Any]]] = []
        self.progress_hints_seen = 0
        self._logged: set[str] = set()
        self._lock = threading.Lock()

    # ---- reading ---------------------------------------------------------------
    @staticmethod
    def _done(plan: dict[str, _Task], v: _View) -> set[str]:
        frontier: list[str] | None = None
        for match in NEXT_ELIGIBLE_RE.finditer(v.text):
            frontier = _BACKTICKED.findall(match.group(1))
        children: dict[str, list[str]] = {}
        for t in plan.values():
            for d in t.deps:
                children.setdefault(d, []).append(t.id)
        if frontier is None:
            undone = set(plan)  # nothing says anything is done
        else:
            undone, stack = set(), [t for t in frontier if t in plan]
            while stack:
                tid = stack.pop()
                if tid not in undone:
                    undone.add(tid)
                    stack.extend(children.get(tid, []))
        done = set(plan) - undone
        for uid, name, args in v.uses:
            text, error = v.results.get(uid, ("", True))
            if name == "complete_task" and not error:
                done.add(str(args.get("task_id")))
        return done

    @staticmethod
    def _human(v: _View, tid: str) -> str | None:
        # One line (the handoff, a recall result) or the live block after the blocker id.
        found = re.findall(rf"B-{_tid(tid)}[^\n}}]{{0,300}}?\buse ([a-z][\w-]*)", v.text)
        found += re.findall(
            rf"`B-{_tid(tid)}`:\s*<human_decision[^>\n]*>\s*use ([a-z][\w-]*)", v.text
        )
        return str(found[-1]) if found else None

    @staticmethod
    def _decision(v: _View, t: _Task) -> str | None:
        m = re.search(rf"use ([\w-]+) for `{_tid(t.id)}`", v.text)
        if m:
            return m.group(1)
        rejected = set(re.findall(rf"([\w-]+) — rejected by D-{_tid(t.id)}", v.text))
        left = [o for o in t.args if o not in rejected]
        return left[0] if rejected and len(left) == 1 else None

    @staticmethod
    def _failed_approaches(v: _View, tid: str) -> list[str]:
        return list(
            dict.fromkeys(re.findall(rf"`{_tid(tid)}`: approach '([\w-]+)' failed", v.text))
        )

    @staticmethod
    def _attempts(v: _View, tid: str) -> int:
        found = re.findall(rf"`{_tid(tid)}` \(attempts (\d+)\)", v.text)
        return int(found[-1]) if found else 0

    @staticmethod
    def _step1_done(v: _View, tid: str) -> bool:
        return (
            re.search(rf"finish `{_tid(tid)}`: step 2", v.text) is not None
            or re.search(rf"scaffold of `{_tid(tid)}`", v.text) is not None
        )

    def _recall(self, v: _View, section: str, ids: list[str]) -> dict[str, Any] | None:
        """The recall input for `ids` of `section` (narrow: a whole section could
        flood a small context), if the handoff offers recall and this generation has
        not asked for them yet."""
        if v.handoff_gen is None:
            return None
        asked = {"generation": v.handoff_gen, "section": section, "ids": ids}
        if any(n == "recall" and a == asked for _, n, a in v.uses):
            return None
        return asked

    # ---- acting ----------------------------------------------------------------
    def _fill(self, key: str) -> str:
        return filler(f"{self.seed}:{key}", self.summary_words)

    def _step(self, plan: dict[str, _Task], t: _Task, v: _View) -> list[tuple[str, dict[str, Any]]]:
        """The tool calls for one step of `t`; ``[("recall", …)]`` when it must look
        something up first; ``[]`` when it must wait."""
        tid = t.id
        if t.kind == "decide":
            choice = agent_choice(self.seed, tid)
            return [
                (
                    "record_decision",
                    {
                        "decision_id": f"D-{tid}",
                        "title": f"use {choice} for `{tid}`",
                        "rationale": self._fill(f"why:{tid}")[:200],
                        "rejected": [o for o in t.args if o != choice],
                    },
                ),
                (
                    "complete_task",
                    {"task_id": tid, "summary": f"{tid} chose {choice}. " + self._fill(tid)},
                ),
            ]
        if t.kind == "use" and t.args:
            source = plan.get(t.args[0])
            if source is None:
                return [
                    (
                        "complete_task",
                        {"task_id": tid, "summary": f"{tid} done. " + self._fill(tid)},
                    )
                ]
            opt = self._human(v, source.id) if source.kind == "ask" else self._decision(v, source)
            if opt is None:
                wanted = f"HD-B-{source.id}" if source.kind == "ask" else f"D-{source.id}"
                recall = self._recall(v, "decisions", [wanted])
                if recall is not None:
                    return [("recall", recall)]
                summary = f"{tid} uses ?. The decision of `{source.id}` is not in my context."
            else:
                summary = f"{tid} uses {opt}. " + self._fill(tid)
            return [("complete_task", {"task_id": tid, "summary": summary})]
        if t.kind == "ask":
            raised = re.search(rf"B-{_tid(tid)}", v.text) is not None
            if not raised:
                return [
                    (
                        "add_blocker",
                        {
                            "blocker_id": f"B-{tid}",
                            "blocker_type": "human_decision",
                            "description": f"storage engine for `{tid}`: "
                            + " or ".join(t.args)
                            + "?",
                            "task_id": tid,
                        },
                    )
                ]
            opt = self._human(v, tid)
            if opt is None:
                recall = self._recall(v, "decisions", [f"HD-B-{tid}"])
                return [("recall", recall)] if recall is not None else []
            path = f"db/{tid}.sql" if opt == "postgres" else f"db/{tid}.sqlite"
            return [
                ("note_file", {"path": path, "note": f"{opt} schema of `{tid}`"}),
                (
                    "complete_task",
                    {"task_id": tid, "summary": f"{tid} uses {opt}. " + self._fill(tid)},
                ),
            ]
        if t.kind == "flaky":
            tried = self._failed_approaches(v, tid)
            if self._attempts(v, tid) > len(tried):
                recall = self._recall(v, "errors", [tid])
                if recall is not None:
                    return [("recall", recall)]
            options = [a for a in (t.args or APPROACHES) if a not in tried]
            approach = options[0] if options else (t.args or APPROACHES)[-1]
            if approach in (t.args or APPROACHES)[: bad_approaches(self.seed, tid)]:
                return [
                    (
                        "fail_task",
                        {
                            "task_id": tid,
                            "error": f"`{tid}`: approach '{approach}' failed: "
                            + self._fill(f"err:{tid}:{approach}")[:120],
                        },
                    )
                ]
            return [
                (
                    "complete_task",
                    {
                        "task_id": tid,
                        "summary": f"{tid} done with approach '{approach}'. " + self._fill(tid),
                    },
                )
            ]
        if t.kind == "steps":
            if self._step1_done(v, tid):
                return [
                    (
                        "complete_task",
                        {"task_id": tid, "summary": f"{tid} step 2 of 2 done. " + self._fill(tid)},
                    )
                ]
            # The handoff lists todos or files it does not show, and does not say what
            # was in progress: look before starting over.
            if "In progress:" not in v.text and re.search(r'section"?:? "(todos|files)"', v.text):
                recall = self._recall(v, "todos", [f"`{tid}`"])
                if recall is not None:
                    return [("recall", recall)]
            return [
                (
                    "add_todo",
                    {"text": f"finish `{tid}`: step 2 of 2 (tests); step 1 is in src/{tid}.py"},
                ),
                (
                    "note_file",
                    {"path": f"src/{tid}.py", "note": f"scaffold of `{tid}`, step 1 of 2 done"},
                ),
            ]
        return [("complete_task", {"task_id": tid, "summary": f"{tid} done. " + self._fill(tid)})]

    def respond(self, request: dict[str, Any]) -> BrainReply:
        """Decide the next step from the request alone."""
        v = _view(request, self.blank_handoff)
        later = [message_text(m) for m in list(request.get("messages") or [])[1:]]
        if any(NEXT_ELIGIBLE_RE.search(t) for t in later):
            with self._lock:
                self.progress_hints_seen += 1
        if is_note_request(v.last_user):
            note = "I worked through the plan in order; my progress is in the state tools."
            return BrainReply(content=[{"type": "text", "text": note}])
        if AWAITING_DECISION in v.last_user:
            return BrainReply(content=[{"type": "text", "text": "Waiting for the human decision."}])
        plan = _plan(_system_text(request))
        if not plan:
            return BrainReply(content=[{"type": "text", "text": "No plan in the system prompt."}])
        done = self._done(plan, v)
        ready = [t for t in plan.values() if t.id not in done and all(d in done for d in t.deps)]
        # Finish what is half-done first; retry failed tasks last.
        ready.sort(
            key=lambda t: (
                0
                if t.kind == "steps" and self._step1_done(v, t.id)
                else 2
                if t.kind == "flaky" and self._failed_approaches(v, t.id)
                else 1
            )
        )
        uses: list[tuple[str, dict[str, Any]]] = []
        worked: list[str] = []
        for t in ready:
            if len(worked) >= self.tasks_per_turn:
                break
            step = self._step(plan, t, v)
            if not step:
                continue
            if step[0][0] == "recall":
                if not uses:
                    uses, worked = step, [t.id]
                break
            uses.extend(step)
            worked.append(t.id)
            if step[0][0] == "add_blocker":
                break  # the session waits for the human
        if not uses:
            return BrainReply(content=[{"type": "text", "text": "Nothing left that I can do."}])
        base = prompt_text(list(request.get("messages") or []), request.get("system"))
        content: list[dict[str, Any]] = [
            {"type": "text", "text": "Working on " + ", ".join(f"`{t}`" for t in worked) + "."}
        ]
        with self._lock:
            for index, (name, args) in enumerate(uses):
                digest = hashlib.sha256(f"{base}\x00{index}".encode()).hexdigest()
                uid = f"toolu_{digest[:24]}"
                content.append({"type": "tool_use", "id": uid, "name": name, "input": args})
                if uid not in self._logged and name != "recall":
                    self._logged.add(uid)
                    self.actions.append((name, args))
        return BrainReply(content=content)


def _system_text(request: dict[str, Any]) -> str:
    system = request.get("system")
    if isinstance(system, str):
        return system
    return "\n".join(block_text(b) for b in system or [])
