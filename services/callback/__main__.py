"""`python -m services.callback`: records guest reports."""

from libs.common.runner import run_service
from libs.common.settings import load_settings
from services.callback.app import setup
from services.callback.settings import Settings

if __name__ == "__main__":
    run_service("callback", load_settings(Settings), setup)
