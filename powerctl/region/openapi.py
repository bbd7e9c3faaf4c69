"""
The OpenAPI 3 description of the REST API, served at ``/v1/openapi.json``.

Hand-written next to :mod:`powerctl.region.api` (whose test checks that
every route and method of the routing table is described here).  Built by a
function so each caller gets its own copy to mutate.
"""

from powerctl.power import ACTIONS, OP_STATES, POWER_STATES, TARGET_STATES
from powerctl.powerdoc import LABEL_PATTERN, MAX_AGENTS, MODES

VERSION = "1.0.0"


def _ref(name):
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema, description):
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses):
    """Error responses, all with the Error body."""
    text = {400: "invalid input (malformed JSON, a body that is not UTF-8 or nests deeper "
                 "than 64 levels, a NUL character in a path segment, query parameter or "
                 "string, unknown field, invalid value)",
            404: "no such node, operation or pod manager",
            405: "method not allowed", 409: "conflict (duplicate name, still in use)",
            413: "body too large", 415: "body is not JSON",
            503: "no pserv that could do it safely is connected to this region; retry",
            500: "internal error (logged under the returned id)"}
    return {str(s): _json(_ref("Error"), text[s]) for s in statuses + (500,)}


#: What the HTTP server itself answers, before any route is looked at
#: (:mod:`powerctl.region.http`), so on every operation; each closes the
#: connection after the answer.
_SERVER_LIMITS = {
    408: "the request (line, headers and body) was not complete within the request "
         "timeout (30 s by default) of its first byte; the connection is closed",
    413: "body too large: over 1 MiB, by its Content-Length or as a chunked body grows "
         "(any method); the connection is closed",
    414: "request line (method, URL, version) longer than 16384 bytes; the connection "
         "is closed",
    431: "a header line longer than 16384 bytes; the connection is closed",
}


def with_server_limits(paths):
    """Add the HTTP server's own answers (:data:`_SERVER_LIMITS`) to every operation."""
    for item in paths.values():
        for method, operation in item.items():
            if method == "parameters":
                continue
            responses = operation["responses"]
            for status, text in _SERVER_LIMITS.items():
                responses[str(status)] = _json(_ref("Error"), text)
    return paths


def _body(name, description):
    return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}


def _path_param(name, description, schema=None):
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": schema or {"type": "string"}}


def _query_param(name, description, schema=None):
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema or {"type": "string"}}


def _ts(description):
    return {"type": "string", "format": "date-time", "nullable": True,
            "description": description}


