"""The OpenAPI 3.1 document of the agency API and of the webhooks we send agencies, served at `/openapi.json`.

Request bodies come from the same pydantic models the handlers validate with (dispatch/api.py), so the document
cannot drift from what is accepted; answers and webhook payloads are described here beside the code that
builds them (`DispatchApi._summary`, `CaseBook.agency_payload`). The tests check the running server against it
with schemathesis.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from .bodies import AnswerBody, DisputeBody, RatingBody
from .policy import ANSWER_KINDS

REF = "#/components/schemas/{model}"
NULLABLE_STRING = {"type": ["string", "null"]}
NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}


def _model(model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, Any]:
    """The model's JSON Schema under components (its nested models beside it); returns a $ref to it."""
    schema = model.model_json_schema(ref_template=REF)
    schemas.update(schema.pop("$defs", {}))
    schemas[model.__name__] = schema
    return {"$ref": REF.format(model=model.__name__)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json({"$ref": REF.format(model="Error")}, description)


CASE_SUMMARY = {
    "type": "object", "additionalProperties": False,
    "required": ["case_id", "incident_id", "topic", "category", "district", "state", "forwarded_at",
                 "expected_completion"],
    "properties": {
        "case_id": {"type": "string"}, "incident_id": {"type": "string"}, "topic": {"type": "string"},
        "category": NULLABLE_STRING, "district": NULLABLE_STRING, "state": {"type": "string"},
        "forwarded_at": {"type": "string", "format": "date-time"}, "expected_completion": NULLABLE_TIME,
        "detail": {"$ref": REF.format(model="CaseDetail")},
        "role": {"type": "string", "enum": ["lead", "supporting"],
                 "description": "in the list: whether the agency holds the case or supports its lead"},
    },
}

CASE_DETAIL = {
    "description": "What the dispatch to the agency carried (the `data` of its webhook payload).",
    "type": "object",
    "required": ["case_id", "incident_id", "agency", "topic", "text", "received_at", "reporter", "answer_url"],
    "properties": {
        "case_id": {"type": "string"}, "incident_id": {"type": "string"}, "agency": {"type": "string"},
        "topic": {"type": "string"}, "topic_name": {"type": "string"}, "category": NULLABLE_STRING,
        "district": NULLABLE_STRING, "district_name": NULLABLE_STRING,
        "place": {"type": "object", "description": "street, ward, house number, landmark, GPS, as found"},
        "text": {"type": "string"}, "subject": NULLABLE_STRING, "channel": {"type": "string"},
        "received_at": {"type": "string", "format": "date-time"},
        "reporter": {
            "type": "object", "required": ["confidential"],
            "description": "Name and contacts, or only {\"confidential\": true} for an agency without the right "
                           "(Art. 9 of the regulation).",
            "properties": {"confidential": {"type": "boolean"}, "name": NULLABLE_STRING, "phone": NULLABLE_STRING,
                           "email": NULLABLE_STRING, "address": NULLABLE_STRING}},
        "attachments": {"type": "array", "items": {
            "type": "object", "required": ["sha256", "content_type", "size"],
            "properties": {"sha256": {"type": "string"}, "content_type": {"type": "string"},
                           "size": {"type": "integer"}, "filename": NULLABLE_STRING}}},
        "deadlines": {"type": "array", "items": {"type": "object"}},
        "return_reason": NULLABLE_STRING,
        "previous_agencies": {"type": "array", "items": {"type": "string"}},
        "recurrence": {"type": ["object", "null"]},
        "dispute": {"type": "object", "description": "case.disputed: the reporter's text, when, the previous result"},
        "role": {"type": "string", "description": "case.support, and case.disputed to a supporter: `supporting`"},
        "lead_agency": {"type": "string", "description": "case.support, case.disputed to a supporter: the lead"},
        "merged_into_case": {"type": "string", "description": "case.merged: the case that carries the incident"},
        "merged_into_incident": {"type": "string"},
        "answer_url": {"type": "string", "format": "uri"},
    },
}

WEBHOOK_EVENTS = {
    "case.created": "A new case for the agency: the incident was routed to it.",
    "case.rerouted": "A case returned or reassigned by another agency now lies with this one.",
    "case.disputed": "The reporter says the result does not fix the problem: the case is open again.",
    "case.merged": "The case was merged into another incident's case.",
    "case.support": "A coordinated case: this agency supports the lead agency, with its own clocks and answers.",
}


def webhook_payload_schema() -> dict[str, Any]:
    return {
        "type": "object", "required": ["type", "timestamp", "data"],
        "properties": {"type": {"type": "string", "enum": list(WEBHOOK_EVENTS)},
                       "timestamp": {"type": "string", "format": "date-time"},
                       "data": {"$ref": REF.format(model="CaseDetail")}},
    }


def openapi_document(base_url: str) -> dict[str, Any]:
    schemas: dict[str, Any] = {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
        "CaseSummary": CASE_SUMMARY, "CaseDetail": CASE_DETAIL, "WebhookPayload": webhook_payload_schema(),
    }
    answer = _model(AnswerBody, schemas)
    body = schemas["AnswerBody"]
    body["properties"]["kind"]["enum"] = list(ANSWER_KINDS)
    # The handler's own rule beyond the model: a returned case says why (in `reason` or `note`).
    text = {"type": "string", "minLength": 1}
    body["if"] = {"properties": {"kind": {"const": "returned"}}, "required": ["kind"]}
    body["then"] = {"anyOf": [{"required": ["reason"], "properties": {"reason": text}},
                              {"required": ["note"], "properties": {"note": text}}]}
    rating, dispute = _model(RatingBody, schemas), _model(DisputeBody, schemas)
    case_id = {"name": "case_id", "in": "path", "required": True, "schema": {"type": "string"}}
    token = {"name": "token", "in": "path", "required": True,
             "description": "the case token from the reporter's lookup link", "schema": {"type": "string"}}
    unauthorised = _error("missing or invalid token")
    webhook_headers = {name: {"required": True, "schema": {"type": "string"}, "description": text} for name, text in (
        ("webhook-id", "the message id: the same on every retry, receivers de-duplicate on it"),
        ("webhook-timestamp", "seconds since the epoch of this attempt"),
        ("webhook-signature", "Standard Webhooks: `v1,<base64 HMAC-SHA256 of id.timestamp.body>`, one per active "
                              "secret, space-separated"))}
    return {
        "openapi": "3.1.0",
        "info": {"title": "1022 routing daemon: agency API and webhooks", "version": "1",
                 "description": "Agencies read the cases they hold and answer them with their bearer token; "
                                "reporters follow a case by the token of their lookup link. Cases reach agencies "
                                "as signed webhooks (at least once, same `webhook-id` on every retry) or email."},
        "servers": [{"url": base_url.rstrip("/") or "/"}],
        "components": {"schemas": schemas,
                       "securitySchemes": {"agencyToken": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/api/v1/agency/cases": {"get": {
                "operationId": "listCases", "summary": "the open cases the agency holds",
                "security": [{"agencyToken": []}],
                "responses": {"200": _json({"type": "object", "required": ["cases"], "properties": {
                    "cases": {"type": "array", "items": {"$ref": REF.format(model="CaseSummary")}}}}, "the cases"),
                    "401": unauthorised}}},
            "/api/v1/agency/cases/{case_id}": {"get": {
                "operationId": "getCase", "summary": "one case with what its dispatch carried",
                "security": [{"agencyToken": []}], "parameters": [case_id],
                "responses": {"200": _json({"$ref": REF.format(model="CaseSummary")}, "the case"),
                              "401": unauthorised,
                              "404": _error("no such case (another agency's case looks the same)")}}},
            "/api/v1/agency/cases/{case_id}/answers": {"post": {
                "operationId": "answerCase", "summary": "an answer: acknowledged, verified, in progress, resolved...",
                "security": [{"agencyToken": []}], "parameters": [
                    case_id, {"name": "Idempotency-Key", "in": "header", "required": False,
                              "description": "a repeat with the same key changes nothing",
                              "schema": {"type": "string", "minLength": 1, "maxLength": 255}}],
                "requestBody": {"required": True, "content": {"application/json": {"schema": answer}}},
                "responses": {
                    "201": _json({"type": "object", "required": ["case_id", "state", "agency", "duplicate"],
                                  "properties": {"case_id": {"type": "string"}, "state": {"type": "string"},
                                                 "agency": {"type": "string"}, "duplicate": {"type": "boolean"}}},
                                 "applied"),
                    "200": _json({"type": "object"}, "a repeat of an answer already applied"),
                    "401": unauthorised, "403": _error("not this agency's to do"),
                    "404": _error("no such case"), "409": _error("the case's state does not allow this answer"),
                    "422": _error("the body is not a valid answer, or its Idempotency-Key was used for another")}}},
            "/api/v1/cases/{token}": {"get": {
                "operationId": "publicCase", "summary": "a case as its reporter follows it (no personal data)",
                "parameters": [token],
                "responses": {"200": _json({"type": "object", "required": ["reference", "state", "timeline"],
                                            "properties": {"reference": {"type": "string"},
                                                           "state": {"type": "string"},
                                                           "timeline": {"type": "array"}}}, "the case"),
                              "404": _error("no such case")}}},
            "/api/v1/cases/{token}/rating": {"post": {
                "operationId": "rateCase", "summary": "the reporter's rating, once, after the result",
                "parameters": [token],
                "requestBody": {"required": True, "content": {"application/json": {"schema": rating}}},
                "responses": {"201": _json({"type": "object"}, "recorded"), "404": _error("no such case"),
                              "409": _error("not rateable now"), "422": _error("score must be 1..5")}}},
            "/api/v1/cases/{token}/dispute": {"post": {
                "operationId": "disputeCase", "summary": "the reporter says the result does not fix it",
                "parameters": [token],
                "requestBody": {"required": True, "content": {"application/json": {"schema": dispute}}},
                "responses": {"201": _json({"type": "object"}, "the case is open again"),
                              "404": _error("no such case"), "409": _error("outside the dispute window"),
                              "422": _error("a reason is required")}}},
        },
        "webhooks": {event: {"post": {
            "operationId": "webhook_" + event.replace(".", "_"), "summary": text,
            "parameters": [{"name": name, "in": "header", **spec} for name, spec in webhook_headers.items()],
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": REF.format(model="WebhookPayload")}}}},
            "responses": {"2XX": {"description": "received; anything else is retried until the deadline"}}}}
            for event, text in WEBHOOK_EVENTS.items()},
    }
