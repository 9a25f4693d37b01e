"""`python -m services.envmgr`: the environment manager."""

from libs.common.runner import run_service
from libs.common.settings import load_settings
from services.envmgr.app import setup
from services.envmgr.settings import Settings

if __name__ == "__main__":
    run_service("envmgr", load_settings(Settings), setup)
