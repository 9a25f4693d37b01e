"""Configuration and template uploads (the gateway owns the `configs` and `config_history` collections).

An upload is validated completely before anything is stored (`libs.common.envconfig`): a rejected configuration
answers 422 with every problem and leaves the stored one untouched. Accepted configurations are versioned; the
previous revision moves to `config_history`. Credentials are stored but never returned: reads go through `redact`.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request, status
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from libs.common.carina_import import convert_config_rb
from libs.common.db import Doc, Store
from libs.common.envconfig import parse_service_config, redact, validate_service_config
from libs.common.errors import ConflictError
from libs.common.messages import utcnow
from libs.common.operations import CONFIG_ID
from services.gateway import schemas
from services.gateway.deps import COMMON_ERRORS, CallerDep, Gateway, GatewayDep, ServiceQuery, acting_service, errors
from services.gateway.uploads import CONFIG_TYPES, MULTIPART, RUBY_TYPES, TEMPLATE_TYPES, media_type, read_upload
from services.gateway.views import config_entries

log = logging.getLogger("carina.gateway.configs")

router = APIRouter(prefix="/api/v1", tags=["configuration"])

TEMPLATE_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,60}\.vm$"
# A Carina config.rb assigns Ruby hashes to these constants; no YAML document starts that way.
_CONFIG_RB = re.compile(r"^\s*(ENDPOINT|TEMPLATE|ENVIRONMENT)\s*=\s*\{", re.MULTILINE)


def is_config_rb(text: str, content_type: str = "", filename: str | None = None) -> bool:
    """Whether an uploaded configuration is Carina's config.rb rather than YAML/JSON."""
    if content_type in RUBY_TYPES or (filename or "").lower().endswith(".rb"):
        return True
    return bool(_CONFIG_RB.search(text))


def upload_body(types: tuple[str, ...], description: str) -> dict[str, Any]:
    content: dict[str, Any] = {t: {"schema": {"type": "string"}} for t in types if t != "application/json"}
    if "application/json" in types:
        content["application/json"] = {"schema": {"type": "object"}}
    content[MULTIPART] = {"schema": {"type": "object", "required": ["upload"],
                                     "properties": {"upload": {"type": "string", "format": "binary"}}}}
    return {"requestBody": {"required": True, "description": description, "content": content}}


async def vm_file_names(store: Store, service: str) -> set[str]:
    return {str(d["name"]) async for d in store.configs.find({"service": service, "kind": "vm"}, {"name": 1})}


async def store_config(store: Store, service: str, document: Doc) -> int:
    """Save a validated configuration as the next revision; the previous one goes to `config_history`."""
    config_id = CONFIG_ID.format(service=service)
    for _ in range(20):
        current = await store.configs.find_one({"_id": config_id})
        now = utcnow()
        if current is None:
            try:
                await store.configs.insert_one({"_id": config_id, "service": service, "kind": "config",
                                                "name": "config", "revision": 1, "doc": document,
                                                "uploaded_at": now, "version": 0})
                return 1
            except DuplicateKeyError:
                continue  # a concurrent first upload won: become revision 2
        revision = int(current.get("revision", 1))
        # History first, keyed by revision: repeating it after a lost race writes the same document again.
        await store["config_history"].replace_one(
            {"_id": f"{service}:{revision}"},
            {"service": service, "revision": revision, "doc": current["doc"],
             "uploaded_at": current.get("uploaded_at")},
            upsert=True)
        if await store.cas_update("configs", config_id, int(current.get("version", 0)),
                                  {"doc": document, "revision": revision + 1, "uploaded_at": now}):
            return revision + 1
    raise ConflictError(f"configuration of {service}: too many concurrent uploads")


async def accept_config(gw: Gateway, service: str, text: str, ruby: bool) -> schemas.ConfigUploaded:
    """Validate an uploaded configuration (YAML/JSON, or config.rb converted first) and store it as a new revision.

    Raises:
        ValidationFailed: every problem (a config.rb syntax error names its line and column); nothing is stored.
    """
    vm_files = await vm_file_names(gw.store, service)
    warnings: list[str] = []
    if ruby:
        converted = convert_config_rb(text)
        warnings = list(converted.warnings)
        config, document = validate_service_config(converted.native, vm_files=vm_files)
    else:
        config, document = parse_service_config(text, vm_files=vm_files)
    revision = await store_config(gw.store, service, document)
    log.info("configuration stored", extra={"service_name": service, "revision": revision, "carina": ruby})
    return schemas.ConfigUploaded(service=service, revision=revision, environments=sorted(config.environments),
                                  warnings=warnings)


