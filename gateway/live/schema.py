"""An HTTP tool's JSON Schema (as written in agents.yaml) → the ``Schema`` Gemini Live reads.

Gemini's generate API takes a function's arguments as JSON Schema (``parametersJsonSchema``),
but the Live API does not: a declaration that uses it reaches the model without its arguments,
and the model then calls the function with ``{}`` (googleapis/python-genai#1147, July 2025;
livekit/agents#2940 and its fix #3135 switched to ``parameters`` for the same reason). So the
gateway sends ``parameters``: Gemini's ``Schema``, a subset of OpenAPI 3.0.

The subset is what the model uses to fill in the arguments: types, descriptions, enums,
required properties, nested objects and arrays, ranges and lengths, ``anyOf``. JSON Schema's
``"type": ["string", "null"]`` becomes ``nullable``. Keywords the subset lacks (``$ref``,
``oneOf``, ``if``/``then``, ``additionalProperties``…) are left out: the API the tool calls still
validates what it receives, so the cost of a dropped keyword is a less precise hint, not a
wrong call. ``gateway check`` warns about each one (``gateway.agents.live_schema_gaps``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.genai import types

_TYPES = {
    "string": types.Type.STRING,
    "integer": types.Type.INTEGER,
    "number": types.Type.NUMBER,
    "boolean": types.Type.BOOLEAN,
    "array": types.Type.ARRAY,
    "object": types.Type.OBJECT,
}
#: JSON Schema keyword → Schema field, for the keywords copied as they are.
_PLAIN = {
    "description": "description",
    "title": "title",
    "format": "format",
    "pattern": "pattern",
    "default": "default",
    "minimum": "minimum",
    "maximum": "maximum",
    "minItems": "min_items",
    "maxItems": "max_items",
    "minLength": "min_length",
    "maxLength": "max_length",
    "minProperties": "min_properties",
    "maxProperties": "max_properties",
}


def to_live_schema(schema: Mapping[str, Any]) -> types.Schema:
    """``schema`` (JSON Schema) as Gemini's ``Schema``; keywords it cannot carry are dropped."""
    fields: dict[str, Any] = {
        field: schema[key] for key, field in _PLAIN.items() if schema.get(key) is not None
    }
    kind = schema.get("type")
    names = kind if isinstance(kind, list) else [kind] if isinstance(kind, str) else []
    known = [name for name in names if name in _TYPES]
    if known:
        fields["type"] = _TYPES[known[0]]
    if "null" in names or schema.get("nullable") is True:
        fields["nullable"] = True
    enum = schema.get("enum")
    if "const" in schema and enum is None:
        enum = [schema["const"]]
    if isinstance(enum, list) and enum:
        # Gemini's enums are strings (of a STRING, or a number written as one).
        fields["enum"] = [str(value) for value in enum if value is not None]
        fields.setdefault("type", types.Type.STRING)
    examples = schema.get("examples")
    if isinstance(examples, list) and examples:
        fields["example"] = examples[0]
    properties = schema.get("properties")
    if isinstance(properties, Mapping):
        fields["properties"] = {
            str(name): to_live_schema(sub) for name, sub in properties.items()
            if isinstance(sub, Mapping)
        }  # fmt: skip
        fields["property_ordering"] = list(fields["properties"])
        fields.setdefault("type", types.Type.OBJECT)
    required = schema.get("required")
    if isinstance(required, list):
        fields["required"] = [str(name) for name in required]
    items = schema.get("items")
    if isinstance(items, Mapping):
        fields["items"] = to_live_schema(items)
        fields.setdefault("type", types.Type.ARRAY)
    any_of = schema.get("anyOf")
    if isinstance(any_of, list):
        fields["any_of"] = [to_live_schema(sub) for sub in any_of if isinstance(sub, Mapping)]
    return types.Schema(**fields)
