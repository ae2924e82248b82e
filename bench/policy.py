"""How fast the default rule set judges a prompt.

    .venv/bin/python bench/policy.py [--iterations 5000]

Prints p50, p99 and evaluations per second for a clean 2 KB prompt, the same prompt carrying
personal data and secrets, and a tool call; then one JSON line with the clean prompt's figures:
{"eval_p50_ms": ..., "eval_p99_ms": ...}. The target is p50 <= 1 ms for the clean prompt.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from handlers.policy.evaluate import evaluate
from handlers.policy.rules import RuleSet, load_default
from schemas.policy import PolicyEvaluate

SIZE = 2048
SENTENCES = [
    "Our planning meeting on 12 March 2024 covered the roadmap for the data platform.",
    "We agreed to move the 40 nightly batch jobs to the new scheduler before the end of Q2.",
    "The legacy reporting service (version 2.3) will be retired once the dashboards are rebuilt.",
    "Hiring continues for two backend roles; interviews run through the first week of April.",
    "Please draft a short summary for the team newsletter that highlights dates and owners.",
    "Keep a friendly tone, avoid jargon, and stay under 300 words so it fits on one screen.",
    "Mention that the on-call rotation changes next month and link the updated runbook.",
    "Finally, thank the infrastructure group for the smooth database upgrade last weekend.",
]
PERSONAL = (
    " Send the draft to ann.lee@example.org or call +1 415-555-2671; reimburse card"
    " 4111 1111 1111 1111 and IBAN DE89 3704 0044 0532 0130 00, and rotate key"
    " AKIAIOSFODNN7EXAMPLE."
)


def prose(size: int) -> str:
    text = ""
    while len(text) < size:
        text += " ".join(SENTENCES) + " "
    return text[:size]


def measure(rules: RuleSet, request: PolicyEvaluate, iterations: int) -> list[float]:
    for _ in range(min(500, iterations)):
        evaluate(rules, request)
    timings = []
    for _ in range(iterations):
        started = time.perf_counter_ns()
        evaluate(rules, request)
        timings.append((time.perf_counter_ns() - started) / 1e6)
    return timings


def percentile(timings: list[float], fraction: float) -> float:
    ordered = sorted(timings)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5000)
    iterations = parser.parse_args().iterations

    rules = load_default()
    clean = prose(SIZE)
    with_personal = prose(SIZE - len(PERSONAL)) + PERSONAL
    cases = {
        "clean 2 KB prompt": PolicyEvaluate(stage="prompt", text=clean),
        "2 KB prompt with personal data": PolicyEvaluate(stage="prompt", text=with_personal),
        "tool call, 2 KB of arguments": PolicyEvaluate(
            stage="tool_call",
            tool_name="http_fetch",
            tool_arguments={"url": "https://example.org/notes", "body": with_personal},
        ),
    }
    load = os.getloadavg()[0]
    print(f"policy evaluation, default rule set {rules.version}, {iterations} runs each")
    print(f"  (load average {load:.1f} on {os.cpu_count()} CPUs: p99 includes time others took)")
    results = {}
    for name, request in cases.items():
        timings = measure(rules, request, iterations)
        decision = evaluate(rules, request).decision
        p50, p99 = percentile(timings, 0.50), percentile(timings, 0.99)
        results[name] = (p50, p99)
        print(
            f"  {name:32} p50 {p50:7.3f} ms   p99 {p99:7.3f} ms   "
            f"{1000 / statistics.fmean(timings):9.0f} evaluations/s   -> {decision}"
        )
    p50, p99 = results["clean 2 KB prompt"]
    print(json.dumps({"eval_p50_ms": round(p50, 4), "eval_p99_ms": round(p99, 4)}))


if __name__ == "__main__":
    main()
