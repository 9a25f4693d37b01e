"""Rendering a VM template for one slot: Carina's placeholders, placement, and the CONTEXT a guest needs.

Pure functions (no I/O). The provisioner calls `render_vm()` with the environment's snapshot (taken at create time)
and the slot; the result is the text given to `one.vm.allocate`, or, for templates referenced by id, the extra
template given to `one.template.instantiate`.

What is added, and why:
- Carina's placeholders (`%NAME% %CPU% %MEMORY% %IMAGE_ID% %NETWORK_ID% %ENVID% %SERVICE_NAME% %CARINA_IP%
  %APP_CONTEXT_SCRIPT% %APP_CONTEXT_VAR% %MASTER_SERVICE_PORT% %ADMIN_USER% %MASTER% %APP_PACKAGE% %SLAVE_INDEX%
  %NUM_SLAVES%`) are substituted; anything else in the template — KVM, OpenVZ or EC2 sections — passes untouched.
- `NAME` is the slot's deterministic VM name: after a crash or a lost reply the provisioner finds the VM by it
  and adopts it instead of creating a second one.
- `CARINA_ENVID`/`CARINA_SLOT`/`CARINA_SERVICE` tags land in the VM's USER_TEMPLATE: the ground truth of which VMs
  are Carina's, for orphan checks.
- `placement_policy` becomes `SCHED_RANK` (pack → RUNNING_VMS, stripe → -RUNNING_VMS, load → FREE_CPU).
- CONTEXT gets the callback address, the per-VM token and the environment's variables (guest protocol, DESIGN §5).
"""

from __future__ import annotations

import re
from typing import Any

from libs.common.envconfig import PLACEMENT_RANK

Doc = dict[str, Any]

_CONTEXT_OPEN = re.compile(r"^\s*CONTEXT\s*=\s*\[", re.IGNORECASE | re.MULTILINE)
_TOP_NAME = re.compile(r"^\s*NAME\s*=.*$", re.MULTILINE)
_HAS_RANK = re.compile(r"^\s*(SCHED_RANK|RANK)\s*=", re.IGNORECASE | re.MULTILINE)


def quote(value: str) -> str:
    """An OpenNebula template string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_context_vars(text: str) -> list[tuple[str, str]]:
    """Carina's context-variable strings (`"APP_PACKAGE=x.war, SLAVE_ID=%SLAVE_INDEX%"`) as (key, value) pairs.

    Carina passed these through a shell environment file, so one level of surrounding double quotes and the
    backslash escapes were consumed before OpenNebula saw them (`\\/vol\\/data{1-6}` became `/vol/data{1-6}`).
    """
    text = text.strip()
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        text = text[1:-1]
    text = re.sub(r"\\(.)", r"\1", text)
    pairs: list[tuple[str, str]] = []
    depth = 0
    current = ""
    for ch in text + ",":
        if ch in "{[(":
            depth += 1
        elif ch in "}])":
            depth = max(0, depth - 1)
        if ch == "," and depth == 0:
            item = current.strip()
            current = ""
            if not item:
                continue
            key, sep, value = item.partition("=")
            if sep and re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key.strip()):
                pairs.append((key.strip(), value.strip().strip('"')))
            continue
        current += ch
    return pairs


def substitute(text: str, values: dict[str, str]) -> str:
    """Replace `%KEY%` placeholders that we know; leave every other `%…%` untouched."""
    return re.sub(r"%([A-Z_]+)%", lambda m: values.get(m.group(1), m.group(0)), text)


def _context_block_keys(text: str) -> set[str]:
    match = _CONTEXT_OPEN.search(text)
    if not match:
        return set()
    depth, end = 1, match.end()
    while end < len(text) and depth:
        depth += {"[": 1, "]": -1}.get(text[end], 0)
        end += 1
    return {m.group(1).upper() for m in re.finditer(r"([A-Za-z_][A-Za-z0-9_]*)\s*=", text[match.end():end])}


def _inject_context(text: str, pairs: list[tuple[str, str]]) -> str:
    present = _context_block_keys(text)
    fresh = [(k, v) for k, v in pairs if k.upper() not in present]
    if not fresh:
        return text
    body = ",\n  ".join(f"{k} = {quote(v) if not v.startswith('$') else quote(v)}" for k, v in fresh)
    match = _CONTEXT_OPEN.search(text)
    if match:
        rest = text[match.end():].lstrip()
        sep = "" if rest.startswith("]") else ","
        return text[: match.end()] + "\n  " + body + sep + "\n  " + text[match.end():].lstrip("\n")
    return text.rstrip() + "\nCONTEXT = [\n  " + body + " ]\n"


def placeholder_values(env: Doc, slot: Doc, carina_url: str) -> dict[str, str]:
    """Values of Carina's placeholders for one slot."""
    spec = env["spec"]
    cfg = spec["config"]
    role_spec = spec[slot["role"]] or spec["master"]
    params = slot.get("params") or {}
    host = re.sub(r"^https?://", "", carina_url).split("/")[0].split(":")[0]
    values = {
        "NAME": slot["name"],
        "CPU": f"{role_spec['cpu']:g}",
        "VCPU": str(role_spec.get("vcpu") or max(1, int(role_spec["cpu"] + 0.999))),
        "MEMORY": str(role_spec["memory"]),
        "IMAGE_ID": "" if role_spec.get("image_id") is None else str(role_spec["image_id"]),
        "NETWORK_ID": "" if role_spec.get("network_id") is None else str(role_spec["network_id"]),
        "ENVID": str(env["_id"]),
        "SERVICE_NAME": env["service"],
        "CARINA_IP": host,
        "CARINA_URL": carina_url,
        "APP_CONTEXT_SCRIPT": cfg.get(f"{slot['role']}_context_script", "") or "",
        "MASTER_SERVICE_PORT": str(cfg.get("master_service_port") or ""),
        "ADMIN_USER": cfg.get("adminuser", "") or "",
        "APP_PACKAGE": str(cfg.get("app_package") or ""),
        "MASTER": str(params.get("MASTER", "")),
        "SLAVE_INDEX": str(params.get("SLAVE_INDEX", "")),
        "NUM_SLAVES": str(params.get("NUM_SLAVES", env.get("desired_slaves", cfg.get("num_slaves", 0)))),
    }
    return values


