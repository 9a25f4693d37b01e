"""`python -m services.gateway`: the HTTP ingress for users (REST API v1) and guests (callbacks)."""

from __future__ import annotations

from libs.common.runner import run_service
from libs.common.settings import CommonSettings, load_settings
from services.gateway.app import setup
from services.gateway.settings import GatewaySettings, check_settings


def main() -> None:
    common = load_settings(CommonSettings)
    settings = load_settings(GatewaySettings)
    check_settings(settings, common)
    run_service("gateway", settings, setup, common=common)


if __name__ == "__main__":
    main()
