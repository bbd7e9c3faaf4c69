"""
The OpenAPI 3 description of the REST API, served at ``/v1/openapi.json``.

Hand-written next to :mod:`powerctl.region.api` (whose test checks that
every route and method of the routing table is described here).  Built by a
function so each caller gets its own copy to mutate.
"""

from powerctl.power import ACTIONS, OP_STATES, POWER_STATES, TARGET_STATES
from powerctl.powerdoc import LABEL_PATTERN, MAX_AGENTS, MAX_LEVELS, MODES
from powerctl.region import paging

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


def page_params():
    """``limit`` and ``after``: the keyset paging every list takes (:mod:`powerctl.region.paging`)."""
    return [
        _query_param("limit", f"at most this many (1-{paging.MAX_LIMIT}, default "
                     f"{paging.DEFAULT_LIMIT})",
                     {"type": "integer", "minimum": 1, "maximum": paging.MAX_LIMIT}),
        _query_param("after", "the opaque cursor of the page to answer, as the previous "
                     "page's Link header (rel=\"next\") gave it; 400 if malformed",
                     {"type": "string", "minLength": 1, "maxLength": paging.MAX_CURSOR})]


def paged_json(schema, description):
    """A 200 of a list: one page, and a ``Link`` header while more pages follow."""
    answer = _json(schema, description + "; one page (keyset): a Link header "
                   "<...&after=CURSOR>; rel=\"next\" is present while more follow")
    answer["headers"] = {"Link": {
        "description": "the next page, as <url>; rel=\"next\" (absent on the last page)",
        "schema": {"type": "string"}}}
    return answer


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
    flat_power = {
        "type": "object", "additionalProperties": False, "required": ["agents"],
        "description": "the flat form, converted on read: single = one level of one agent, "
                       "concurrent = one level of all agents, sequential = one level per agent",
        "properties": {
            "mode": {"type": "string", "enum": list(MODES),
                     "default": "single",
                     "description": "single: exactly 1 agent; concurrent/sequential: "
                                    f"2-{MAX_AGENTS}"},
            "agents": {"type": "array", "minItems": 1, "maxItems": MAX_AGENTS,
                       "items": _ref("Agent")},
        },
    }
    level = {
        "type": "object", "additionalProperties": False, "required": ["agents"],
        "properties": {
            "agents": {"type": "array", "minItems": 1, "maxItems": MAX_AGENTS,
                       "items": _ref("Agent"),
                       "description": "every agent (device) of the level must act"},
            "trusted_unverified": {"type": "boolean", "default": False,
                                   "description": "a fence may use this level although its "
                                   "off cannot be verified by a query"},
        },
    }
    levels_power = {
        "type": "object", "additionalProperties": False, "required": ["levels"],
        "description": "a fencing topology: levels tried in order (level 1 first) until one "
                       f"succeeds; at most {MAX_AGENTS} agents in all",
        "properties": {"levels": {"type": "array", "minItems": 1, "maxItems": MAX_LEVELS,
                                  "items": level}},
    }
    power = {"oneOf": [levels_power, flat_power]}
    bound = {"type": "number", "nullable": True, "description": "seconds; null: unbounded"}
    bounds = {"type": "object", "nullable": True,
              "description": "derived time bounds per action (off, on, cycle, fence), from "
                             "the drivers' settings: per device, per level and in total",
              "additionalProperties": {"type": "object", "properties": {
                  "action": {"type": "string"}, "total": bound,
                  "levels": {"type": "array", "items": {"type": "object", "properties": {
                      "level": {"type": "integer"}, "bound": bound,
                      "devices": {"type": "array", "items": {"type": "object", "properties": {
                          "agent": {"type": "string"}, "bound": bound}}}}}}}}}
    node = {"type": "object", "properties": {
        "name": {"type": "string"}, "cluster": {"type": "string"}, "power": _ref("Power"),
        "desired_state": {"type": "string", "enum": list(TARGET_STATES), "nullable": True},
        "power_state": {"type": "string", "enum": list(POWER_STATES)},
        "responsive": {"type": "boolean"},
        "last_error": {"type": "string", "nullable": True},
        "last_queried_at": _ts("last poll or query"),
        "last_changed_at": _ts("last change of power_state"),
        "created_at": _ts("creation"), "updated_at": _ts("last configuration change"),
        "bounds": bounds,
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
        "circuit": {"type": "string", "nullable": True,
                    "description": "the electrical circuit it is on (null: none); all "
                    "nodes of a circuit share one owning pserv, which keeps the circuit's "
                    "budget of power-ons"},
    }}
    circuit_name = {"type": "string", "nullable": True,
                    "pattern": "^[A-Za-z0-9][A-Za-z0-9._:@-]*$",
                    "description": "the electrical circuit it is on; null or \"\" for none"}
    circuit = {"type": "object", "properties": {
        "name": {"type": "string"},
        "max_on": {"type": "integer", "nullable": True,
                   "description": "power-ons at once (null: no budget set)"},
        "spacing": {"type": "number", "nullable": True,
                    "description": "seconds between the starts of two power-ons"},
        "nodes": {"type": "integer", "description": "nodes naming it"}}}
    circuit_update = {"type": "object", "additionalProperties": False,
                      "required": ["max_on"], "properties": {
                          "max_on": {"type": "integer", "minimum": 1, "maximum": 100000},
                          "spacing": {"type": "number", "minimum": 0, "maximum": 3600,
                                      "default": 0}}}
    node_create = {"type": "object", "additionalProperties": False,
                   "required": ["name", "cluster", "power"], "properties": {
                       "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._:@-]*$"},
                       "cluster": {"type": "string"}, "power": _ref("Power"),
                       "circuit": circuit_name}}
    node_update = {"type": "object", "additionalProperties": False, "properties": {
        "name": {"type": "string", "description": "must equal the node's name if given"},
        "cluster": {"type": "string"}, "power": _ref("Power"), "circuit": circuit_name,
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
        "detail": {"type": "object", "nullable": True,
                   "description": "what the power topology reported: the acting level, its "
                   "devices with the state each reported (or its error), a warning for a "
                   "degraded success, the levels that failed before (failed_levels), or the "
                   "fence a coalesced fence joined (coalesced_fence)"},
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
        "drifted_nodes": {"type": "integer"},
        "circuits": {"type": "array", "items": _ref("Circuit")}}}
    cluster_update = {"type": "object", "additionalProperties": False,
                      "required": ["drift_policy"], "properties": {
                          "drift_policy": {"type": "string", "enum": ["report", "enforce"]}}}
    error = {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["code", "message"], "properties": {
            "code": {"type": "string"}, "message": {"type": "string"},
            "id": {"type": "string", "description": "error id (500 only), as logged"}}}}}
    bulk_request = {"type": "object", "additionalProperties": False, "required": ["action"],
                    "properties": {
                        "action": {"type": "string", "enum": list(ACTIONS)},
                        "nodes": {"type": "array", "minItems": 1, "maxItems": 10000,
                                  "uniqueItems": True, "items": {"type": "string"},
                                  "description": "these nodes (not with cluster)"},
                        "cluster": {"type": "string",
                                    "description": "every node of this cluster (not with "
                                    "nodes)"},
                        "confirm": {"type": "boolean", "default": False,
                                    "description": "go past the blast-radius guard"},
                        "dry_run": {"type": "boolean", "default": False,
                                    "description": "answer the plan, journal nothing"},
                        "requester": requester}}
    bulk_item = {"type": "object", "properties": {
        "node": {"type": "string"}, "cluster": {"type": "string"},
        "power_state": {"type": "string", "enum": list(POWER_STATES)},
        "desired_state": {"type": "string", "enum": [*TARGET_STATES, None], "nullable": True},
        "target": {"type": "string", "enum": [*TARGET_STATES, None], "nullable": True,
                   "description": "the desired state the action sets (null: query)"},
        "changes": {"type": "boolean", "description": "whether it would change the node"}}}
    bulk_plan = {"type": "object", "properties": {
        "action": {"type": "string", "enum": list(ACTIONS)}, "dry_run": {"type": "boolean"},
        "nodes": {"type": "array", "items": bulk_item},
        "count": {"type": "integer"}, "changing": {"type": "integer"},
        "clusters": {"type": "object", "additionalProperties": {
            "type": "object", "properties": {"selected": {"type": "integer"},
                                             "total": {"type": "integer"}}}},
        "share": {"type": "number"},
        "needs_confirm": {"type": "boolean",
                          "description": "without confirm, the request would be refused"}}}
    bulk_accepted = {"type": "object", "properties": {
        "action": {"type": "string", "enum": list(ACTIONS)}, "count": {"type": "integer"},
        "ids": {"type": "array", "items": {"type": "integer"}},
        "operations": {"type": "array", "items": {"type": "object", "properties": {
            "id": {"type": "integer"}, "node": {"type": "string"},
            "action": {"type": "string", "enum": list(ACTIONS)}, "state": op_state}}}}}
    auto_fence_fields = {
        "enabled": {"type": "boolean", "default": False},
        "grace": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 1e9, "default": 300,
                  "description": "seconds a node must have been non-responsive"},
        "window": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 1e9, "default": 600,
                   "description": "seconds of the storm window and of the rate limit"},
        "storm_share": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 1,
                        "default": 0.5, "description": "more of the cluster than this "
                        "becoming non-responsive within the window is a storm: no fencing"},
        "max_per_window": {"type": "integer", "minimum": 1, "maximum": 1000000,
                           "default": 5},
        "soft_url": {"type": "string", "nullable": True, "pattern": "^https?://",
                     "maxLength": 2048, "description": "POSTed {node, cluster, reason} "
                     "first; the node is fenced soft_timeout seconds later if still down"},
        "soft_timeout": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 1e9,
                         "default": 30}}
    auto_fence = {"type": "object", "properties": auto_fence_fields}
    auto_fence_update = {"type": "object", "additionalProperties": False,
                         "properties": auto_fence_fields}
    return {"BulkRequest": bulk_request, "BulkPlan": bulk_plan, "BulkAccepted": bulk_accepted,
            "Agent": agent, "Power": power, "Node": node, "NodeCreate": node_create,
            "NodeUpdate": node_update, "PowerOp": op, "PowerRequest": power_request,
            "PowerRequested": requested,
            "CancelRequest": cancel_request, "ConfirmRequest": confirm_request,
            "PodManager": pod_manager, "PodManagerCreate": pod_manager_create,
            "PodManagerUpdate": pod_manager_update, "Pserv": pserv, "Cluster": cluster,
            "ClusterUpdate": cluster_update, "Circuit": circuit,
            "CircuitUpdate": circuit_update, "AutoFence": auto_fence,
            "AutoFenceUpdate": auto_fence_update, "Error": error}


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
                    "parameters": [
                        _query_param("cluster", "only this cluster"),
                        _query_param("power_state", "only nodes in this power state",
                                     {"type": "string", "enum": list(POWER_STATES)}),
                        _query_param("desired_state", "only nodes with this desired state",
                                     {"type": "string", "enum": list(TARGET_STATES)}),
                        _query_param("responsive", "only responsive (true) or "
                                     "non-responsive (false) nodes",
                                     {"type": "string", "enum": ["true", "false"]}),
                        *page_params()],
                    "responses": {"200": paged_json(_array("Node"), "nodes by name"),
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
                     "on/off/soft-off/cycle/fence; last request wins).  A fence is refused "
                     "(409 fence_refused) when no power level of the node can verify it off; "
                     "a fence within fence_reuse_seconds of the node's last successful one, "
                     "nothing switched on since, answers that fence's result at once "
                     "(succeeded, coalesced_into)",
                     "operationId": "requestPower", "requestBody": _body("PowerRequest", ""),
                     "responses": {"202": _json(_ref("PowerRequested"),
                                                 "journalled, pending; says whether a live "
                                                 "pserv can run it"),
                                   **_errors(400, 404, 409, 413, 415)}},
        },
        "/v1/power": {
            "post": {"summary": "Request one power action on many nodes: the nodes named, or "
                     "every node of a cluster (nodes carry no tags), one operation each, "
                     "journalled in one transaction",
                     "operationId": "requestBulkPower", "requestBody": _body("BulkRequest", ""),
                     "description": "An off, soft-off or cycle selecting more than the "
                     "region's bulk_confirm_share (default 20 %) of a cluster's nodes is "
                     "refused with 409 unless confirm is true. dry_run answers the plan "
                     "(200) and journals nothing.",
                     "responses": {"202": _json(_ref("BulkAccepted"), "journalled, pending"),
                                   "200": _json(_ref("BulkPlan"), "dry run: the plan"),
                                   **_errors(400, 404, 409, 413, 415)}},
        },
        "/v1/power_ops": {
            "get": {"summary": "The journal, newest first", "operationId": "listPowerOps",
                    "parameters": [
                        _query_param("node", "only this node"),
                        _query_param("state", "only this state",
                                     _schemas()["PowerOp"]["properties"]["state"]),
                        _query_param("cluster", "only operations of this cluster's nodes"),
                        *page_params(),
                        _query_param("before", "only ids below this (paging by id; not "
                                     "with after)", {"type": "integer", "minimum": 1})],
                    "responses": {"200": paged_json(_array("PowerOp"), "operations"),
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
                    "parameters": page_params(),
                    "responses": {"200": paged_json(_array("PodManager"), "by name"),
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
        "/v1/clusters/{name}/circuits": {
            "parameters": [_path_param("name", "cluster name")],
            "get": {"summary": "The cluster's circuits: budgets and the nodes naming them",
                    "operationId": "listCircuits",
                    "responses": {"200": _json(_array("Circuit"), "by name"),
                                  **_errors(400, 404)}},
        },
        "/v1/clusters/{name}/circuits/{circuit}": {
            "parameters": [_path_param("name", "cluster name"),
                           _path_param("circuit", "circuit name")],
            "put": {"summary": "Set a circuit's budget: at most max_on power-ons at once, "
                    "starts spacing seconds apart", "operationId": "setCircuit",
                    "requestBody": _body("CircuitUpdate", ""),
                    "responses": {"200": _json(_ref("Circuit"), "set"),
                                  **_errors(400, 404, 413, 415)}},
            "delete": {"summary": "Remove a circuit's budget", "operationId": "deleteCircuit",
                       "responses": {"204": {"description": "removed"},
                                     **_errors(400, 404)}},
        },
        "/v1/clusters/{name}/auto-fence": {
            "parameters": [_path_param("name", "cluster name")],
            "get": {"summary": "The cluster's automatic fencing policy",
                    "operationId": "getAutoFence",
                    "responses": {"200": _json(_ref("AutoFence"), "the policy"),
                                  **_errors(400, 404)}},
            "put": {"summary": "Set the cluster's automatic fencing policy: non-responsive "
                    "nodes fenced after their grace, none in a storm, at most "
                    "max_per_window per window", "operationId": "setAutoFence",
                    "requestBody": _body("AutoFenceUpdate", ""),
                    "responses": {"200": _json(_ref("AutoFence"), "set"),
                                  **_errors(400, 404, 413, 415)}},
            "delete": {"summary": "Turn the cluster's automatic fencing off",
                       "operationId": "deleteAutoFence",
                       "responses": {"204": {"description": "off"}, **_errors(400, 404)}},
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
        "/v1/events": {
            "get": {"summary": "The live event stream (Server-Sent Events): every operation "
                    "state change and every node power, responsiveness or desired-state "
                    "change, from every region, in the order they committed",
                    "description": _EVENTS_DESCRIPTION,
                    "operationId": "streamEvents",
                    "parameters": [
                        _query_param("after", "replay every event numbered above this "
                                     "first (the Last-Event-ID header wins when both "
                                     "are given); without either, from now",
                                     {"type": "integer", "minimum": 0}),
                        _query_param("cluster", "only this cluster's events (a token "
                                     "scoped to clusters only ever gets its own)"),
                        {"name": "Last-Event-ID", "in": "header", "required": False,
                         "description": "resume after this event number (what "
                         "EventSource sends when it reconnects)",
                         "schema": {"type": "integer", "minimum": 0}}],
                    "responses": {"200": {
                        "description": "an endless text/event-stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                        **_errors(400)}},
        },
        "/v1/openapi.json": {
            "get": {"summary": "This document", "operationId": "getOpenApi",
                    "responses": {"200": {"description": "OpenAPI 3 document",
                                          "content": {"application/json": {}}}}},
        },
    }


_EVENTS_DESCRIPTION = """\
Each event is `id: <seq>`, `event: op|node`, `data: <JSON>`; `seq` only
grows, and a client that resumes after the last `id` it saw (header
`Last-Event-ID` or `?after=`) gets exactly what it missed, replayed from
the journal, then the live events, with no gap and nothing twice.
`op` data: `{seq, type, at, cluster, op: {id, node, action, state,
requester, error, pserv, agent, observed_state, coalesced_into,
superseded_by, cancelled_by, requested_at, started_at, finished_at}}`;
`node` data: `{seq, type, at, cluster, change: created|updated|deleted,
node: {name, cluster, power_state, responsive, desired_state, last_error,
last_changed_at}}`.  An `event: lost` says the resume point is older than
the journal keeps (`event_retention`).  Comment lines (`: keep-alive`,
every 15 s when idle; `: live after N` once the replay is over) carry no
event.  A client that does not read is disconnected once 10,000 events
wait for it; it resumes from its `Last-Event-ID`.
"""


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
