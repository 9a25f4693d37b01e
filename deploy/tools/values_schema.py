"""Generates deploy/helm/carina/values.schema.json from the services' settings classes.

Where this sits: the chart maps `<service>.settings.<camelCase>` onto `CARINA_<SERVICE>_<SNAKE_CASE>`. The schema's
`settings` blocks are built here from the pydantic settings classes (types, bounds, enums, patterns), so
`helm lint --strict` rejects a misspelt or out-of-range setting before a pod ever starts, and the schema cannot
drift from the code: tests/deploy/test_chart.py fails when the checked-in file differs from this output.

    python -m deploy.tools.values_schema > deploy/helm/carina/values.schema.json
"""

from __future__ import annotations

import json
import sys
from typing import Any

from pydantic_settings import BaseSettings

from libs.common.settings import CommonSettings
from services.callback.settings import Settings as CallbackSettings
from services.envmgr.settings import Settings as EnvmgrSettings
from services.gateway.settings import GatewaySettings
from services.policy.settings import Settings as PolicySettings
from services.provisioner.settings import Settings as ProvisionerSettings
from services.scheduler.settings import Settings as SchedulerSettings

SETTINGS: dict[str, type[BaseSettings]] = {
    "envmgr": EnvmgrSettings,
    "scheduler": SchedulerSettings,
    "provisioner": ProvisionerSettings,
    "policy": PolicySettings,
    "gateway": GatewaySettings,
    "callback": CallbackSettings,
}

# Settings the chart sets itself (connections, secrets, listen addresses, probe port); not user values.
CHART_MANAGED: dict[str, set[str]] = {
    "common": {"nats_url", "nats_user", "nats_password", "mongodb_url", "probe_host", "token_secret", "dev_mode"},
    "service": {"probe_port"},
    "gateway": {"host", "port", "admin_token", "dev_service", "dev_token"},
}

_KEEP = ("type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "enum", "pattern", "minLength",
         "maxLength", "const")


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _field_schema(prop: dict[str, Any]) -> dict[str, Any]:
    if "anyOf" in prop:  # Optional[...]: keep the non-null branch (null would mean "unset": leave the key out)
        prop = next(p for p in prop["anyOf"] if p.get("type") != "null")
    out = {k: prop[k] for k in _KEEP if k in prop}
    if "description" in prop:
        out["description"] = prop["description"]
    return out


def settings_schema(model: type[BaseSettings], skip: set[str]) -> dict[str, Any]:
    props = model.model_json_schema()["properties"]
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {camel(name): _field_schema(prop) for name, prop in props.items() if name not in skip},
    }


def _existing_secret(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    props: dict[str, Any] = {"enabled": {"type": "boolean"}, "name": {"type": "string"}}
    props.update(extra or {})
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["enabled", "name"],
        "properties": props,
        # An enabled reference must name the Secret.
        "if": {"properties": {"enabled": {"const": True}}},
        "then": {"properties": {"name": {"type": "string", "minLength": 1,
                                         "description": "name of the existing Secret (required when enabled)"}}},
    }


STR: dict[str, Any] = {"type": "string"}
OBJ: dict[str, Any] = {"type": "object"}
ARR: dict[str, Any] = {"type": "array"}
RESOURCES: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["requests"],
    "properties": {"requests": {"type": "object", "minProperties": 1}, "limits": OBJ},
}


def service_schema(service: str, model: type[BaseSettings]) -> dict[str, Any]:
    skip = CHART_MANAGED["service"] | CHART_MANAGED.get(service, set())
    props: dict[str, Any] = {
        "replicas": {"type": "integer", "minimum": 1},
        "resources": RESOURCES,
        "settings": settings_schema(model, skip),
        "pdb": {
            "type": "object", "additionalProperties": False, "required": ["enabled"],
            "properties": {"enabled": {"type": "boolean"}, "maxUnavailable": {"type": "integer", "minimum": 1}},
        },
        "autoscaling": {
            "type": "object", "additionalProperties": False, "required": ["enabled"],
            "properties": {
                "enabled": {"type": "boolean"},
                "minReplicas": {"type": "integer", "minimum": 1},
                "maxReplicas": {"type": "integer", "minimum": 1},
                "targetCPUUtilizationPercentage": {"type": "integer", "minimum": 1, "maximum": 100},
            },
        },
        "nodeSelector": OBJ,
        "tolerations": ARR,
        "affinity": OBJ,
        "podAnnotations": OBJ,
    }
    if service == "gateway":
        props["service"] = {
            "type": "object", "additionalProperties": False, "required": ["type", "port"],
            "properties": {"type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                           "port": {"type": "integer", "minimum": 1, "maximum": 65535}, "annotations": OBJ},
        }
        props["ingress"] = {
            "type": "object", "additionalProperties": False, "required": ["enabled"],
            "properties": {
                "enabled": {"type": "boolean"}, "className": STR, "host": STR, "path": STR, "annotations": OBJ,
                "tls": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"enabled": {"type": "boolean"}, "secretName": STR},
                    "if": {"properties": {"enabled": {"const": True}}},
                    "then": {"properties": {"secretName": {"type": "string", "minLength": 1}}},
                },
            },
            "if": {"properties": {"enabled": {"const": True}}},
            "then": {"properties": {"host": {"type": "string", "minLength": 1}}},
        }
    return {"type": "object", "additionalProperties": False, "required": ["replicas", "resources"],
            "properties": props}


