"""Helpers of the issue #8 end-to-end tests (tests/e2e/test_compat.py): the examples' config.rb pointed at a test
stack, ground truth read from the simulated zones, and bounded waits.

The configuration the tests upload is `examples/config.rb` itself, rewritten only where it must differ for a test
stack (the zones' URLs, `master_setup_time` 0), plus a few Ruby entries of our own (hypervisor-specific templates,
a group whose first member fails) spliced into its TEMPLATE and ENVIRONMENT hashes, so the importer reads one
real Carina file.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import pyone

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ZONE_CREDENTIALS = "oneadmin:onesim"

# A KVM-specific template: attributes only the KVM driver reads, next to Carina's placeholders.
KVM_VM = """\
# KVM-specific template: firmware, CPU model, virtio and a libvirt RAW section, all for the KVM driver only.
NAME   = "%NAME%"
CPU    = %CPU%
VCPU   = 2
MEMORY = %MEMORY%
OS       = [ ARCH = "x86_64", BOOT = "disk0", MACHINE = "q35" ]
FEATURES = [ ACPI = "yes", APIC = "yes", GUEST_AGENT = "yes" ]
CPU_MODEL = [ MODEL = "host-passthrough" ]
RAW      = [ TYPE = "kvm", DATA = "<devices><serial type='pty'><target port='0'/></serial></devices>" ]
DISK = [ IMAGE_ID = %IMAGE_ID%, DEV_PREFIX = "vd", CACHE = "none" ]
NIC  = [ NETWORK_ID = %NETWORK_ID%, MODEL = "virtio" ]
CONTEXT = [
  NETWORK = "YES",
  ENVID   = "%ENVID%",
  %APP_CONTEXT_VAR% ]
"""

# Seed 004's OpenVZ template as OpenNebula 2.2 took it: MEMORY a vector of beancounters, no CPU. OpenNebula 6.10
# (and the simulated zone) refuses it at vm.allocate; Carina must pass that refusal on, not retry it.
OVZ22_VM = """\
NAME     = "%NAME%"
MEMORY   = [ KMEMSIZE = "14372700:14790164", PRIVVMPAGES = "65536:69632" ]
CPUUNITS = "2000"
DISK = [ IMAGE_ID = %IMAGE_ID% ]
NIC  = [ NETWORK_ID = %NETWORK_ID% ]
CONTEXT = [ ENVID = "%ENVID%", %APP_CONTEXT_VAR% ]
"""

# Our own entries, in Carina's Ruby syntax, added to the examples' TEMPLATE hash.
EXTRA_TEMPLATES = """
  'kvm'    => { :file => '~/vm/kvm.vm',        :cpu => 1, :memory => 512,
                :network_id => { 'zone1' => 0 }, :image_id => { 'zone1' => 0 } },
  'openvz' => { :file => '~/vm/openvz.vm',     :cpu => 1, :memory => 512,
                :network_id => { 'zone1' => 0 }, :image_id => { 'zone1' => 0 } },
  'ec2'    => { :file => '~/vm/hybrid-ec2.vm', :cpu => 1, :memory => 512,
                :network_id => { 'zone1' => 0 }, :image_id => { 'zone1' => 0 } },
  'ovz22'  => { :file => '~/vm/ovz22.vm',      :cpu => 1, :memory => 512,
                :network_id => { 'zone1' => 0 }, :image_id => { 'zone1' => 0 } },
"""


def _single(name: str, template: str) -> str:
    return f"""
  '{name}' => {{
    :type => "compute", :endpoint => "zone1", :description => "one {template} VM",
    :master_template => "{template}", :master_setup_time => 0, :master_context_var => "ROLE=solo",
    :slave_template => "{template}", :num_slaves => 0, :app_url => "http://%MASTER%/",
  }},"""


# Our own entries added to the examples' ENVIRONMENT hash: one environment per hypervisor template, and a group
# whose first member ('hfail', failed on purpose by the test) leaves two members waiting.
EXTRA_ENVIRONMENTS = "".join(_single(f"on_{t}", t) for t in ("kvm", "openvz", "ec2", "ovz22")) + """
  'hfail' => {
    :type => "data", :endpoint => "zone1", :description => "an HBase that will not start",
    :master_template => "example", :master_setup_time => 0, :slave_template => "example",
    :num_slaves => 1, :app_url => "http://%MASTER%:60010",
  },
  'doomed' => {
    :type => "group", :description => "first member fails; the others never start",
    :members => [ 'hfail', 'jenkins', 'tomcat' ],
    :dependencies => { 'tomcat' => [ 'hfail' ] },
  },
"""


def examples_config_rb(zone1: str, zone2: str, extras: bool = True) -> str:
    """examples/config.rb for a test stack: its zones' URLs, no master setup time, and (optionally) our entries."""
    text = (EXAMPLES / "config.rb").read_text()
    text, n1 = re.subn(r"http://127\.0\.0\.1:2633/RPC2", zone1, text)
    text, n2 = re.subn(r"http://127\.0\.0\.1:2634/RPC2", zone2, text)
    text, nsetup = re.subn(r"(:master_setup_time\s*=>\s*)\d+", r"\g<1>0", text)
    assert (n1, n2) == (1, 1) and nsetup >= 5, "examples/config.rb changed shape: update compat_support"
    if extras:
        text, nt = re.subn(r"(\n}\s*\n\s*ENVIRONMENT\s*=)", lambda m: EXTRA_TEMPLATES + m.group(1), text, count=1)
        text, ne = re.subn(r"\n}\s*$", lambda m: EXTRA_ENVIRONMENTS + m.group(0), text, count=1)
        assert (nt, ne) == (1, 1), "examples/config.rb changed shape: update compat_support"
    return text


# --- ground truth in the simulated zones -----------------------------------------------------------------------------


def zone_vms(url: str, envids: set[int] | None = None) -> list[Any]:
    """Live VMs of a zone (every state but DONE), optionally only those Carina tagged with one of `envids`."""
    one = pyone.OneServer(url, session=ZONE_CREDENTIALS)
    vms = list(one.vmpool.infoextended(-2, -1, -1, -1).VM or [])
    if envids is None:
        return vms
    wanted = {str(e) for e in envids}
    return [vm for vm in vms if str(vm.USER_TEMPLATE.get("CARINA_ENVID")) in wanted]


def zone_vm(url: str, vmid: int) -> Any:
    return pyone.OneServer(url, session=ZONE_CREDENTIALS).vm.info(vmid)


def context_of(vm: Any) -> dict[str, str]:
    """The CONTEXT the guest of a (pyone) VM received, as plain strings."""
    return {str(k): str(v) for k, v in dict(vm.TEMPLATE.get("CONTEXT") or {}).items()}


def nic_ip(vm: Any) -> str:
    nic = vm.TEMPLATE.get("NIC")
    first = nic[0] if isinstance(nic, list) else nic
    return str(first["IP"])


def as_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 30.0, every: float = 0.25) -> T:
    """Poll `probe` until it returns something truthy; fail naming `what` (and the last value) at the deadline."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")
