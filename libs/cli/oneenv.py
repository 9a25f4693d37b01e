"""`oneenv`: Carina's command-line client, talking to the gateway's REST API v1.

Subcommands (`oneenv create tomcat --watch`) and Carina's original flag forms (`oneenv --create tomcat`,
`oneenv -r -55`) do the same thing: the flag forms are rewritten into subcommands before parsing. Listings print
Carina's columns, or the API's JSON with `--json`. `--watch` follows the environment's server-sent events until its
job ends (falling back to polling when the stream is unavailable).

Configuration: `CARINA_URL` and `CARINA_TOKEN`, else `$XDG_CONFIG_HOME/carina/cli.json` (default
`~/.config/carina/cli.json`, written by `make run`) holding `{"url": ..., "token": ...}`.

Exit codes: 0 ok, 1 the operation failed, 2 usage error or input rejected, 3 not found, 4 conflict (an operation
is in progress), 5 server unreachable or failing. Errors are one line on stderr; the token is never printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import httpx

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_CONFLICT, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4, 5
DEFAULT_URL = "http://127.0.0.1:8080"
TERMINAL = ("DONE", "FAIL", "ABORT")


class CliError(Exception):
    """An error to report in one line with an exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def err(text: str) -> None:
    sys.stderr.write(f"oneenv: {text}\n")
    sys.stderr.flush()


# --- configuration ----------------------------------------------------------------------------------------------------


def config_file(env: dict[str, str] | os._Environ[str] = os.environ) -> Path:
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "carina" / "cli.json"


def load_connection(url: str | None = None, env: dict[str, str] | os._Environ[str] = os.environ) -> tuple[str, str]:
    """The gateway URL and token: command line, then environment, then the config file."""
    stored: dict[str, Any] = {}
    path = config_file(env)
    if path.exists() and not (env.get("CARINA_URL") and env.get("CARINA_TOKEN")):
        try:
            loaded = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CliError(EXIT_USAGE, f"cannot read {path}: {exc}") from None
        if not isinstance(loaded, dict):
            raise CliError(EXIT_USAGE, f"{path} must hold a JSON object with 'url' and 'token'")
        stored = loaded
    base = url or env.get("CARINA_URL") or str(stored.get("url") or DEFAULT_URL)
    token = env.get("CARINA_TOKEN") or str(stored.get("token") or "")
    return base.rstrip("/"), token


# --- HTTP -------------------------------------------------------------------------------------------------------------


def _detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text.strip()[:300] or resp.reason_phrase
    if isinstance(body, dict) and body.get("detail"):
        return str(body["detail"])
    return resp.reason_phrase


def error_for(resp: httpx.Response) -> CliError:
    """Map an HTTP error answer onto an exit code and a message."""
    detail = _detail(resp)
    code = resp.status_code
    if code == 401:
        return CliError(EXIT_USAGE, f"not authenticated: {detail} (set CARINA_TOKEN or {config_file()})")
    if code == 404:
        return CliError(EXIT_NOT_FOUND, detail)
    if code == 409:
        return CliError(EXIT_CONFLICT, detail)
    if code >= 500:
        return CliError(EXIT_UNAVAILABLE, f"server error {code}: {detail}")
    return CliError(EXIT_USAGE, detail)


