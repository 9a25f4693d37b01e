"""The message contract: strict models, deterministic ids, and a catalogue that matches the code."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from libs.common.catalogue import render
from libs.common.messages import CATALOGUE, EnvCreate, EnvScale, VmProvision, example_payloads
from libs.common.subjects import stream_for

REPO = Path(__file__).resolve().parents[3]


def test_checked_in_catalogue_is_current() -> None:
    current = (REPO / "docs" / "subjects.md").read_text()
    assert current == render(), "docs/subjects.md is stale: run `make catalogue`"


def test_every_subject_has_a_stream_and_an_example_that_validates() -> None:
    examples = example_payloads()
    for model, subject, _, _ in CATALOGUE:
        assert stream_for(subject.replace("<service>", "x").replace("<envid>", "1"))
        assert model.model_validate(examples[model.__name__])


def test_operator_message_is_accepted_and_typos_are_refused() -> None:
    assert EnvCreate.model_validate_json('{"service":"svc1","config":"tomcat"}').envid is None
    with pytest.raises(ValidationError, match="confg"):
        EnvCreate.model_validate_json('{"service":"svc1","confg":"tomcat"}')
    with pytest.raises(ValidationError):
        EnvScale.model_validate_json('{"envid": 0, "direction": "up"}')


def test_message_ids_are_deterministic_and_distinguish_commands() -> None:
    a = VmProvision(envid=1, slot="1:master:1", incarnation=1)
    assert a.msg_id() == VmProvision(envid=1, slot="1:master:1", incarnation=1).msg_id()
    assert a.msg_id() != VmProvision(envid=1, slot="1:master:1", incarnation=1, attempt=2).msg_id()
    assert EnvScale(envid=3, direction="up", request_id="job-9").msg_id() == "env.scale:3:up:job-9"
