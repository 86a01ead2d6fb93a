#!/usr/bin/env python3
"""Writes docs/server-api.openapi.json, the OpenAPI 3 document of the server API
(docs/server-api.md). The node serves the committed file at /api/v1/openapi.json; run this
after changing the API and commit both."""
import json
import pathlib

ID = {"type": "string", "pattern": "^[A-Za-z0-9._:@/=+-]{1,128}$"}
ROOM = {"$ref": "#/components/schemas/RoomId"}
USER = {"$ref": "#/components/schemas/UserId"}
KEY = {"type": "string", "minLength": 1, "maxLength": 128}
VERSION = {"type": "integer", "minimum": 0, "maximum": 9223372036854775807}
ANY = {"description": "Any JSON value (at most 32 levels deep, no lone surrogates)."}
U64 = {"type": "integer", "minimum": 0}


def obj(props, required=(), extra=False):
    out = {"type": "object", "properties": props, "additionalProperties": extra}
    if required:
        out["required"] = list(required)
    return out


PUBLISH_RESULT = obj(
    {"room": ROOM, "seq": U64, "epoch": {"type": "string"}, "duplicate": {"type": "boolean"}},
    ["room", "seq", "epoch", "duplicate"],
)
STATE_ENTRY = obj({"key": {"type": "string"}, "value": ANY, "version": U64}, ["key", "value", "version"])
METHODS = {
    "publish": (
        "publish",
        "Publish a room message shown as from the key's `from` user; replicated to other regions like any room event.",
        obj({"room": ROOM, "data": ANY, "idempotency_key": KEY}, ["room", "data"]),
        "PublishResult",
    ),
    "broadcast": (
        "publish",
        "Publish one message to several rooms (1 to 100); one result per room, in order.",
        obj({"rooms": {"type": "array", "items": ROOM, "minItems": 1, "maxItems": 100}, "data": ANY, "idempotency_key": KEY}, ["rooms", "data"]),
        obj({"results": {"type": "array", "items": {"$ref": "#/components/schemas/PublishResult"}}}, ["results"]),
    ),
    "send": (
        "publish",
        "Send a direct message to every live connection of a user in this region.",
        obj({"to": USER, "data": ANY}, ["to", "data"]),
        obj({"to": USER, "delivered": {"type": "boolean"}}, ["to", "delivered"]),
    ),
    "members": (
        "read",
        "One page of a room's members (all regions), ordered by user id.",
        obj({"room": ROOM, "after": USER, "limit": {"type": "integer", "minimum": 0, "maximum": 4294967295}}, ["room"]),
        obj({
            "room": ROOM,
            "members": {"type": "array", "items": obj({"region": {"type": "string"}, "user": USER}, ["region", "user"])},
            "next": {"type": "string", "nullable": True},
        }, ["room", "members"]),
    ),
    "presence": (
        "read",
        "Online status of up to 100 users.",
        obj({"users": {"type": "array", "items": USER, "maxItems": 100}}, ["users"]),
        obj({"users": {"type": "array", "items": obj({
            "connections": U64, "online": {"type": "boolean"},
            "regions": {"type": "array", "items": {"type": "string"}}, "user": USER,
        }, ["connections", "online", "regions", "user"])}}, ["users"]),
    ),
    "state_get": (
        "read",
        "Read one room state key, or all of them.",
        obj({"room": ROOM, "key": KEY}, ["room"]),
        obj({"room": ROOM, "entries": {"type": "array", "items": STATE_ENTRY}}, ["room", "entries"]),
    ),
    "state_set": (
        "state",
        "Write a room state key; with `if_version` a compare-and-set (0: the key must not exist).",
        obj({"room": ROOM, "key": KEY, "value": ANY, "if_version": VERSION}, ["room", "key", "value"]),
        obj({"room": ROOM, "key": {"type": "string"}, "version": U64}, ["room", "key", "version"]),
    ),
    "state_delete": (
        "state",
        "Delete a room state key; with `if_version` a compare-and-set.",
        obj({"room": ROOM, "key": KEY, "if_version": VERSION}, ["room", "key"]),
        obj({"room": ROOM, "key": {"type": "string"}, "deleted": {"type": "boolean"}}, ["room", "key", "deleted"]),
    ),
    "history": (
        "read",
        "The room's events after (`epoch`, `since`); from the start of the current epoch when both are absent. `lost` when the history no longer reaches back that far.",
        obj({"room": ROOM, "epoch": {"type": "string", "maxLength": 128}, "since": U64}, ["room"]),
        obj({
            "room": ROOM, "epoch": {"type": "string"}, "lost": {"type": "boolean"}, "seq": U64,
            "events": {"type": "array", "items": {"type": "object"}},
        }, ["room", "epoch", "lost", "events"]),
    ),
    "info": (
        "read",
        "This node and its region.",
        obj({}),
        obj({
            "region": {"type": "string"}, "node": {"type": "string"}, "connections": U64,
            "region_connections": U64, "region_nodes": U64,
        }, ["region", "node", "connections", "region_connections", "region_nodes"]),
    ),
    "disconnect": (
        "admin",
        "Close every connection of a user in this region; each client gets an `error` event (`forbidden`, \"disconnected by the server: <reason>\") and a close (1008).",
        obj({"user": USER, "reason": {"type": "string", "maxLength": 256}}, ["user"]),
        obj({"user": USER, "disconnected": {"type": "boolean"}}, ["user", "disconnected"]),
    ),
    "batch": (
        "read",
        "Several calls (at most 100) in order; each is checked against the key's scopes and answered with `result` or `error`. A batch cannot contain a batch.",
        obj({"calls": {"type": "array", "maxItems": 100, "items": obj({"method": {"type": "string"}, "params": {"type": "object"}}, ["method"])}}, ["calls"]),
        obj({"replies": {"type": "array", "items": {"oneOf": [
            obj({"result": {"type": "object"}}, ["result"]),
            obj({"error": {"$ref": "#/components/schemas/ErrorDetail"}}, ["error"]),
        ]}}}, ["replies"]),
    ),
}

