"""`python -m services.scheduler`: the global scheduler."""

from libs.common.runner import run_service
from libs.common.settings import load_settings
from services.scheduler.app import setup
from services.scheduler.settings import Settings

if __name__ == "__main__":
    run_service("scheduler", load_settings(Settings), setup)
