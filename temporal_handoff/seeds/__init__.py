"""The seed formats teams keep by hand, imported as a `ProjectState` and exported back.

- :mod:`temporal_handoff.seeds.orchestrator`: the orchestrator's `.orchestrator_state.json`.
- :mod:`temporal_handoff.seeds.context_protocol`: the context protocol's `.context/state.json`.
"""

from temporal_handoff.seeds.context_protocol import from_state_json
from temporal_handoff.seeds.orchestrator import from_orchestrator

__all__ = ["from_orchestrator", "from_state_json"]