def context_pairs(env: Doc, slot: Doc, carina_url: str, token: str, notify: str = "pull") -> list[tuple[str, str]]:
    """The CONTEXT variables of a slot: Carina's, the environment's, and the group dependencies' URLs."""
    values = placeholder_values(env, slot, carina_url)
    cfg = env["spec"]["config"]
    role = slot["role"]
    pairs: list[tuple[str, str]] = [
        ("CARINA_URL", carina_url),
        ("CARINA_TOKEN", token),
        ("ONEGATE_ENDPOINT", carina_url),
        ("CARINA_ROLE", role),
        ("CARINA_NOTIFY", notify),
        ("CARINA_IP", values["CARINA_IP"]),
        ("ENVID", str(env["_id"])),
        ("VMID", "$VMID"),
        ("SERVICE_NAME", env["service"]),
        ("IP", "$NIC[IP]"),
    ]
    if cfg.get("adminuser"):
        pairs.append(("DEFUSER", cfg["adminuser"]))
    if role == "slave":
        pairs += [("MASTER", values["MASTER"]), ("SLAVE_INDEX", values["SLAVE_INDEX"]),
                  ("NUM_SLAVES", values["NUM_SLAVES"])]
    else:
        pairs.append(("NUM_SLAVES", values["NUM_SLAVES"]))
    app_vars = parse_context_vars(substitute(str(cfg.get(f"{role}_context_var", "") or ""), values))
    extra = sorted((env.get("context_extra") or {}).items())
    return pairs + app_vars + [(k, str(v)) for k, v in extra]


def render_vm(env: Doc, slot: Doc, carina_url: str, token: str, notify: str = "pull") -> str:
    """The full template text for `one.vm.allocate` (uploaded `.vm` templates)."""
    role_spec = env["spec"][slot["role"]] or env["spec"]["master"]
    text = str(role_spec.get("text") or "")
    values = placeholder_values(env, slot, carina_url)
    cfg = env["spec"]["config"]
    pairs = context_pairs(env, slot, carina_url, token, notify)
    app_pairs = parse_context_vars(substitute(str(cfg.get(f"{slot['role']}_context_var", "") or ""), values))
    if "%APP_CONTEXT_VAR%" in text:
        # The template places the environment's variables itself (Carina's own templates do).
        values["APP_CONTEXT_VAR"] = ", ".join(f"{k} = {quote(v)}" for k, v in app_pairs)
        pairs = [p for p in pairs if p not in app_pairs]
    text = substitute(text, values)
    text = _TOP_NAME.sub("", text).strip() + "\n"
    text = _inject_context(text, pairs)
    return text + _tail(env, slot)


def render_extra(env: Doc, slot: Doc, carina_url: str, token: str, notify: str = "pull") -> str:
    """The extra template for `one.template.instantiate` (templates referenced by id)."""
    pairs = context_pairs(env, slot, carina_url, token, notify)
    body = ",\n  ".join(f"{k} = {quote(v)}" for k, v in pairs)
    return "CONTEXT = [\n  " + body + " ]\n" + _tail(env, slot, with_name=False)


def _tail(env: Doc, slot: Doc, with_name: bool = True) -> str:
    lines = []
    if with_name:
        lines.append(f"NAME = {quote(slot['name'])}")
    policy = env["spec"]["config"].get("placement_policy")
    text = str((env["spec"][slot["role"]] or env["spec"]["master"]).get("text") or "")
    if policy and not _HAS_RANK.search(text):
        lines.append(f"SCHED_RANK = {quote(PLACEMENT_RANK[policy])}")
    lines += [f"CARINA_ENVID = {quote(str(env['_id']))}", f"CARINA_SLOT = {quote(slot['_id'])}",
              f"CARINA_SERVICE = {quote(env['service'])}"]
    return "\n".join(lines) + "\n"
