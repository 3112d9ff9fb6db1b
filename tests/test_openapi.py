"""The OpenAPI document a frontend developer builds from."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if path.startswith("/api/v1")
    ]


def _schema(spec: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    name = reference["$ref"].rsplit("/", 1)[-1]
    schema: dict[str, Any] = spec["components"]["schemas"][name]
    return schema


def test_every_api_operation_names_its_errors(app: FastAPI) -> None:
    spec = app.openapi()
    for path, method, operation in _operations(spec):
        codes = set(operation["responses"])
        assert {"422", "503"} <= codes, (method, path, codes)
        if not path.startswith("/api/v1/sessions"):
            assert "401" in codes, (method, path)
        elif "{session_id}" in path:
            assert "404" in codes, (method, path)


def test_every_body_and_success_response_has_a_model_with_an_example(app: FastAPI) -> None:
    spec = app.openapi()
    for path, method, operation in _operations(spec):
        body = operation.get("requestBody")
        if body is not None:
            schema = body["content"]["application/json"]["schema"]
            if "anyOf" in schema:  # an optional body
                schema = next(option for option in schema["anyOf"] if "$ref" in option)
            assert _schema(spec, schema).get("examples"), (method, path, "request")
        for code, response in operation["responses"].items():
            if code.startswith("2") and "text/event-stream" in response.get("content", {}):
                # An event stream: each event's data has its model.
                assert response["content"]["text/event-stream"]["x-events"], (method, path)
            elif code.startswith("2") and code != "204":
                schema = response["content"]["application/json"]["schema"]
                assert _schema(spec, schema).get("examples"), (method, path, code)


def test_member_routes_carry_no_bearer_requirement(app: FastAPI) -> None:
    spec = app.openapi()
    for path, method, operation in _operations(spec):
        secured = bool(operation.get("security"))
        assert secured == (not path.startswith("/api/v1/sessions")), (method, path)