def schema() -> dict[str, Any]:
    port = {"type": "integer", "minimum": 1, "maximum": 65535}
    probe = {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}}
    props: dict[str, Any] = {
        "nameOverride": STR,
        "fullnameOverride": STR,
        "global": OBJ,
        "image": {
            "type": "object", "additionalProperties": False, "required": ["repository"],
            "properties": {"repository": {"type": "string", "minLength": 1}, "tag": STR,
                           "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]}},
        },
        "imagePullSecrets": ARR,
        "publicUrl": {"type": "string", "pattern": "^https?://[^\\s/]+",
                      "description": "base URL guests call back (CARINA_URL)"},
        "common": {
            "type": "object", "additionalProperties": False,
            "properties": {"settings": settings_schema(CommonSettings, CHART_MANAGED["common"])},
        },
        "secrets": {
            "type": "object", "additionalProperties": False, "required": ["existingSecret"],
            "properties": {"existingSecret": _existing_secret(), "tokenSecret": STR, "gatewayAdminToken": STR},
        },
        "nats": {
            "type": "object", "additionalProperties": False, "required": ["url", "auth", "bundled"],
            "properties": {
                "url": {"type": "string", "pattern": "^(nats|tls)://"},
                "auth": {
                    "type": "object", "additionalProperties": False, "required": ["enabled", "existingSecret"],
                    "properties": {"enabled": {"type": "boolean"}, "existingSecret": _existing_secret(),
                                   "passwords": {"type": "object", "additionalProperties": {"type": "string"}}},
                },
                "bundled": {
                    "type": "object", "additionalProperties": False, "required": ["enabled", "replicas"],
                    "properties": {
                        "enabled": {"type": "boolean"},
                        "image": {"type": "object", "additionalProperties": False,
                                  "properties": {"repository": {"type": "string", "minLength": 1},
                                                 "tag": {"type": "string", "minLength": 1},
                                                 "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]}}},
                        "replicas": {"type": "integer", "minimum": 1, "maximum": 5},
                        "syncAlways": {"type": "boolean"},
                        "storeDir": {"type": "string", "pattern": "^/"},
                        "storage": {"type": "object", "additionalProperties": False,
                                    "properties": {"size": {"type": "string", "minLength": 1},
                                                   "storageClassName": STR}},
                        "maxFileStore": {"type": "string", "minLength": 1},
                        "antiAffinity": {"enum": ["soft", "hard", "none"]},
                        "resources": RESOURCES,
                        "nodeSelector": OBJ,
                        "tolerations": ARR,
                    },
                },
            },
        },
        "mongodb": {
            "type": "object", "additionalProperties": False, "required": ["url", "existingSecret"],
            "properties": {
                # No credentials here: this URL lands in a ConfigMap (use existingSecret or urlWithCredentials).
                "url": {"type": "string", "pattern": "^mongodb(\\+srv)?://", "not": {"pattern": "@"}},
                "existingSecret": _existing_secret({"key": {"type": "string", "minLength": 1}}),
                "urlWithCredentials": STR,
            },
        },
        "probes": {
            "type": "object", "additionalProperties": False, "required": ["port"],
            "properties": {"port": port, "liveness": probe, "readiness": probe},
        },
        "metrics": {"type": "object", "additionalProperties": False,
                    "properties": {"podAnnotations": {"type": "boolean"}}},
        "podSecurityContext": OBJ,
        "securityContext": OBJ,
        "podAntiAffinity": {"enum": ["soft", "hard", "none"]},
        "terminationGracePeriodSeconds": {"type": "integer", "minimum": 0},
    }
    for service, model in SETTINGS.items():
        props[service] = service_schema(service, model)
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "Carina chart values",
        "type": "object",
        "additionalProperties": False,
        "required": ["image", "publicUrl", "secrets", "nats", "mongodb", "probes", *SETTINGS],
        "properties": props,
    }


def render() -> str:
    return json.dumps(schema(), indent=2) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
