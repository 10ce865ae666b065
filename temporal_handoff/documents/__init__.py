"""Pure logic on the handoff contracts (`schemas.handoff`), no I/O, no Temporal.

- `build` — project state → :class:`HandoffDocument`.
- `render` — document → continuation prompt under a level's token budget.
- `probe` — is every critical item of the document in its rendered prompt?
- `markdown` — document → markdown for people.
- `lines` — the line formatters `render` and `markdown` share.
"""
