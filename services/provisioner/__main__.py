"""`python -m services.provisioner`: the only service that talks to OpenNebula."""

from libs.common.runner import run_service
from libs.common.settings import load_settings
from services.provisioner.app import setup
from services.provisioner.settings import Settings

if __name__ == "__main__":
    run_service("provisioner", load_settings(Settings), setup)
