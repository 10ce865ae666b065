"""`handoff_child_owner`: which run a handoff child reports to.

After `temporal workflow reset`, the new run's history still lists the child that the
old run started; that child reports its result to the old run, so the new run must
not wait for it. The workflow cannot see a child's parent; this activity asks Temporal.
"""

from __future__ import annotations

from temporalio import activity
from temporalio.service import RPCError, RPCStatusCode


@activity.defn(name="handoff_child_owner")
async def handoff_child_owner(child_id: str) -> str:
    """Run id of the child's parent ("" if the child does not exist)."""
    try:
        desc = await activity.client().get_workflow_handle(child_id).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return ""
        raise
    parent = desc.raw_description.workflow_execution_info.parent_execution
    return parent.run_id