@dataclass
class Api:
    """A thin client of the REST API that turns every failure into a `CliError`."""

    url: str
    token: str
    service: str | None = None
    timeout: float = 30.0

    def __post_init__(self) -> None:
        headers = {"User-Agent": "oneenv/1.0", "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=self.timeout)

    def _params(self, params: dict[str, Any] | None) -> dict[str, Any]:
        merged = {k: v for k, v in (params or {}).items() if v is not None}
        if self.service:
            merged.setdefault("service", self.service)
        return merged

    def call(self, method: str, path: str, params: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        try:
            resp = self.http.request(method, path, params=self._params(params), **kwargs)
        except httpx.TransportError as exc:
            raise CliError(EXIT_UNAVAILABLE, f"cannot reach Carina at {self.url}: {type(exc).__name__}") from None
        if resp.is_error:
            raise error_for(resp)
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            return resp.text

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path, params)

    def stream_lines(self, path: str, params: dict[str, Any], read_timeout: float) -> Iterator[str]:
        timeout = httpx.Timeout(self.timeout, read=read_timeout)
        with self.http.stream("GET", path, params=self._params(params), timeout=timeout,
                              headers={"Accept": "text/event-stream"}) as resp:
            if resp.is_error:
                resp.read()
                raise error_for(resp)
            yield from resp.iter_lines()

    def close(self) -> None:
        self.http.close()


# --- output -----------------------------------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Plain aligned columns, as Carina's CLI printed them."""
    cells = [[("-" if v is None or v == "" else str(v)) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def as_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)


def short_time(value: Any) -> str:
    if not value:
        return "-"
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return str(value)


def cpu(value: Any) -> str:
    return f"{float(value):g}" if isinstance(value, int | float) else "-"


number = cpu  # 2.0 prints as 2, 0.5 as 0.5


def env_rows(envs: list[dict[str, Any]]) -> str:
    return table(["ID", "NAME", "ZONE", "VMS", "P_STATUS", "D_STATUS", "APP_URL"], [
        [e["envid"], e["name"], e.get("zone"), e.get("numvms", 0), str(e.get("policy_status") or "").lower(),
         str(e.get("status") or "").lower()[:21], e.get("app_url")] for e in envs])


def vm_rows(vms: list[dict[str, Any]]) -> str:
    return table(["VMID", "ENVID", "ZONE", "HOSTNAME", "IPADDR", "STATUS", "CPU"], [
        [v.get("vmid"), v["envid"], v.get("zone"), v.get("hostname"), v.get("ipaddr"), v.get("status"),
         cpu(v.get("cpu"))] for v in vms])


def job_rows(jobs: list[dict[str, Any]]) -> str:
    return table(["ID", "ENVID", "CONFIG_NAME", "TYPE", "SUBMIT_TIME", "STATUS"], [
        [j["jobid"], j["envid"], j.get("name"), j.get("type"), short_time(j.get("submit")), j.get("status")]
        for j in jobs])


def config_rows(configs: list[dict[str, Any]]) -> str:
    return table(["NAME", "TYPE", "ENDPOINT", "DESCRIPTION"],
                 [[c["name"], c.get("type"), c.get("endpoint"), c.get("description")] for c in configs])


def generic_rows(items: list[dict[str, Any]]) -> str:
    keys: list[str] = []
    for item in items:
        keys += [k for k in item if k not in keys and not isinstance(item[k], dict | list)]
    return table([k.upper() for k in keys], [[item.get(k) for k in keys] for item in items])


# --- watching ---------------------------------------------------------------------------------------------------------


def _progress_line(kind: str, data: dict[str, Any]) -> str:
    stamp = time.strftime("%H:%M:%S")
    if kind == "progress":
        state = str(data.get("job_status") or "").lower()
        where = f"job {data.get('jobid')} {state}".strip() if data.get("jobid") else ""
        return f"{stamp}  {data.get('status')}  {where}  {data.get('message') or ''}".rstrip()
    job: dict[str, Any] = data.get("job") or {}
    phase = f"job {job.get('jobid')} {job.get('type', '')} {job.get('phase') or ''}".rstrip() if job else ""
    message = data.get("info") or ((data.get("failed") or {}).get("reason")) or ""
    return f"{stamp}  {data.get('status')}  {phase}  {message}".rstrip()


def follow_events(api: Api, envid: int, jobid: int, deadline: float, emit: Callable[[str], None]) -> None:
    """Print progress from the event stream until its `end` event (raises on any stream failure)."""
    remaining = max(1.0, deadline - time.monotonic())
    params = {"until": "done", "jobid": jobid, "timeout": round(remaining, 1)}
    event, data_lines = "message", []
    last = ""
    for line in api.stream_lines(f"/api/v1/environments/{envid}/events", params, read_timeout=60):
        if line.startswith(":"):
            continue
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data_lines.append(line[5:].strip())
        elif line == "" and data_lines:
            data = json.loads("\n".join(data_lines))
            data_lines = []
            if event == "end":
                return
            text = _progress_line(event, data)
            if text[10:] != last:
                emit(text)
                last = text[10:]
            event = "message"
        if time.monotonic() > deadline:
            return


def poll_job(api: Api, envid: int, jobid: int, deadline: float, emit: Callable[[str], None]) -> dict[str, Any]:
    """Poll the job (and its environment) until the job ends or the deadline passes."""
    last = ""
    while True:
        job: dict[str, Any] = api.get(f"/api/v1/jobs/{jobid}")
        if job["status"] in TERMINAL or time.monotonic() > deadline:
            return job
        env = api.get(f"/api/v1/environments/{envid}")
        text = _progress_line("snapshot", env)
        if text[10:] != last:
            emit(text)
            last = text[10:]
        time.sleep(2)


def watch(api: Api, envid: int, jobid: int, timeout: float, show_url: bool) -> int:
    """Follow one job to its end; exit code 0 when DONE, 1 otherwise."""
    deadline = time.monotonic() + timeout
    try:
        follow_events(api, envid, jobid, deadline, out)
    except CliError as exc:
        if exc.code in (EXIT_NOT_FOUND, EXIT_USAGE):
            raise
        err(f"event stream unavailable ({exc}); polling instead")
    except (httpx.HTTPError, ValueError) as exc:
        err(f"event stream interrupted ({type(exc).__name__}); polling instead")
    job = poll_job(api, envid, jobid, deadline, out)
    status = job["status"]
    if status == "DONE":
        if show_url:
            env = api.get(f"/api/v1/environments/{envid}")
            out(f"app_url: {env.get('app_url') or '-'}")
        out(f"job {jobid} DONE")
        return EXIT_OK
    if status in TERMINAL:
        err(f"job {jobid} {status}: {job.get('reason') or 'no reason recorded'}")
        return EXIT_FAILED
    err(f"gave up waiting after {timeout:g} s: job {jobid} is still {status}")
    return EXIT_FAILED


# --- commands ---------------------------------------------------------------------------------------------------------


def _listing(args: argparse.Namespace, data: Any, render: Callable[[list[dict[str, Any]]], str]) -> int:
    out(as_json(data) if args.json else render(data))
    return EXIT_OK


RUBY = "text/x-ruby"


def _content_type(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".rb":
        return RUBY  # the gateway converts Carina's config.rb / global.rb itself (errors name line and column)
    if suffix in (".yaml", ".yml"):
        return "application/yaml"
    if suffix == ".json":
        return "application/json"
    raise CliError(EXIT_USAGE, f"don't know how to upload {path.name}: use .yaml/.yml/.json, config.rb or .vm")


def _warn(answer: dict[str, Any]) -> None:
    for warning in answer.get("warnings") or []:
        err(f"warning: {warning}")


def cmd_upload(api: Api, args: argparse.Namespace) -> int:
    path = Path(args.file).expanduser()
    suffix = path.suffix.lower()
    if args.is_global and suffix not in (".rb", ".yaml", ".yml", ".json"):
        raise CliError(EXIT_USAGE,
                       f"the scheduler configuration is global.yaml (or Carina's global.rb), not {path.name}")
    if not args.is_global and path.stem.lower() == "global" and suffix in (".rb", ".yaml", ".yml"):
        raise CliError(EXIT_USAGE, f"{path.name} looks like the scheduler's configuration: add --global")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(EXIT_USAGE, f"cannot read {path}: {exc}") from None
    if suffix == ".vm" and not args.is_global:
        answer = api.call("PUT", f"/api/v1/templates/{path.name}", content=text.encode(),
                          headers={"Content-Type": "text/plain; charset=utf-8"})
        out(as_json(answer) if args.json else f"OK: template {answer['name']} revision {answer['revision']}")
        return EXIT_OK
    kind = _content_type(path)
    target = "/api/v1/scheduler/config" if args.is_global else "/api/v1/config"
    answer = api.call("PUT", target, content=text.encode(), headers={"Content-Type": f"{kind}; charset=utf-8"})
    _warn(answer)
    if args.json:
        out(as_json(answer))
    elif args.is_global:
        pools = ", ".join(answer.get("pools") or []) or "none"
        services = ", ".join(answer.get("services") or []) or "none"
        out(f"OK: scheduler configuration revision {answer['revision']} (pools: {pools}; services: {services})")
    else:
        names = ", ".join(answer.get("environments") or []) or "none"
        out(f"OK: configuration revision {answer['revision']} (environments: {names})")
    return EXIT_OK


def cmd_create(api: Api, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"config": args.name}
    if args.request_id:
        body["request_id"] = args.request_id
    answer = api.call("POST", "/api/v1/environments", json=body)
    if args.json:
        out(as_json(answer))
    else:
        for member in answer["members"]:
            out(f"envid {member['envid']}  jobid {member['jobid']}  {member['name']}")
    if not args.watch:
        return EXIT_OK
    for member in answer["members"]:
        code = watch(api, member["envid"], member["jobid"], args.timeout, show_url=True)
        if code != EXIT_OK:
            return code
    return EXIT_OK


def _operation(path: str, method: str = "POST") -> Callable[[Api, argparse.Namespace], int]:
    def run(api: Api, args: argparse.Namespace) -> int:
        body = {"vmid": args.vmid} if getattr(args, "vmid", None) is not None else None
        answer = api.call(method, path.format(envid=args.envid), json=body)
        out(as_json(answer) if args.json else f"jobid {answer['jobid']}")
        if getattr(args, "watch", False):
            return watch(api, args.envid, answer["jobid"], args.timeout, show_url=False)
        return EXIT_OK

    return run


def cmd_remove(api: Api, args: argparse.Namespace) -> int:
    target: int = args.envid
    if target >= 0:
        return _operation("/api/v1/environments/{envid}", "DELETE")(api, args)
    answer = api.call("DELETE", f"/api/v1/groups/{-target}")
    out(as_json(answer) if args.json else "jobid " + ",".join(str(j) for j in answer["jobids"]))
    if args.watch:
        for envid, jobid in zip(answer["envids"], answer["jobids"], strict=True):
            code = watch(api, envid, jobid, args.timeout, show_url=False)
            if code != EXIT_OK:
                return code
    return EXIT_OK


def cmd_envs(api: Api, args: argparse.Namespace) -> int:
    data = api.get("/api/v1/environments", status=args.status, name=args.name,
                   active="false" if args.removed else None)
    return _listing(args, data, env_rows)


def cmd_show(api: Api, args: argparse.Namespace) -> int:
    env = api.get(f"/api/v1/environments/{args.envid}")
    if args.json:
        out(as_json(env))
        return EXIT_OK
    job = env.get("job") or {}
    failed = env.get("failed") or {}
    fields = [("ENVID", env["envid"]), ("NAME", env["name"]), ("SERVICE", env["service"]), ("ZONE", env.get("zone")),
              ("TYPE", env.get("type")), ("DESCRIPTION", env.get("description")), ("D_STATUS", env["status"]),
              ("P_STATUS", env["policy_status"]), ("APP_URL", env.get("app_url")), ("INFO", env.get("info")),
              ("GROUP", env.get("groupid")), ("ACTIVE", env.get("active")),
              ("JOB", f"{job.get('jobid')} {job.get('type')} {job.get('phase') or ''}".strip() if job else None),
              ("FAILED", f"job {failed.get('jobid')} {failed.get('type')}: {failed.get('reason')}" if failed else None)]
    for key, value in fields:
        out(f"{key + ':':<13}{'-' if value in (None, '') else value}")
    out()
    out(vm_rows(env.get("vms") or []))
    out()
    out(job_rows(env.get("jobs") or []))
    return EXIT_OK


def cmd_scheduler(what: str, render: Callable[[list[dict[str, Any]]], str]) -> Callable[[Api, argparse.Namespace], int]:
    def run(api: Api, args: argparse.Namespace) -> int:
        params = {}
        if what == "requests":
            params = {"status": args.status, "envid": args.envid}
        return _listing(args, api.get(f"/api/v1/scheduler/{what}", **params), render)

    return run


def policy_rows(decisions: list[dict[str, Any]]) -> str:
    return table(["TIME", "POLICY", "ACTION", "SOURCE", "REASON"], [
        [short_time(d.get("at")), d.get("policy"),
         f"{d.get('action')}{' (recommended)' if d.get('recommend_only') else ''}", d.get("source"), d.get("reason")]
        for d in decisions])


def cmd_policy(api: Api, args: argparse.Namespace) -> int:
    view: dict[str, Any] = api.get(f"/api/v1/environments/{args.envid}/policy", limit=args.limit)
    if args.json:
        out(as_json(view))
        return EXIT_OK
    state: dict[str, Any] = view.get("state") or {}
    direction = f" ({state['scale_direction']})" if state.get("scale_direction") else ""
    counters = (f"scale {state.get('scale_counter', 0)}{direction}, recreate {state.get('recreate_counter', 0)}, "
                f"failover {state.get('failover_counter', 0)}, failback {state.get('failback_counter', 0)}")
    last: dict[str, Any] = state.get("last_action") or {}
    policies = [name for name in ("elasticity", "availability") if view.get(name)]
    fields = [("ENVID", view["envid"]), ("NAME", view.get("name")),
              ("P_STATUS", str(view.get("policy_status") or "").lower()), ("INFO", view.get("info")),
              ("POLICIES", ", ".join(policies) or "none"), ("EVALUATED", short_time(view.get("updated_at"))),
              ("COUNTERS", counters if state else None),
              ("COOLDOWN", short_time(state.get("cooldown_until")) if state.get("cooldown_until") else None),
              ("LAST_ACTION", " ".join(str(v) for v in (last.get("action"), short_time(last.get("at"))) if v)
               if last else None)]
    for key, value in fields:
        out(f"{key + ':':<13}{'-' if value in (None, '') else value}")
    out()
    out(policy_rows(view.get("decisions") or view.get("recent") or []))
    return EXIT_OK


def services_rows(items: list[dict[str, Any]]) -> str:
    return table(["NAME", "PRIORITY_CLASS", "MEM(ALLOC/MAX)", "VCPUS(ALLOC/MAX)", "CLIENT"], [
        [s["name"], s.get("class"), f"{s.get('allocated_memory', 0)}/{s.get('max_memory', 0)}",
         f"{number(s.get('allocated_vcpus'))}/{number(s.get('max_vcpus'))}", ",".join(s.get("zones") or []) or "NONE"]
        for s in items])


def pools_rows(items: list[dict[str, Any]]) -> str:
    return table(["NAME", "ZONE", "PRIORITY_CLASS", "MEM_TOT", "MEM_AVAIL", "VCPUS_TOT", "VCPUS_AVAIL"], [
        [p["name"], p.get("zone"), p.get("class"), p.get("memory"), p.get("available_memory"), number(p.get("vcpus")),
         number(p.get("available_vcpus"))] for p in items])


def requests_rows(items: list[dict[str, Any]]) -> str:
    return table(["ID", "ENVID", "SERVICE", "MEM", "VCPUS", "STATUS", "POOL"], [
        [r["reqid"], r.get("envid"), r.get("service"), r.get("memory"), number(r.get("vcpus")), r.get("status"),
         r.get("pool")] for r in items])


def cmd_token(api: Api, args: argparse.Namespace) -> int:
    answer = api.call("POST", f"/api/v1/services/{args.name}/token")
    # The one place a token is printed: the administrator asked for a new one, and it is shown only this once.
    out(as_json(answer) if args.json else answer["token"])
    return EXIT_OK


# --- argument parsing -------------------------------------------------------------------------------------------------

# Carina's flags → (subcommand, takes a value).
CARINA_FLAGS: dict[str, tuple[str, bool]] = {
    "--upload": ("upload", True), "-U": ("upload", True),
    "--create": ("create", True), "-c": ("create", True),
    "--remove": ("remove", True), "-r": ("remove", True),
    "--scaleup": ("scaleup", True), "-u": ("scaleup", True),
    "--scaledown": ("scaledown", True), "-d": ("scaledown", True),
    "--envvms": ("envvms", True), "-k": ("envvms", True),
    "--envs": ("envs", False), "-e": ("envs", False),
    "--jobs": ("jobs", False), "-J": ("jobs", False),
    "--vms": ("vms", False), "-v": ("vms", False),
    "--configs": ("configs", False), "-o": ("configs", False),
    "--services": ("services", False), "-S": ("services", False),
    "--pools": ("pools", False), "-P": ("pools", False),
    "--requests": ("requests", False), "-R": ("requests", False),
}


VALUE_OPTIONS = ("--service", "--url")


def translate(argv: Sequence[str], commands: Sequence[str]) -> list[str]:
    """Rewrite Carina's flag form (`--create tomcat -j`) into a subcommand (`create tomcat -j`)."""
    args = list(argv)
    for position, token in enumerate(args):
        if token in commands and (position == 0 or args[position - 1] not in VALUE_OPTIONS):
            return args  # already a subcommand
        flag, _, inline = token.partition("=") if token.startswith("--") else (token, "", "")
        if flag not in CARINA_FLAGS:
            continue
        command, takes_value = CARINA_FLAGS[flag]
        rest = args[:position]
        if not takes_value:
            return [command, *rest, *args[position + 1:]]
        if inline:
            return [command, inline, *rest, *args[position + 1:]]
        if position + 1 >= len(args):
            raise CliError(EXIT_USAGE, f"{flag} needs a value")
        return [command, args[position + 1], *rest, *args[position + 2:]]
    return args


def build_parser() -> tuple[argparse.ArgumentParser, list[str]]:
    """The parser and its subcommand names."""
    def shared(parser: argparse.ArgumentParser, top: bool) -> None:
        default = None if top else argparse.SUPPRESS
        parser.add_argument("-j", "--json", action="store_true", default=False if top else argparse.SUPPRESS,
                            help="print the API's JSON answer")
        parser.add_argument("--service", default=default, help="act for this service (administrator token)")
        parser.add_argument("--url", default=default, help="gateway URL (default: CARINA_URL or the config file)")

    parser = argparse.ArgumentParser(
        prog="oneenv",
        description="Carina environment manager client.",
        epilog="Carina's flag forms are accepted too: --upload/-U FILE, --create/-c NAME, --envs/-e, --envvms/-k ID, "
               "--scaleup/-u ID, --scaledown/-d ID, --remove/-r ID (-ID: a group), --jobs/-J, --vms/-v, "
               "--configs/-o, --services/-S, --pools/-P, --requests/-R, --json/-j; "
               "--upload global.yaml --global uploads the scheduler's configuration.",
    )
    shared(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, handler: Callable[[Api, argparse.Namespace], int], help_text: str,
            watchable: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        shared(p, top=False)
        if watchable:
            p.add_argument("-w", "--watch", action="store_true", help="follow progress until the job ends")
            p.add_argument("--timeout", type=float, default=1800.0, help="seconds to watch before giving up")
        p.set_defaults(handler=handler)
        return p

    p = add("upload", cmd_upload, "upload a configuration (.yaml/.yml/.json, config.rb), a VM template (.vm), or "
            "with --global the scheduler's configuration (global.yaml, global.rb; administrator)")
    p.add_argument("file")
    p.add_argument("--global", dest="is_global", action="store_true",
                   help="the global scheduler's pools and services (administrator token)")
    p = add("create", cmd_create, "create an environment or a group", watchable=True)
    p.add_argument("name")
    p.add_argument("--request-id", help="idempotency key: repeating it does not create a second environment")
    p = add("envs", cmd_envs, "list environments")
    p.add_argument("--status", help="only environments in this deploy or policy status")
    p.add_argument("--name", help="only environments with this name")
    p.add_argument("--removed", action="store_true", help="list removed environments instead")
    add("show", cmd_show, "show one environment").add_argument("envid", type=int)
    add("envvms", lambda a, n: _listing(n, a.get(f"/api/v1/environments/{n.envid}/vms"), vm_rows),
        "list the VMs of one environment").add_argument("envid", type=int)
    add("scaleup", _operation("/api/v1/environments/{envid}/scaleup"), "add one slave", True
        ).add_argument("envid", type=int)
    add("scaledown", _operation("/api/v1/environments/{envid}/scaledown"), "remove one slave", True
        ).add_argument("envid", type=int)
    add("recover", _operation("/api/v1/environments/{envid}/recover"), "retry a failed operation", True
        ).add_argument("envid", type=int)
    p = add("recreate", _operation("/api/v1/environments/{envid}/recreate"), "replace one VM", True)
    p.add_argument("envid", type=int)
    p.add_argument("vmid", type=int)
    add("remove", cmd_remove, "remove an environment (ENVID) or a whole group (-GROUPID)", True
        ).add_argument("envid", type=int, metavar="ENVID|-GROUPID")
    p = add("jobs", lambda a, n: _listing(n, a.get("/api/v1/jobs", envid=n.envid), job_rows), "list jobs")
    p.add_argument("--envid", type=int, help="only this environment's jobs")
    add("vms", lambda a, n: _listing(n, a.get("/api/v1/vms"), vm_rows), "list every VM of the service")
    add("configs", lambda a, n: _listing(n, a.get("/api/v1/configs"), config_rows),
        "list the environments the configuration defines")
    add("services", cmd_scheduler("services", services_rows), "list the global scheduler's services")
    add("pools", cmd_scheduler("pools", pools_rows), "list the global scheduler's pools")
    p = add("requests", cmd_scheduler("requests", requests_rows), "list the global scheduler's capacity requests")
    p.add_argument("--status", choices=["PEND", "ALLOCATED", "RELEASED", "CANCELLED", "REJECTED"],
                   help="only requests in this status")
    p.add_argument("--envid", type=int, help="only this environment's requests")
    p = add("policy", cmd_policy, "show an environment's policy status, counters and recent decisions")
    p.add_argument("envid", type=int)
    p.add_argument("--limit", type=int, default=20, help="decisions to show")
    add("accounts", lambda a, n: _listing(n, a.get("/api/v1/services"), generic_rows),
        "list service accounts (administrator)")
    add("token", cmd_token, "issue or rotate a service account's token (administrator)").add_argument("name")
    return parser, list(sub.choices)


def run(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code."""
    parser, commands = build_parser()
    try:
        args = parser.parse_args(translate(list(sys.argv[1:] if argv is None else argv), commands))
    except CliError as exc:
        err(str(exc))
        return exc.code
    except SystemExit as exc:  # argparse printed the usage message
        return EXIT_OK if exc.code == 0 else EXIT_USAGE
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    api: Api | None = None
    try:
        url, token = load_connection(args.url)
        api = Api(url, token, service=args.service)
        code: int = args.handler(api, args)
        return code
    except CliError as exc:
        err(str(exc))
        return exc.code
    except KeyboardInterrupt:
        err("interrupted")
        return 130
    finally:
        if api is not None:
            api.close()


def main() -> NoReturn:
    """Console entry point (`oneenv`)."""
    sys.exit(run())


if __name__ == "__main__":
    main()
