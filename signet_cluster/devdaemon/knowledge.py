"""A small knowledge store: entities and aspects named in ``structured`` remember payloads.

The real daemon runs a whole extraction pipeline; here only the explicit ``structured``
payload is stored, per agent, enough for ``POST /api/knowledge/expand`` to answer with the
recorded shapes (an entity, its aspects and attributes, the memories that mention it).
"""

from __future__ import annotations

import uuid
from typing import Any

from .store import Store

Body = dict[str, Any]


def canonical(name: str) -> str:
    return " ".join(name.lower().split())


def _is_str(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def valid_structured(payload: object) -> bool:
    """Whether ``structured`` is ``{entities?: [...], aspects?: [...], hints?: [...]}``."""
    if not isinstance(payload, dict):
        return False
    entities = payload.get("entities", [])
    aspects = payload.get("aspects", [])
    hints = payload.get("hints", [])
    if not (isinstance(entities, list) and isinstance(aspects, list) and isinstance(hints, list)):
        return False
    for entity in entities:
        if not isinstance(entity, dict) or not all(
            _is_str(entity.get(key)) for key in ("source", "target", "relationship")
        ):
            return False
    for aspect in aspects:
        if not isinstance(aspect, dict) or not all(
            _is_str(aspect.get(key)) for key in ("entityName", "aspect")
        ):
            return False
        if not isinstance(aspect.get("attributes", []), list):
            return False
    return all(isinstance(hint, str) for hint in hints)


def _upsert_entity(store: Store, name: str, entity_type: object, agent_id: str, now: str) -> str:
    key = canonical(name)
    row = store.one(
        "SELECT id FROM entities WHERE agent_id = ? AND canonical_name = ?", [agent_id, key]
    )
    if row is not None:
        store.db.execute(
            "UPDATE entities SET mentions = mentions + 1, updated_at = ? WHERE id = ?",
            [now, row["id"]],
        )
        return str(row["id"])
    entity_id = str(uuid.uuid4())
    kind = entity_type.strip() if isinstance(entity_type, str) and entity_type.strip() else None
    store.db.execute(
        "INSERT INTO entities (id, name, canonical_name, entity_type, agent_id, mentions,"
        " created_at, updated_at) VALUES (?, ?, ?, ?, ?, 1, ?, ?)",
        [entity_id, name.strip(), key, kind or "extracted", agent_id, now, now],
    )
    return entity_id


def _mention(store: Store, memory_id: str, entity_id: str) -> int:
    cursor = store.db.execute(
        "INSERT OR IGNORE INTO memory_entity_mentions (memory_id, entity_id) VALUES (?, ?)",
        [memory_id, entity_id],
    )
    return max(cursor.rowcount, 0)


def link_structured(store: Store, payload: dict[str, Any], memory_id: str, agent_id: str) -> int:
    """Store entities/aspects for one memory; returns how many entities were linked."""
    now = store.clock.now()
    linked = 0
    for entity in payload.get("entities", []):
        for name_key, type_key in (("source", "sourceType"), ("target", "targetType")):
            entity_id = _upsert_entity(store, entity[name_key], entity.get(type_key), agent_id, now)
            linked += _mention(store, memory_id, entity_id)
    for aspect in payload.get("aspects", []):
        entity_id = _upsert_entity(
            store, aspect["entityName"], aspect.get("entityType"), agent_id, now
        )
        linked += _mention(store, memory_id, entity_id)
        store.db.execute(
            "INSERT OR IGNORE INTO entity_aspects (id, entity_id, name, canonical_name, weight)"
            " VALUES (?, ?, ?, ?, 0.5)",
            [str(uuid.uuid4()), entity_id, aspect["aspect"], canonical(aspect["aspect"])],
        )
        aspect_row = store.one(
            "SELECT id FROM entity_aspects WHERE entity_id = ? AND canonical_name = ?",
            [entity_id, canonical(aspect["aspect"])],
        )
        assert aspect_row is not None
        for attribute in aspect.get("attributes", []):
            if not isinstance(attribute, dict) or not _is_str(attribute.get("content")):
                continue
            confidence = attribute.get("confidence", 0.7)
            store.db.execute(
                "INSERT INTO entity_attributes (id, aspect_id, memory_id, kind, content,"
                " importance, confidence) VALUES (?, ?, ?, 'attribute', ?, 0.5, ?)",
                [
                    str(uuid.uuid4()),
                    aspect_row["id"],
                    memory_id,
                    attribute["content"].strip(),
                    confidence if isinstance(confidence, (int, float)) else 0.7,
                ],
            )
    return linked


def not_found_body(name: str) -> Body:
    return {
        "error": f'Entity "{name}" not found',
        "entity": None,
        "constraints": [],
        "aspects": [],
        "dependencies": [],
        "memoryCount": 0,
        "memories": [],
    }


def expand(store: Store | None, name: str, agent_id: str) -> tuple[int, Body]:
    """``POST /api/knowledge/expand`` for one agent's entity (``store=None``: no entities)."""
    entity = None
    if store is not None:
        entity = store.one(
            "SELECT id, name, entity_type, description FROM entities"
            " WHERE agent_id = ? AND canonical_name = ?",
            [agent_id, canonical(name)],
        )
    if store is None or entity is None:
        return 404, not_found_body(name)
    aspects = []
    for aspect in store.all(
        "SELECT id, name, weight FROM entity_aspects WHERE entity_id = ? ORDER BY weight DESC,"
        " name",
        [entity["id"]],
    ):
        attributes = store.all(
            "SELECT content, kind, importance, confidence FROM entity_attributes"
            " WHERE aspect_id = ? ORDER BY rowid",
            [aspect["id"]],
        )
        aspects.append(
            {"name": aspect["name"], "weight": aspect["weight"], "attributes": attributes}
        )
    memories = store.all(
        "SELECT m.id, m.content FROM memory_entity_mentions x JOIN memories m ON m.id ="
        " x.memory_id WHERE x.entity_id = ? AND m.is_deleted = 0 ORDER BY m.created_at DESC",
        [entity["id"]],
    )
    constraints = [
        attr["content"]
        for aspect in aspects
        for attr in aspect["attributes"]
        if attr["kind"] == "constraint"
    ]
    return 200, {
        "entity": {
            "id": entity["id"],
            "name": entity["name"],
            "type": entity["entity_type"],
            "description": entity["description"],
        },
        "constraints": constraints,
        "aspects": aspects,
        "dependencies": [],
        "memoryCount": len(memories),
        "memories": memories,
    }