def _schemas():
    """Component schemas: resources as shown and as written."""
    agent = {
        "type": "object", "additionalProperties": False, "required": ["driver"],
        "properties": {
            "driver": {"type": "string", "description": "driver name, e.g. ipmi, snmp, "
                       "redfish, webhook, manual"},
            "pod_manager": {"type": "string", "format": "uuid",
                            "description": "take url/host, username and password from this "
                            "pod manager (its driver must be the agent's)"},
            "label": {"type": "string", "pattern": LABEL_PATTERN,
                      "description": "names the agent in outcomes and the journal (default "
                      "<index>:<driver>); unique within the node's agents"},
            "params": {"type": "object", "description": "driver parameters, validated by "
                       "the driver's schema; secrets read back as \"(set)\" and a PUT "
                       "sending \"(set)\" keeps the stored value"},
        },
    }
    power = {
        "type": "object", "additionalProperties": False, "required": ["agents"],
        "properties": {
            "mode": {"type": "string", "enum": list(MODES),
                     "default": "single",
                     "description": "single: exactly 1 agent; concurrent/sequential: "
                                    f"2-{MAX_AGENTS}"},
            "agents": {"type": "array", "minItems": 1, "maxItems": MAX_AGENTS,
                       "items": _ref("Agent")},
        },
    }
    node = {"type": "object", "properties": {
        "name": {"type": "string"}, "cluster": {"type": "string"}, "power": _ref("Power"),
        "desired_state": {"type": "string", "enum": list(TARGET_STATES), "nullable": True},
        "power_state": {"type": "string", "enum": list(POWER_STATES)},
        "responsive": {"type": "boolean"},
        "last_error": {"type": "string", "nullable": True},
        "last_queried_at": _ts("last poll or query"),
        "last_changed_at": _ts("last change of power_state"),
        "created_at": _ts("creation"), "updated_at": _ts("last configuration change"),
        "drift": {"type": "object", "nullable": True,
                  "description": "null, or the node was polled in another state than its "
                  "desired one with no operation open (cleared by a poll seeing the desired "
                  "state or by a new request)",
                  "properties": {
                      "since": _ts("first poll that saw it"),
                      "observed": {"type": "string", "enum": list(TARGET_STATES)},
                      "desired": {"type": "string", "enum": list(TARGET_STATES)},
                      "polls": {"type": "integer",
                                "description": "consecutive polls that saw it"}}},
    }}
    node_create = {"type": "object", "additionalProperties": False,
                   "required": ["name", "cluster", "power"], "properties": {
                       "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._:@-]*$"},
                       "cluster": {"type": "string"}, "power": _ref("Power")}}
    node_update = {"type": "object", "additionalProperties": False, "properties": {
        "name": {"type": "string", "description": "must equal the node's name if given"},
        "cluster": {"type": "string"}, "power": _ref("Power"),
        "requester": {"type": "string", "description": "who changes it"}}}
    op_state = {"type": "string", "enum": list(OP_STATES)}
    op = {"type": "object", "properties": {
        "id": {"type": "integer"}, "node": {"type": "string"},
        "action": {"type": "string", "enum": list(ACTIONS)},
        "state": op_state,
        "coalesced_into": {"type": "integer", "nullable": True},
        "superseded_by": {"type": "integer", "nullable": True},
        "error": {"type": "string", "nullable": True},
        "requested_at": _ts("request"), "started_at": _ts("start on a pserv"),
        "finished_at": _ts("end"),
        "pserv": {"type": "string", "nullable": True},
        "agent": {"type": "string", "nullable": True},
        "requester": {"type": "string"},
        "observed_state": {"type": "string", "nullable": True,
                           "enum": [*POWER_STATES, None]},
        "cancelled_by": {"type": "string", "nullable": True,
                         "description": "who cancelled it (operator, or a node's deletion)"},
        "confirmed_by": {"type": "string", "nullable": True,
                         "description": "who confirmed a manual operation"},
    }}
    requested = {"type": "object", "properties": dict(op["properties"], **{
        "live_pserv": {"type": "boolean",
                       "description": "whether a pserv of the node's cluster was live "
                       "(connected, heartbeating) when the request was journalled; "
                       "absent only if the node was deleted meanwhile"},
        "warning": {"type": "string",
                    "description": "present when live_pserv is false: no live pserv "
                    "serves the node's cluster, so the operation stays pending until one "
                    "connects (it is not refused)"}})}
    requester = {"type": "string", "description": "who asks (default: api:<client address>)"}
    cancel_request = {"type": "object", "additionalProperties": False, "properties": {
        "requester": requester,
        "force": {"type": "boolean", "default": False,
                  "description": "journal it cancelled even when the pserv running it cannot "
                  "be reached (the device's state is then unknown)"}}}
    confirm_request = {"type": "object", "additionalProperties": False,
                       "required": ["state"], "properties": {
                           "state": {"type": "string", "enum": list(TARGET_STATES),
                                     "description": "the state the operator saw"},
                           "requester": requester}}
    power_request = {"type": "object", "additionalProperties": False, "required": ["action"],
                     "properties": {
                         "action": {"type": "string",
                                    "enum": list(ACTIONS)},
                         "requester": {"type": "string", "description": "who asks "
                                       "(default: api:<client address>)"}}}
    pod_manager = {"type": "object", "properties": {
        "uuid": {"type": "string", "format": "uuid"}, "name": {"type": "string"},
        "driver": {"type": "string"}, "username": {"type": "string"},
        "password_set": {"type": "boolean", "description": "the password is write-only"},
        "url": {"type": "string"},
        "status": {"type": "string", "enum": ["online", "offline"]},
        "description": {"type": "string"},
        "created_at": _ts("creation"), "updated_at": _ts("last edit"),
    }}
    writable = {"name": {"type": "string"}, "url": {"type": "string"},
                "username": {"type": "string"},
                "password": {"type": "string", "writeOnly": True},
                "description": {"type": "string"}}
    pod_manager_create = {"type": "object", "additionalProperties": False,
                          "required": ["name", "url"],
                          "properties": dict(writable, driver={"type": "string",
                                                               "default": "redfish"})}
    pod_manager_update = {"type": "object", "additionalProperties": False,
                          "properties": dict(writable)}
    pserv = {"type": "object", "properties": {
        "name": {"type": "string"}, "cluster": {"type": "string"},
        "version": {"type": "string"}, "region": {"type": "string", "nullable": True},
        "connected": {"type": "boolean"}, "live": {"type": "boolean"},
        "connected_at": _ts("last connection"), "last_heartbeat": _ts("last heartbeat"),
        "actions_in_flight": {"type": "integer"}}}
    cluster = {"type": "object", "properties": {
        "name": {"type": "string"}, "created_at": _ts("creation"),
        "nodes": {"type": "integer"}, "running_ops": {"type": "integer"},
        "actions_in_flight": {"type": "integer"},
        "status": {"type": "string", "enum": ["online", "offline"]},
        "pservs": {"type": "array", "items": _ref("Pserv")},
        "drift_policy": {"type": "string", "enum": ["report", "enforce"],
                         "description": "what a drifted node gets: only reported, or a "
                         "'reconcile' operation to its desired state after two consecutive "
                         "polls saw the drift"},
        "drifted_nodes": {"type": "integer"}}}
    cluster_update = {"type": "object", "additionalProperties": False,
                      "required": ["drift_policy"], "properties": {
                          "drift_policy": {"type": "string", "enum": ["report", "enforce"]}}}
    error = {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["code", "message"], "properties": {
            "code": {"type": "string"}, "message": {"type": "string"},
            "id": {"type": "string", "description": "error id (500 only), as logged"}}}}}
    return {"Agent": agent, "Power": power, "Node": node, "NodeCreate": node_create,
            "NodeUpdate": node_update, "PowerOp": op, "PowerRequest": power_request,
            "PowerRequested": requested,
            "CancelRequest": cancel_request, "ConfirmRequest": confirm_request,
            "PodManager": pod_manager, "PodManagerCreate": pod_manager_create,
            "PodManagerUpdate": pod_manager_update, "Pserv": pserv, "Cluster": cluster,
            "ClusterUpdate": cluster_update, "Error": error}