ERRORS = {
    "400": "Malformed body: not a JSON object, a missing or unknown field, an invalid id or value.",
    "401": "No `Authorization: Bearer <key>` header, or an unknown key.",
    "403": "The key lacks the method's scope (or the room is full).",
    "404": "No such method.",
    "405": "Methods are called with POST.",
    "409": "A compare-and-set found another version.",
    "413": "The body is larger than `api.max_body_bytes`, or a list is too long.",
    "429": "A budget is spent; retry later.",
    "500": "A bug on the server side.",
    "503": "The regional store is unavailable; retry later.",
}

paths = {}
for name, (scope, summary, body, result) in METHODS.items():
    schema = {"$ref": f"#/components/schemas/{result}"} if isinstance(result, str) else result
    responses = {"200": {"description": "Done.", "content": {"application/json": {"schema": schema}}}}
    for status, why in ERRORS.items():
        responses[status] = {"$ref": f"#/components/responses/E{status}"}
    paths[f"/api/v1/{name}"] = {"post": {
        "operationId": name,
        "summary": summary,
        "description": f"Scope: `{scope}` (or `admin`).",
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": responses,
    }}
paths["/api/v1/openapi.json"] = {"get": {
    "operationId": "openapi",
    "summary": "This document (no key needed).",
    "security": [],
    "responses": {"200": {"description": "The OpenAPI document.", "content": {"application/json": {"schema": {"type": "object"}}}}},
}}

doc = {
    "openapi": "3.0.3",
    "info": {
        "title": "Meridian server API",
        "version": "1",
        "description": "HTTP+JSON for application backends on a region node's `api.listen`. See docs/server-api.md.",
    },
    "servers": [{"url": "/"}],
    "security": [{"bearer": []}],
    "paths": paths,
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "RoomId": ID,
            "UserId": ID,
            "PublishResult": PUBLISH_RESULT,
            "ErrorDetail": obj({"code": {"type": "string"}, "message": {"type": "string"}}, ["code", "message"]),
            "Error": obj({"error": {"$ref": "#/components/schemas/ErrorDetail"}}, ["error"]),
        },
        "responses": {
            f"E{status}": {"description": why, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            for status, why in ERRORS.items()
        },
    },
}

out = pathlib.Path(__file__).resolve().parent.parent / "docs" / "server-api.openapi.json"
out.write_text(json.dumps(doc, indent=2) + "\n")
