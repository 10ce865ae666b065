"""Benchmark: token estimate throughput, and estimate error before and after calibration.

* Throughput: the activities' tiktoken counter (`count_tokens`, offline
  `cl100k_base`) over a mixed corpus of prose, this repository's Python source, JSON
  project state and Markdown, in MB of UTF-8 per second (encoder warm).
* Error: the fake server counts tokens as tiktoken × `drift` (the stand-in for the
  gap between tiktoken and Claude's tokenizer). A session is simulated through the
  real `anthropic` client: each call appends new content, the raw tiktoken
  estimate of that content is recorded exactly as `call_model` does, and the
  `TokenLedger` learns its calibration factor from the usage the server reports.
  Then held-out texts are estimated raw (before) and calibrated (after) and
  compared with the server's `count_tokens`: mean absolute relative error.

Run: ``.venv/bin/python bench/tokens.py [--json] [--quick] [--drift 1.15]``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import anthropic
from _common import MODEL, REPO, emit, fmt_table, percentile

from temporal_handoff.activities.tokenizer import calibrated, count_tokens
from temporal_handoff.schemas.model_io import message_text, prompt_text
from temporal_handoff.schemas.tokens import TokenLedger, TokenUsage
from temporal_handoff.testing import EchoBrain, FakeAnthropicServer
from temporal_handoff.testing.brain import filler
from temporal_handoff.testing.synthetic import synthetic_project

TARGET_ERROR = 0.03


def corpus() -> dict[str, str]:
    """Texts by kind, all made or shipped locally (nothing downloaded)."""
    code = "\n\n".join(
        p.read_text() for p in sorted((REPO / "temporal_handoff").rglob("*.py"))
    )
    docs = "\n\n".join(p.read_text() for p in [REPO / "README.md"] if p.exists())
    prose = "\n".join(filler(f"para-{i}", 120) + "." for i in range(600))
    state = synthetic_project(500, 6).model_dump_json(indent=2)
    return {"prose": prose, "code": code, "json": state, "markdown": docs}


def pieces(texts: dict[str, str], n: int, rng: random.Random) -> list[tuple[str, str]]:
    """`n` random slices (1-6 KB) of the corpus, cycling through the kinds."""
    kinds = sorted(texts)
    out = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        text = texts[kind]
        size = rng.randint(1000, 6000)
        start = rng.randint(0, max(0, len(text) - size))
        out.append((kind, text[start : start + size]))
    return out


def throughput(texts: dict[str, str], repeats: int) -> dict[str, Any]:
    count_tokens("warm up")
    blob = "\n".join(texts.values())
    size = len(blob.encode())
    times = []
    tokens = 0
    for _ in range(repeats):
        t = time.perf_counter()
        tokens = count_tokens(blob)
        times.append(time.perf_counter() - t)
    best = statistics.median(times)
    return {"mb_per_s": round(size / best / 1e6, 2), "corpus_bytes": size, "corpus_tokens": tokens,
            "bytes_per_token": round(size / tokens, 2)}


def calibration_error(
    texts: dict[str, str], drift: float, calls: int, held_out: int, seed: int
) -> dict[str, Any]:
    rng = random.Random(seed)
    train = pieces(texts, calls, rng)
    test = pieces(texts, held_out, random.Random(seed + 1))
    ledger = TokenLedger()
    with FakeAnthropicServer(brain=EchoBrain(max_chars=200), drift=drift) as fake:
        client = anthropic.Anthropic(base_url=fake.base_url, api_key="bench", max_retries=0)
        system = [{"type": "text", "text": "You are a careful engineer."}]
        messages: list[dict[str, Any]] = []
        known_upto = 0
        for _, text in train:
            messages.append({"role": "user", "content": text})
            # Exactly what call_model estimates: the whole prompt first, then new messages.
            if ledger.occupancy == 0:
                raw_new = count_tokens(prompt_text(messages, system, []))
            else:
                raw_new = count_tokens("\n".join(message_text(m) for m in messages[known_upto:]))
            reply = client.messages.create(
                model=MODEL, max_tokens=1024, system=system, messages=messages  # type: ignore[arg-type]
            )
            usage = reply.usage
            ledger.record(
                TokenUsage(
                    input_tokens=usage.input_tokens,
                    output_tokens=usage.output_tokens,
                    cache_creation_input_tokens=usage.cache_creation_input_tokens or 0,
                    cache_read_input_tokens=usage.cache_read_input_tokens or 0,
                ),
                MODEL,
                raw_new,
            )
            messages.append(
                {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in reply.content]}
            )
            known_upto = len(messages)
        factor = ledger.calibration
        before: list[float] = []
        after: list[float] = []
        by_kind: dict[str, list[float]] = {}
        for kind, text in test:
            true = client.messages.count_tokens(
                model=MODEL, messages=[{"role": "user", "content": text}]
            ).input_tokens
            raw = count_tokens(text)
            before.append(abs(raw - true) / true)
            err = abs(calibrated(raw, factor) - true) / true
            after.append(err)
            by_kind.setdefault(kind, []).append(err)
    return {
        "drift": drift,
        "calibration": round(factor, 4),
        "calls": calls,
        "held_out": held_out,
        "error_before": round(statistics.fmean(before), 4),
        "error_after": round(statistics.fmean(after), 4),
        "error_after_p95": round(percentile(after, 95), 4),
        "error_after_max": round(max(after), 4),
        "error_after_by_kind": {k: round(statistics.fmean(v), 4) for k, v in sorted(by_kind.items())},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--quick", action="store_true", help="fewer calls and texts")
    p.add_argument("--drift", type=float, default=1.15, help="the fake server's drift factor")
    p.add_argument("--calls", type=int, default=30, help="calls that teach the calibration")
    p.add_argument("--held-out", type=int, default=200, help="texts to evaluate")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    if args.quick:
        args.calls, args.held_out, args.repeats = 8, 20, 1
    texts = corpus()
    result: dict[str, Any] = throughput(texts, args.repeats)
    result.update(calibration_error(texts, args.drift, args.calls, args.held_out, seed=11))
    result["target_error"] = TARGET_ERROR
    table = fmt_table(
        ["MB/s", "drift", "learned factor", "error before", "error after", "p95 after",
         "max after", f"≤ {TARGET_ERROR:.0%}"],
        [[result["mb_per_s"], result["drift"], result["calibration"],
          f"{result['error_before']:.2%}", f"{result['error_after']:.2%}",
          f"{result['error_after_p95']:.2%}", f"{result['error_after_max']:.2%}",
          "ok" if result["error_after"] <= TARGET_ERROR else "MISS"]],
    )
    table += "\nerror after, by kind: " + json.dumps(result["error_after_by_kind"])
    emit(args.json, result, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
