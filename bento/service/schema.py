"""What /docs.json says: every answer a client can get, not only BentoML's own. BentoML documents 400, 404 and 500
for its endpoints; the guard and the admission limit also answer 401 (API key), 413 (size), 415 (body type) and
503 (busy), each a JSON object whose `error` names the problem, so a client (or schemathesis) reading the schema
finds every status it can be sent."""

from __future__ import annotations

import os

from pydantic import BaseModel, Field

from bento.service.guard import API_KEY_ENV, OPEN_PATHS, OTHER_KIND

REFUSED = {401: "missing or wrong X-API-Key (when the service runs with BENTO_API_KEY)",
           403: "GET /recent_inputs without the operator's X-Operator-Key (the value of BENTO_OPERATOR_KEY where the "
                "service runs; off when none is set)",
           408: "the request body stalled for body_timeout_seconds between two of its parts",
           413: "request body above max_request_mb",
           415: "a body of a type this endpoint does not take",
           503: "the service is busy (max_concurrent_requests in progress): retry after the Retry-After seconds"}


class Refusal(BaseModel):
    error: str = Field(description="what is wrong with the request")


def fastapi_responses() -> dict:
    """For the service's FastAPI routes (GET /metadata, /recent_inputs, POST /predict_npy)."""
    return {status: {"description": description, "model": Refusal} for status, description in REFUSED.items()}


def refusal_responses() -> dict:
    """The refusals, as BentoML documents each of its API endpoints' errors: {"error": "..."} bodies."""
    from _bentoml_sdk.service import openapi
    from bentoml._internal.service.openapi.specification import MediaType, Reference, Response

    return {status: Response(description=description, content={"application/json": MediaType(
        schema=Reference(openapi.REF_TEMPLATE.format(model="InvalidArgument")))}) for status, description in REFUSED.items()}


def key_required() -> bool:
    return bool(os.environ.get(API_KEY_ENV))


def routes_of_this_model(bentoml_routes):
    """BentoML's API routes for /docs.json, bodies marked required (each is: no body is a 415) and the endpoint for
    the other kind of model left out (/predict_rows of an image model, /predict_image of a table model: 404)."""
    def routes_of_this_model(service) -> dict:
        found = bentoml_routes(service)
        for path in OTHER_KIND:
            found.pop(path, None)
        for item in found.values():
            if isinstance(item.post, dict) and "requestBody" in item.post:
                item.post["requestBody"]["required"] = True
        return found

    return routes_of_this_model


def with_security(as_dict):
    """With an API key set, the schema says so (an apiKey security scheme, header X-API-Key): the Swagger UI at /
    then has an Authorize button, and sends the key with every request it tries."""
    def with_security(spec) -> dict:
        found = as_dict(spec)
        found.setdefault("components", {})["securitySchemes"] = {
            "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                       "description": f"the value of {API_KEY_ENV} where the service runs"}}
        found["security"] = [{"ApiKey": []}]
        for path in OPEN_PATHS:  # health, metrics and the docs need no key
            for operation in found.get("paths", {}).get(path, {}).values():
                operation["security"] = []
        return found

    return with_security
