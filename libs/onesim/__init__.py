"""onesim: a simulated OpenNebula 6.10 front-end (XML-RPC, VM lifecycle, emulated guests, fault injection).

Where it sits: the default endpoint of ``make run`` and the ground truth of Carina's fault tests (DESIGN §9).
Start one in-process with ``with SimZone(ZoneConfig(...)) as zone: ...`` or as a process with
``python -m libs.onesim --port 0``; drive faults with :class:`SimControl`.
"""

from .config import HostSpec, NetworkSpec, ZoneConfig
from .control import ControlError, SimControl, selector
from .core import LoadProfile, OneError
from .server import SimZone
from .template import Template, TemplateSyntaxError, parse_template

__all__ = [
    "ControlError", "HostSpec", "LoadProfile", "NetworkSpec", "OneError", "SimControl", "SimZone", "Template",
    "TemplateSyntaxError", "ZoneConfig", "parse_template", "selector",
]
