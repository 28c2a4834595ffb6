"""The memory API's request pipeline: one request, read top to bottom as its steps.

`routes.handle` runs them in order: read and bound the body (intake), resolve the agent
(agent), decide the target (decision: a `Decision` value), check ownership (ownership), then
serve: locally, forwarded to the owner, federated, or spooled (serve). Each step is a
function in its own module with typed input and output.

Beside it, `agent_api` serves the daemon's agent API (`/api/agents*`) for the whole cluster:
the roster of every node, one agent from its owner, creates that never make a second owner.

May import: everything below it: `signet_cluster` core and `signet_cluster.daemon`,
`sidecar.membership`, `sidecar.security`, `sidecar.memory`, `sidecar.federation`, the
sidecar's top-level modules.
"""
