"""OpenNebula 6.10 state numbers (VM STATE, LCM_STATE, host STATE), error codes and history actions.

Where it sits: shared vocabulary of the simulated zone (core, XML rendering, control API). Numbers follow
OpenNebula's VirtualMachine.h / Host.h, the same values pyone exposes as VM_STATE / LCM_STATE / HOST_STATES.
"""

from __future__ import annotations

# ------------------------------------------------------------------------------------------------ error codes
SUCCESS = 0x0000
AUTHENTICATION = 0x0100
AUTHORIZATION = 0x0200
NO_EXISTS = 0x0400
ACTION = 0x0800
XML_RPC_API = 0x1000
INTERNAL = 0x2000
ALLOCATE = 0x4000
LOCKED = 0x8000

ERROR_CODES = {
    "authentication": AUTHENTICATION,
    "authorization": AUTHORIZATION,
    "no_exists": NO_EXISTS,
    "action": ACTION,
    "api": XML_RPC_API,
    "internal": INTERNAL,
    "allocate": ALLOCATE,
    "locked": LOCKED,
}

# -------------------------------------------------------------------------------------------------- VM states
INIT, PENDING, HOLD, ACTIVE, STOPPED, SUSPENDED, DONE, FAILED, POWEROFF, UNDEPLOYED = range(10)
VM_STATE_NAMES = [
    "INIT", "PENDING", "HOLD", "ACTIVE", "STOPPED", "SUSPENDED", "DONE", "FAILED", "POWEROFF", "UNDEPLOYED",
    "CLONING", "CLONING_FAILURE",
]

LCM_STATE_NAMES = [
    "LCM_INIT", "PROLOG", "BOOT", "RUNNING", "MIGRATE", "SAVE_STOP", "SAVE_SUSPEND", "SAVE_MIGRATE",
    "PROLOG_MIGRATE", "PROLOG_RESUME", "EPILOG_STOP", "EPILOG", "SHUTDOWN", "CANCEL", "FAILURE",
    "CLEANUP_RESUBMIT", "UNKNOWN", "HOTPLUG", "SHUTDOWN_POWEROFF", "BOOT_UNKNOWN", "BOOT_POWEROFF",
    "BOOT_SUSPENDED", "BOOT_STOPPED", "CLEANUP_DELETE", "HOTPLUG_SNAPSHOT", "HOTPLUG_NIC", "HOTPLUG_SAVEAS",
    "HOTPLUG_SAVEAS_POWEROFF", "HOTPLUG_SAVEAS_SUSPENDED", "SHUTDOWN_UNDEPLOY", "EPILOG_UNDEPLOY",
    "PROLOG_UNDEPLOY", "BOOT_UNDEPLOY", "HOTPLUG_PROLOG_POWEROFF", "HOTPLUG_EPILOG_POWEROFF", "BOOT_MIGRATE",
    "BOOT_FAILURE", "BOOT_MIGRATE_FAILURE", "PROLOG_MIGRATE_FAILURE", "PROLOG_FAILURE", "EPILOG_FAILURE",
    "EPILOG_STOP_FAILURE", "EPILOG_UNDEPLOY_FAILURE", "PROLOG_MIGRATE_POWEROFF",
    "PROLOG_MIGRATE_POWEROFF_FAILURE", "PROLOG_MIGRATE_SUSPEND", "PROLOG_MIGRATE_SUSPEND_FAILURE",
    "BOOT_UNDEPLOY_FAILURE", "BOOT_STOPPED_FAILURE", "PROLOG_RESUME_FAILURE", "PROLOG_UNDEPLOY_FAILURE",
]
LCM = {name: number for number, name in enumerate(LCM_STATE_NAMES)}

LCM_INIT = LCM["LCM_INIT"]
PROLOG = LCM["PROLOG"]
BOOT = LCM["BOOT"]
RUNNING = LCM["RUNNING"]
SAVE_STOP = LCM["SAVE_STOP"]
SAVE_SUSPEND = LCM["SAVE_SUSPEND"]
PROLOG_RESUME = LCM["PROLOG_RESUME"]
EPILOG_STOP = LCM["EPILOG_STOP"]
EPILOG = LCM["EPILOG"]
SHUTDOWN = LCM["SHUTDOWN"]
UNKNOWN = LCM["UNKNOWN"]
SHUTDOWN_POWEROFF = LCM["SHUTDOWN_POWEROFF"]
BOOT_UNKNOWN = LCM["BOOT_UNKNOWN"]
BOOT_POWEROFF = LCM["BOOT_POWEROFF"]
BOOT_SUSPENDED = LCM["BOOT_SUSPENDED"]
BOOT_STOPPED = LCM["BOOT_STOPPED"]
SHUTDOWN_UNDEPLOY = LCM["SHUTDOWN_UNDEPLOY"]
EPILOG_UNDEPLOY = LCM["EPILOG_UNDEPLOY"]
PROLOG_UNDEPLOY = LCM["PROLOG_UNDEPLOY"]
BOOT_UNDEPLOY = LCM["BOOT_UNDEPLOY"]
BOOT_FAILURE = LCM["BOOT_FAILURE"]
PROLOG_FAILURE = LCM["PROLOG_FAILURE"]
EPILOG_FAILURE = LCM["EPILOG_FAILURE"]

FAILURE_LCM_STATES = frozenset(n for n, name in enumerate(LCM_STATE_NAMES) if name.endswith("_FAILURE"))

# ------------------------------------------------------------------------------------------------ host states
HOST_INIT, HOST_MONITORING_MONITORED, HOST_MONITORED, HOST_ERROR, HOST_DISABLED = range(5)
HOST_OFFLINE = 8

# ------------------------------------------------------------------------------------------- history actions
HISTORY_ACTIONS = (
    "none migrate live-migrate shutdown shutdown-hard undeploy undeploy-hard hold release stop suspend resume boot "
    "delete delete-recreate reboot reboot-hard resched unresched poweroff poweroff-hard disk-attach disk-detach "
    "nic-attach nic-detach disk-snapshot-create disk-snapshot-delete terminate terminate-hard"
).split()
HISTORY_ACTION = {name: number for number, name in enumerate(HISTORY_ACTIONS)}


def state_name(state: int, lcm_state: int) -> str:
    """The name oned uses in messages: the LCM state for ACTIVE VMs, the VM state otherwise."""
    if state == ACTIVE and 0 <= lcm_state < len(LCM_STATE_NAMES):
        return LCM_STATE_NAMES[lcm_state]
    return VM_STATE_NAMES[state] if 0 <= state < len(VM_STATE_NAMES) else str(state)