def _array(name):
    return {"type": "array", "items": _ref(name)}


def _activity_schemas():
    """What ``GET /v1/activity`` answers (see :func:`powerctl.region.activity.shape`)."""
    since = _ts("when it started, on the region's clock (null while it waits)")
    age = {"type": "number", "nullable": True, "description": "seconds since it started"}
    op_id = {"type": "integer", "description": "operation id (journal)"}
    action = {"type": "string", "enum": list(ACTIONS)}
    live_action = {"type": "object", "nullable": True, "properties": {
        "operation_id": op_id, "action": action,
        "joined": {"type": "array", "items": op_id,
                   "description": "operations that coalesced into it (at most 50)"},
        "joined_total": {"type": "integer"}, "since": since, "age": age,
        "queued_since": _ts("when its request arrived (for a waiting action: waiting since)"),
        "queued_age": {"type": "number", "nullable": True,
                       "description": "seconds since its request arrived"},
        "stopping": {"type": "boolean", "description": "superseded or cancelled, the device "
                     "is not quiet yet"},
        "slot": {"type": "string", "nullable": True, "enum": ["held", "waiting", None],
                 "description": "on a pserv with priority slots: holds one, waits for one"},
        "slot_position": {"type": "integer", "description": "place in the slot queue"}}}
    slot_entry = {"type": "object", "properties": {
        "node": {"type": "string"}, "operation_id": op_id, "action": action,
        "priority": {"type": "integer", "description": "higher is served first"},
        "since": _ts("waiting (or holding) since"), "age": age,
        "position": {"type": "integer", "description": "place in the queue, from 1"}}}
    pserv = {"type": "object", "properties": {
        "pserv": {"type": "string"}, "cluster": {"type": "string"},
        "error": {"type": "string", "nullable": True,
                  "description": "why it did not answer in time (timeout, ...)"},
        "complete": {"type": "boolean", "description": "false: only part of its answer"},
        "nodes": {"type": "array", "items": {"type": "object", "properties": {
            "node": {"type": "string"}, "running": _ref("LiveAction"),
            "waiting": _ref("LiveAction"), "query": _ref("LiveAction")}}},
        "slots": {"type": "object", "nullable": True, "properties": {
            "size": {"type": "integer"}, "busy": {"type": "integer"},
            "free": {"type": "integer"},
            "waiting": {"type": "integer", "description": "waiting for a slot, in all"},
            "holding": {"type": "array", "items": _ref("SlotEntry")},
            "queue": {"type": "array", "items": _ref("SlotEntry"),
                      "description": "in the order they will be served"}}}}}
    activity = {"type": "object", "properties": {
        "generated_at": _ts("when the region answered"),
        "node": {"type": "string", "nullable": True},
        "timeout": {"type": "number", "description": "seconds each pserv had to answer"},
        "pservs": {"type": "array", "items": _ref("ActivityPserv")},
        "totals": {"type": "object", "additionalProperties": {"type": "integer"}}}}
    return {"Activity": activity, "ActivityPserv": pserv, "LiveAction": live_action,
            "SlotEntry": slot_entry}