async def store_template(store: Store, service: str, name: str, text: str) -> schemas.TemplateUploaded:
    """Save an OpenNebula template text under `name` (a new revision if it exists)."""
    doc = await store.configs.find_one_and_update(
        {"_id": f"{service}:vm:{name}"},
        {"$set": {"service": service, "kind": "vm", "name": name, "text": text, "uploaded_at": utcnow()},
         "$inc": {"revision": 1}},
        upsert=True, return_document=ReturnDocument.AFTER)
    assert doc is not None
    log.info("template stored", extra={"service_name": service, "template": name, "revision": doc["revision"]})
    return schemas.TemplateUploaded(service=service, name=name, revision=int(doc["revision"]), size=len(text.encode()))


@router.put(
    "/config",
    response_model=schemas.ConfigUploaded,
    summary="Upload the service's configuration (YAML, JSON, or Carina's config.rb)",
    responses=errors(*COMMON_ERRORS, 404, 413, 415),
    openapi_extra=upload_body(CONFIG_TYPES, "the configuration document (see docs/configuration.md); a config.rb "
                                           "(Content-Type text/x-ruby, or recognised by its ENDPOINT/TEMPLATE/"
                                           "ENVIRONMENT constants) is converted first"),
)
async def upload_config(request: Request, gw: GatewayDep, caller: CallerDep,
                        service: ServiceQuery = None) -> schemas.ConfigUploaded:
    svc = acting_service(caller, service)
    text = await read_upload(request, CONFIG_TYPES, gw.settings.max_config_bytes)
    return await accept_config(gw, svc, text, ruby=is_config_rb(text, media_type(request)))


@router.get("/config", response_model=schemas.StoredConfig, summary="The stored configuration (credentials redacted)",
            responses=errors(*COMMON_ERRORS, 404))
async def get_config(gw: GatewayDep, caller: CallerDep, service: ServiceQuery = None) -> schemas.StoredConfig:
    svc = acting_service(caller, service)
    doc = await gw.store.configs.find_one({"_id": CONFIG_ID.format(service=svc)})
    if doc is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"service '{svc}' has no configuration yet")
    return schemas.StoredConfig(service=svc, revision=int(doc.get("revision", 1)), uploaded_at=doc.get("uploaded_at"),
                                config=redact(doc["doc"]))


@router.get("/configs", response_model=list[schemas.ConfigEntry],
            summary="Environments and groups the configuration defines (Carina's configs listing)",
            responses=errors(*COMMON_ERRORS, 404))
async def list_configs(gw: GatewayDep, caller: CallerDep, service: ServiceQuery = None) -> list[schemas.ConfigEntry]:
    svc = acting_service(caller, service)
    doc = await gw.store.configs.find_one({"_id": CONFIG_ID.format(service=svc)})
    return config_entries(doc["doc"]) if doc is not None else []


@router.put(
    "/templates/{name}",
    response_model=schemas.TemplateUploaded,
    summary="Upload an OpenNebula template text (.vm)",
    responses=errors(*COMMON_ERRORS, 404, 413, 415),
    openapi_extra=upload_body(TEMPLATE_TYPES, "the OpenNebula template text, with %PLACEHOLDERS%"),
)
async def upload_template(
    request: Request,
    gw: GatewayDep,
    caller: CallerDep,
    name: Annotated[str, Path(pattern=TEMPLATE_NAME, description="file name, ending in .vm")],
    service: ServiceQuery = None,
) -> schemas.TemplateUploaded:
    svc = acting_service(caller, service)
    text = await read_upload(request, TEMPLATE_TYPES, gw.settings.max_template_bytes)
    return await store_template(gw.store, svc, name, text)


@router.get("/templates", response_model=list[schemas.TemplateEntry], summary="Uploaded .vm templates",
            responses=errors(*COMMON_ERRORS, 404))
async def list_templates(gw: GatewayDep, caller: CallerDep,
                         service: ServiceQuery = None) -> list[schemas.TemplateEntry]:
    svc = acting_service(caller, service)
    rows = []
    async for doc in gw.store.configs.find({"service": svc, "kind": "vm"}).sort("name", 1):
        rows.append(schemas.TemplateEntry(name=str(doc["name"]), revision=int(doc.get("revision", 1)),
                                          uploaded_at=doc.get("uploaded_at"),
                                          size=len(str(doc.get("text", "")).encode())))
    return rows
