"""
The security part of the OpenAPI document (issue 10): the bearer token
scheme, each operation's 401/403/429 answers, and the token and audit
routes.
"""

from powerctl.region import auth
from powerctl.region.openapi import page_params, paged_json

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema, description):
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _obj(properties, required=()):
    schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


_TOKEN = _obj({
    "id": {"type": "integer"}, "name": {"type": "string"},
    "role": {"type": "string", "enum": list(auth.ROLES)},
    "clusters": {"type": "array", "items": {"type": "string"}, "nullable": True,
                 "description": "the clusters it is confined to; null for every cluster"},
    "created_at": {"type": "string", "format": "date-time"},
    "created_by": {"type": "string"},
    "revoked_at": {"type": "string", "format": "date-time", "nullable": True},
    "revoked_by": {"type": "string", "nullable": True},
    "revoked": {"type": "boolean"}})
_AUDIT = _obj({
    "id": {"type": "integer"}, "at": {"type": "string", "format": "date-time"},
    "actor": {"type": "string", "description": "the token's name"},
    "source": {"type": "string", "description": "the client's address"},
    "method": {"type": "string"}, "path": {"type": "string"},
    "status": {"type": "integer"}, "outcome": {"type": "string"}})


_LOCKOUT = _obj({
    "id": {"type": "integer"}, "node": {"type": "string"}, "cluster": {"type": "string"},
    "agent": {"type": "integer", "description": "the agent's index in the node's power"},
    "failures": {"type": "integer"}, "reason": {"type": "string"},
    "pserv": {"type": "string", "description": "the pserv that stopped trying"},
    "locked_at": {"type": "string", "format": "date-time"}})


def _errors(*statuses):
    text = {400: "invalid input", 404: "no such token (lock-outs: no such node)", 409: "a live token has that name",
            413: "body too large", 415: "body is not JSON", 500: "internal error"}
    return {str(s): _json(_ERROR, text[s]) for s in statuses + (500,)}


def _paths():
    return {
        "/v1/tokens": {
            "get": {"summary": "API tokens (never their secret)", "operationId": "listTokens",
                    "parameters": [{"name": "revoked", "in": "query", "required": False,
                                    "schema": {"type": "string", "enum": ["true", "false"]},
                                    "description": "true: revoked ones too"},
                                   *page_params()],
                    "responses": {"200": paged_json({"type": "array", "items": _TOKEN},
                                                    "by id"),
                                  **_errors(400)}},
            "post": {"summary": "Create a token; the answer's token is shown this once",
                     "operationId": "createToken",
                     "requestBody": {"required": True, "content": {"application/json": {
                         "schema": _obj({"name": {"type": "string"},
                                         "role": {"type": "string",
                                                  "enum": list(auth.ROLES)},
                                         "clusters": {"type": "array", "nullable": True,
                                                      "items": {"type": "string"}}},
                                        ("name", "role"))}}},
                     "responses": {"201": _json(dict(_TOKEN, properties={
                         **_TOKEN["properties"], "token": {"type": "string"}}), "created"),
                         **_errors(400, 409, 413, 415)}},
        },
        "/v1/tokens/{token_id}": {
            "parameters": [{"name": "token_id", "in": "path", "required": True,
                            "schema": {"type": "string"}, "description": "token id"}],
            "delete": {"summary": "Revoke a token (at once, on every region)",
                       "operationId": "revokeToken",
                       "responses": {"200": _json(_TOKEN, "revoked"), **_errors(404)}},
        },
        "/v1/lockouts": {
            "get": {"summary": "BMC credentials locked out: no pserv tries them until they "
                               "change or an operator clears them",
                    "operationId": "listLockouts",
                    "parameters": [{"name": "cluster", "in": "query", "required": False,
                                    "schema": {"type": "string"},
                                    "description": "only this cluster's nodes"}],
                    "responses": {"200": _json({"type": "array", "items": _LOCKOUT},
                                               "by node and agent"), **_errors(400)}},
        },
        "/v1/lockouts/{name}": {
            "parameters": [{"name": "name", "in": "path", "required": True,
                            "schema": {"type": "string"}, "description": "node name"}],
            "delete": {"summary": "Clear a node's lock-out (operator; audited): its pserv "
                                  "tries the credentials again at once",
                       "operationId": "clearLockout",
                       "responses": {"200": _json(_obj({
                           "node": {"type": "string"},
                           "cleared": {"type": "array", "items": _LOCKOUT}}), "cleared"),
                           **_errors(400, 404)}},
        },
        "/v1/audit": {
            "get": {"summary": "The audit trail of changes, newest first (read only)",
                    "operationId": "listAudit",
                    "parameters": [
                        {"name": n, "in": "query", "required": False, "description": d,
                         "schema": {"type": t}}
                        for n, t, d in (("before", "integer", "ids below this one (not "
                                         "with after)"),
                                        ("actor", "string", "only this token name"))]
                    + page_params(),
                    "responses": {"200": paged_json({"type": "array", "items": _AUDIT},
                                                    "newest first"), **_errors(400)}},
        },
    }


def secured(document):
    """``document`` with the token routes, the scheme and every operation's guard answers."""
    document["paths"].update(_paths())
    components = document.setdefault("components", {})
    components["securitySchemes"] = {"token": {
        "type": "http", "scheme": "bearer",
        "description": "an API token (powerctl admin token create, or POST /v1/tokens)"}}
    document["security"] = [{"token": []}]
    for item in document["paths"].values():
        for method, operation in item.items():
            if method == "parameters":
                continue
            responses = operation.setdefault("responses", {})
            responses.setdefault("401", _json(_ERROR, "no token, or an unknown or revoked "
                                              "one (nothing was written)"))
            responses.setdefault("403", _json(_ERROR, "the token's role or clusters do not "
                                              "allow this (nothing was written)"))
            responses.setdefault("429", _json(_ERROR, "too many failed authentications "
                                              "from this address"))
    return document
