"""The Agent* search attributes on a namespace: check, register where allowed.

A session upserts these attributes as it runs; on a namespace without them every
workflow task would fail (BadSearchAttributes). Workers check at start
(`HandoffPlugin`), `handoff setup` registers them on a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from temporal_handoff.schemas import visibility as sa


class SearchAttributesMissing(RuntimeError):
    """The namespace lacks the Agent* search attributes and they could not be added."""


@dataclass
class SearchAttributeReport:
    present: list[str] = field(default_factory=list)
    registered: list[str] = field(default_factory=list)


async def ensure_search_attributes(client: Client, *, register: bool = True) -> SearchAttributeReport:
    """Make sure every Agent* search attribute exists on the client's namespace.

    Args:
        register: add the missing ones (works on the dev server and where the
            caller may use the operator service); if False, only check.

    Raises:
        SearchAttributesMissing: one line naming the attributes and `handoff setup`.
    """
    ns = client.namespace
    listed = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=ns)
    )
    existing = dict(listed.custom_attributes)
    report = SearchAttributeReport()
    missing: dict[str, IndexedValueType.ValueType] = {}
    for key in sa.ALL_KEYS:
        want = IndexedValueType.ValueType(int(key.indexed_value_type))
        have = existing.get(key.name)
        if have is None:
            missing[key.name] = want
        elif have != want:
            raise SearchAttributesMissing(
                f"search attribute {key.name} exists in namespace {ns} as "
                f"{IndexedValueType.Name(have)}, expected {IndexedValueType.Name(want)}"
            )
        else:
            report.present.append(key.name)
    if not missing:
        return report
    hint = (
        f"search attributes {', '.join(missing)} are missing in namespace {ns}: run "
        f"`handoff setup --namespace {ns}` (or set SessionConfig.search_attributes=False)"
    )
    if not register:
        raise SearchAttributesMissing(hint)
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(search_attributes=missing, namespace=ns)
        )
    except RPCError as err:
        if err.status != RPCStatusCode.ALREADY_EXISTS:
            raise SearchAttributesMissing(f"{hint} ({err.message})") from None
    report.registered.extend(missing)
    return report
