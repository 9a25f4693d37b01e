"""Generates docs/subjects.md — the subject catalogue — from the message models, so it cannot drift.

`python -m libs.common.catalogue > docs/subjects.md` (or `make catalogue`). A test fails when the checked-in file
differs from what this prints.
"""

from __future__ import annotations

import json
import sys

from libs.common.messages import CATALOGUE, example_payloads
from libs.common.subjects import STREAMS, stream_for


def render() -> str:
    examples = example_payloads()
    out = [
        "# Subject catalogue",
        "",
        "Generated from `libs/common/messages.py` by `make catalogue`; do not edit by hand.",
        "Every payload is JSON; unknown keys are refused; commands carry a deterministic `Nats-Msg-Id`.",
        "",
        "## Streams",
        "",
        "| stream | subjects | max age | duplicate window |",
        "|---|---|---|---|",
    ]
    for spec in STREAMS:
        out.append(f"| {spec.name} | `{'`, `'.join(spec.subjects)}` | {spec.max_age_s / 3600:g} h | "
                   f"{spec.duplicate_window_s:g} s |")
    out += ["", "## Subjects", "", "| subject | stream | producer | consumer | model |", "|---|---|---|---|---|"]
    for model, subject, producer, consumer in CATALOGUE:
        out.append(f"| `{subject}` | {stream_for(subject).name} | {producer} | {consumer} | `{model.__name__}` |")
    for model, subject, producer, consumer in CATALOGUE:
        doc = (model.__doc__ or "").strip().splitlines()[0]
        example = json.dumps(examples[model.__name__], separators=(",", ":"))
        schema = json.dumps(model.model_json_schema(), indent=2, sort_keys=True)
        out += [
            "",
            f"### `{subject}` — {model.__name__}",
            "",
            doc,
            "",
            f"Producer: {producer}. Consumer: {consumer}.",
            "",
            "Example (`nats pub " + subject.replace("<service>", "svc1").replace("<envid>", "18") + " '…'`):",
            "",
            "```json",
            example,
            "```",
            "",
            "<details><summary>JSON Schema</summary>",
            "",
            "```json",
            schema,
            "```",
            "",
            "</details>",
        ]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
