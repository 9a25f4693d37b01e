"""`python -m services.policy`: elasticity and availability policies."""

from libs.common.runner import run_service
from libs.common.settings import load_settings
from services.policy.app import setup
from services.policy.settings import Settings

if __name__ == "__main__":
    run_service("policy", load_settings(Settings), setup)
