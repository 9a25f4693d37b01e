"""Start-up checks of the gateway's settings: secrets must be real outside development mode."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from libs.common.settings import CommonSettings
from services.gateway.settings import GatewaySettings, check_settings


def _check(capsys: pytest.CaptureFixture[str], dev_mode: bool, **values: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        check_settings(GatewaySettings(**values), CommonSettings(dev_mode=dev_mode))  # type: ignore[arg-type]
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_admin_token_required_and_not_a_placeholder(capsys: pytest.CaptureFixture[str]) -> None:
    assert "CARINA_GATEWAY_ADMIN_TOKEN: required" in _check(capsys, False)
    assert "placeholder" in _check(capsys, False, admin_token="changeme-please-123456")
    assert "placeholder" in _check(capsys, False, admin_token="short")
    check_settings(GatewaySettings(admin_token="f3a9c1d7e5b2a8c4d6e0"), CommonSettings(dev_mode=False))
    check_settings(GatewaySettings(), CommonSettings(dev_mode=True))


def test_dev_account_needs_both_halves(capsys: pytest.CaptureFixture[str]) -> None:
    assert "go together" in _check(capsys, True, dev_service="svc1")


def test_public_url_must_be_a_url() -> None:
    with pytest.raises(ValidationError):
        GatewaySettings(public_url="carina:8080")
    assert GatewaySettings(public_url="http://carina.example.org:8080/").public_url == "http://carina.example.org:8080"