def _paths():
    node_name = _path_param("name", "node name")
    pm_uuid = _path_param("uuid", "pod manager uuid", {"type": "string", "format": "uuid"})
    return {
        "/v1/nodes": {
            "get": {"summary": "List nodes", "operationId": "listNodes",
                    "parameters": [_query_param("cluster", "only this cluster")],
                    "responses": {"200": _json(_array("Node"), "nodes by name"),
                                  **_errors(400)}},
            "post": {"summary": "Add a node", "operationId": "createNode",
                     "requestBody": _body("NodeCreate", "the node"),
                     "responses": {"201": _json(_ref("Node"), "created"),
                                   **_errors(400, 409, 413, 415)}},
        },
        "/v1/nodes/{name}": {
            "parameters": [node_name],
            "get": {"summary": "One node", "operationId": "getNode",
                    "responses": {"200": _json(_ref("Node"), "the node"), **_errors(400, 404)}},
            "put": {"summary": "Change a node's cluster and/or power configuration",
                    "operationId": "updateNode", "requestBody": _body("NodeUpdate", ""),
                    "responses": {"200": _json(_ref("Node"), "updated"),
                                  **_errors(400, 404, 413, 415)},
                    "description": "A new cluster or power configuration is handed over: "
                    "the pserv driving the node stops (its work is cancelled) and forgets "
                    "it before the change is committed."},
            "delete": {"summary": "Remove a node: its pserv stops driving it first (bounded "
                       "wait for quiet); its open operations end cancelled; its journal stays",
                       "operationId": "deleteNode",
                       "parameters": [_query_param("requester", "who deletes it")],
                       "responses": {"204": {"description": "deleted"}, **_errors(400, 404)}},
        },
        "/v1/nodes/{name}/power": {
            "parameters": [node_name],
            "post": {"summary": "Request a power action (sets the desired state for "
                     "on/off/soft-off/cycle; last request wins)",
                     "operationId": "requestPower", "requestBody": _body("PowerRequest", ""),
                     "responses": {"202": _json(_ref("PowerRequested"),
                                                 "journalled, pending; says whether a live "
                                                 "pserv can run it"),
                                   **_errors(400, 404, 413, 415)}},
        },
        "/v1/power_ops": {
            "get": {"summary": "The journal, newest first", "operationId": "listPowerOps",
                    "parameters": [
                        _query_param("node", "only this node"),
                        _query_param("state", "only this state",
                                     _schemas()["PowerOp"]["properties"]["state"]),
                        _query_param("limit", "at most this many (1-1000, default 100)",
                                     {"type": "integer", "minimum": 1, "maximum": 1000}),
                        _query_param("before", "only ids below this (paging)",
                                     {"type": "integer"})],
                    "responses": {"200": _json(_array("PowerOp"), "operations"),
                                  **_errors(400)}},
        },
        "/v1/power_ops/{op_id}": {
            "parameters": [_path_param("op_id", "operation id", {"type": "integer"})],
            "get": {"summary": "One operation", "operationId": "getPowerOp",
                    "responses": {"200": _json(_ref("PowerOp"), "the operation"),
                                  **_errors(400, 404)}},
        },
        "/v1/power_ops/{op_id}/cancel": {
            "parameters": [_path_param("op_id", "operation id", {"type": "integer"})],
            "post": {"summary": "Cancel an open operation through the pserv's registry "
                     "(answered once the device is quiet)", "operationId": "cancelPowerOp",
                     "requestBody": dict(_body("CancelRequest", ""), required=False),
                     "responses": {"200": _json(_ref("PowerOp"), "cancelled"),
                                   **_errors(400, 404, 409, 413, 415, 503)}},
        },
        "/v1/power_ops/{op_id}/confirm": {
            "parameters": [_path_param("op_id", "operation id", {"type": "integer"})],
            "post": {"summary": "Confirm a manual operation: the operator saw the node "
                     "reach this state", "operationId": "confirmPowerOp",
                     "requestBody": _body("ConfirmRequest", ""),
                     "responses": {"202": _json(_ref("PowerOp"), "confirmed; it completes"),
                                   **_errors(400, 404, 409, 413, 415, 503)}},
        },
        "/v1/pod_managers": {
            "get": {"summary": "List pod managers", "operationId": "listPodManagers",
                    "responses": {"200": _json(_array("PodManager"), "by name"),
                                  **_errors(400)}},
            "post": {"summary": "Add a pod manager", "operationId": "createPodManager",
                     "requestBody": _body("PodManagerCreate", ""),
                     "responses": {"201": _json(_ref("PodManager"), "created"),
                                   **_errors(400, 409, 413, 415)}},
        },
        "/v1/pod_manager/{uuid}": {
            "parameters": [pm_uuid],
            "get": {"summary": "One pod manager", "operationId": "getPodManager",
                    "responses": {"200": _json(_ref("PodManager"), "it"), **_errors(400, 404)}},
            "put": {"summary": "Change a pod manager", "operationId": "updatePodManager",
                    "requestBody": _body("PodManagerUpdate", ""),
                    "responses": {"200": _json(_ref("PodManager"), "updated"),
                                  **_errors(400, 404, 409, 413, 415)}},
            "delete": {"summary": "Remove a pod manager no node uses",
                       "operationId": "deletePodManager",
                       "responses": {"204": {"description": "deleted"}, **_errors(400, 404, 409)}},
        },
        "/v1/clusters": {
            "get": {"summary": "Clusters, their pservs and activity",
                    "operationId": "listClusters",
                    "responses": {"200": _json(_array("Cluster"), "by name"), **_errors(400)}},
        },
        "/v1/clusters/{name}": {
            "parameters": [_path_param("name", "cluster name")],
            "put": {"summary": "Set a cluster's drift policy (report, the default, or "
                    "enforce)", "operationId": "updateCluster",
                    "requestBody": _body("ClusterUpdate", ""),
                    "responses": {"200": _json(_ref("Cluster"), "updated"),
                                  **_errors(400, 404, 413, 415)}},
        },
        "/v1/activity": {
            "get": {"summary": "What the connected pservs run now, what waits, who joined, "
                    "since when, and their priority slots (each pserv answers within "
                    "a few seconds or is shown with an error)",
                    "operationId": "getActivity",
                    "parameters": [_query_param("node", "only this node")],
                    "responses": {"200": _json(_ref("Activity"), "the live view"),
                                  **_errors(400, 404),
                                  "503": _json(_ref("Error"), "the region cannot ask "
                                               "its pservs")}},
        },
        "/v1/openapi.json": {
            "get": {"summary": "This document", "operationId": "getOpenApi",
                    "responses": {"200": {"description": "OpenAPI 3 document",
                                          "content": {"application/json": {}}}}},
        },
    }


def document():
    """A fresh copy of the OpenAPI document."""
    from powerctl.region.openapi_auth import secured  # issue 10

    doc = secured({
        "openapi": "3.0.3",
        "info": {"title": "powerctl region API", "version": VERSION,
                 "description": "Nodes, power requests, the power-operation journal, "
                 "pod managers and clusters. Errors are {\"error\": {\"code\", "
                 "\"message\"}}. Passwords are write-only. Any request may also be "
                 "answered 408 (not complete within 30 s of its first byte), 413 (body "
                 "over 1 MiB), 414 (request line over 16384 bytes) or 431 (a header line "
                 "that long) by the HTTP server, which then closes the connection; a "
                 "connection idle for 60 s between requests is closed without an answer."},
        "paths": _paths(),
        "components": {"schemas": {**_schemas(), **_activity_schemas()}},
    })
    with_server_limits(doc["paths"])
    return doc
