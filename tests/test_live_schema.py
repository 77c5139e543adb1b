"""An HTTP tool's JSON Schema → Gemini Live's function ``Schema`` (the Live API ignores
``parametersJsonSchema``), and the warnings ``gateway check`` gives for what cannot be carried."""

from __future__ import annotations

from typing import Any

import pytest
from google.genai import types
from hypothesis import given
from hypothesis import strategies as st

from callsim.live.model import _arguments_unseen
from gateway.agents import LIVE_SCHEMA_KEYWORDS, live_schema_gaps, parse_agents
from gateway.live.schema import to_live_schema


def dumped(schema: dict[str, Any]) -> dict[str, Any]:
    """What the SDK puts on the wire for the converted schema."""
    return to_live_schema(schema).model_dump(mode="json", exclude_none=True, by_alias=True)


def test_types_descriptions_required_and_nesting_are_kept() -> None:
    schema = {
        "type": "object",
        "properties": {
            "order_id": {"type": "string", "description": "digits only", "pattern": "^[0-9]+$"},
            "quantity": {"type": "integer", "minimum": 1, "maximum": 10},
            "express": {"type": "boolean", "default": False},
            "lines": {
                "type": "array",
                "minItems": 1,
                "items": {"type": "object", "properties": {"sku": {"type": "string"}}},
            },
        },
        "required": ["order_id"],
    }
    live = to_live_schema(schema)
    assert live.type == types.Type.OBJECT
    assert live.required == ["order_id"]
    assert live.property_ordering == ["order_id", "quantity", "express", "lines"]
    assert live.properties is not None
    order = live.properties["order_id"]
    assert (order.type, order.description, order.pattern) == (types.Type.STRING, "digits only",
                                                              "^[0-9]+$")  # fmt: skip
    quantity = live.properties["quantity"]
    assert (quantity.type, quantity.minimum, quantity.maximum) == (types.Type.INTEGER, 1, 10)
    lines = live.properties["lines"]
    assert lines.type == types.Type.ARRAY and lines.min_items == 1
    assert lines.items is not None and lines.items.properties is not None
    assert lines.items.properties["sku"].type == types.Type.STRING


def test_json_schema_idioms_become_their_openapi_forms() -> None:
    schema = {
        "type": "object",
        "properties": {
            "note": {"type": ["string", "null"]},
            "size": {"enum": [1, 2, 3]},
            "kind": {"const": "refund"},
            "city": {"type": "string", "examples": ["Paris", "Rome"]},
            "id": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
        },
    }
    props = dumped(schema)["properties"]
    assert props["note"] == {"type": "STRING", "nullable": True}
    assert props["size"] == {"type": "STRING", "enum": ["1", "2", "3"]}
    assert props["kind"] == {"type": "STRING", "enum": ["refund"]}
    assert props["city"] == {"type": "STRING", "example": "Paris"}
    assert props["id"] == {"anyOf": [{"type": "STRING"}, {"type": "INTEGER"}]}


def test_keywords_live_cannot_carry_are_dropped_and_warned_about() -> None:
    schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {"x": {"oneOf": [{"type": "string"}]}, "y": {"type": "string"}},
    }
    assert dumped(schema) == {
        "type": "OBJECT",
        "properties": {"x": {}, "y": {"type": "STRING"}},
        "propertyOrdering": ["x", "y"],
    }
    assert live_schema_gaps(schema, "p") == ["p.additionalProperties", "p.properties.x.oneOf"]
    graph = parse_agents(
        f"""
tools:
  - name: t
    description: d
    parameters: {schema!r}
    url: https://api.example.com/t
agents:
  - {{id: a, role: r, system_prompt: p, tools: [t]}}
pipeline:
  - {{phase: one, agent_id: a}}
""".replace("False", "false")
    )
    assert [w.split(":")[0] for w in graph.warnings] == [
        "tools[0].parameters.additionalProperties",
        "tools[0].parameters.properties.x.oneOf",
    ]


JSON_TYPES = st.sampled_from(["string", "integer", "number", "boolean", "null"])
LEAF = st.fixed_dictionaries(
    {"type": JSON_TYPES},
    optional={"description": st.text(max_size=20), "enum": st.lists(st.integers(), max_size=3),
              "oneOf": st.just([{"type": "string"}]), "format": st.sampled_from(["date", "uri"])},
)  # fmt: skip
SCHEMAS = st.recursive(
    LEAF,
    lambda inner: st.one_of(
        st.fixed_dictionaries(
            {
                "type": st.just("object"),
                "properties": st.dictionaries(
                    st.from_regex(r"[a-z_]{1,8}", fullmatch=True), inner, max_size=4
                ),
            },
        ),
        st.fixed_dictionaries({"type": st.just("array"), "items": inner}),
        st.fixed_dictionaries({"anyOf": st.lists(inner, min_size=1, max_size=3)}),
    ),
    max_leaves=12,
)


@given(SCHEMAS)
def test_any_schema_converts_keeps_every_property_and_serialises(schema: dict[str, Any]) -> None:
    live = to_live_schema(schema)
    wire = live.model_dump(mode="json", exclude_none=True, by_alias=True)  # the SDK can send it

    def names(s: dict[str, Any]) -> set[str]:
        found = set(s.get("properties", {}))
        for sub in [*s.get("properties", {}).values(), s.get("items"), *s.get("anyOf", [])]:
            if isinstance(sub, dict):
                found |= names(sub)
        return found

    assert names(wire) == names(schema)
    assert all(path.split(".")[-1] not in LIVE_SCHEMA_KEYWORDS
               for path in live_schema_gaps(schema, "p"))  # fmt: skip


def test_the_simulator_hides_arguments_described_only_as_json_schema() -> None:
    """Gemini Live's habit, kept by the simulator: such a function is called with no arguments."""
    declared = [
        {"name": "json_only", "parametersJsonSchema": {"type": "object"}},
        {"name": "openapi", "parameters": {"type": "OBJECT"}},
    ]
    assert _arguments_unseen(declared, "json_only") is True
    assert _arguments_unseen(declared, "openapi") is False
    assert _arguments_unseen(declared, "undeclared") is False


SAMPLES: dict[str, Any] = {
    "type": "string", "enum": ["a"], "const": "a", "properties": {"p": {"type": "string"}},
    "required": ["p"], "items": {"type": "string"}, "anyOf": [{"type": "string"}],
    "examples": ["a"], "nullable": True, "description": "d", "title": "t", "format": "date",
    "pattern": "^a$", "default": "a", "minimum": 1, "maximum": 2, "minItems": 1, "maxItems": 2,
    "minLength": 1, "maxLength": 2, "minProperties": 1, "maxProperties": 2,
}  # fmt: skip


@pytest.mark.parametrize("keyword", sorted(LIVE_SCHEMA_KEYWORDS - {"$schema"}))
def test_every_keyword_check_accepts_is_carried_to_gemini(keyword: str) -> None:
    """The warning's list and the converter agree: no keyword is accepted and then dropped."""
    assert dumped({keyword: SAMPLES[keyword]}) != {}
