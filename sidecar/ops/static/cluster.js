// The /cluster page: polls /api/cluster/topology and redraws. Everything that comes from the
// cluster (node and agent ids, errors) is inserted as text, never as HTML.
"use strict";

(() => {
  const POLICIES = ["isolated", "shared", "group"];
  let refreshMs = 1000;
  let updates = 0;

  const byId = (id) => document.getElementById(id);

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key.startsWith("data-")) node.setAttribute(key, String(value));
      else node[key] = value;
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function age(seconds) {
    if (seconds === null || seconds === undefined) return "never";
    return seconds < 60 ? `${seconds.toFixed(1)} s ago` : `${Math.round(seconds / 60)} min ago`;
  }

  function policyOf(agent) {
    if (agent.id === "default") return "default";
    return POLICIES.includes(agent.read_policy) ? agent.read_policy : "isolated";
  }

  function chip(agent) {
    const policy = policyOf(agent);
    const label = agent.policy_group ? `${agent.id} · ${agent.policy_group}` : agent.id;
    let title = policy === "default" ? "default: node-local, shared" : policy;
    if (agent.policy_group) title += ` (group ${agent.policy_group})`;
    if (agent.collision) title += agent.owner ? "; claimed twice, owner here" : "; claimed twice, owned elsewhere";
    const routable = agent.routable !== false;
    if (!routable) title += "; not routable: no request reaches it here";
    const classes = ["chip", `policy-${policy}`];
    if (agent.collision) classes.push("collision");
    if (!agent.owner) classes.push("not-owner");
    if (!routable) classes.push("unroutable");
    return el(
      "span",
      {
        class: classes.join(" "),
        title,
        "data-agent": agent.id,
        "data-policy": policy,
        "data-group": agent.policy_group,
        "data-collision": agent.collision ? "yes" : null,
        "data-routable": routable ? null : "no",
      },
      label,
    );
  }

  function spoolText(spool) {
    if (!spool) return "none";
    if (!spool.depth) return spool.dead_letters ? `empty · ${spool.dead_letters} dead letters` : "empty";
    const age = spool.oldest_age_s === null || spool.oldest_age_s === undefined ? "" : `, oldest ${spoolAge(spool.oldest_age_s)}`;
    const dead = spool.dead_letters ? ` · ${spool.dead_letters} dead letters` : "";
    const owners = spool.owners && spool.owners.length ? ` for ${spool.owners.join(", ")}` : "";
    return `${spool.depth} waiting${owners}${age}${dead}`;
  }

  function spoolAge(seconds) {
    return seconds < 60 ? `${seconds.toFixed(0)} s` : `${Math.round(seconds / 60)} min`;
  }

  function nodeCard(node) {
    const alive = node.state === "alive";
    const daemon = node.daemon || {};
    const health = !alive ? "unknown" : daemon.healthy ? "healthy" : "unhealthy";
    const daemonText = `${daemon.flavor || "?"} ${daemon.version || "?"} · ${
      alive ? health : "unknown (node down)"
    }${alive && daemon.error ? `: ${daemon.error}` : ""}`;
    return el(
      "article",
      { class: "node", "data-node-id": node.node_id, "data-state": node.state, "data-health": health },
      el(
        "h3",
        {},
        node.node_id,
        el("span", { class: `badge state-${alive ? "alive" : "down"}` }, node.state),
        el("span", { class: "badge membership" }, node.joined ? "member" : "discovered"),
        node.coordinator ? el("span", { class: "badge coordinator" }, "coordinator") : null,
      ),
      el(
        "dl",
        {},
        el("dt", {}, "url"),
        el("dd", {}, node.url || "?"),
        el("dt", {}, "daemon"),
        el("dd", { "data-field": "daemon" }, daemonText),
        el("dt", {}, "heartbeat"),
        el("dd", { "data-field": "heartbeat" }, age(node.heartbeat_age_s)),
        el("dt", {}, "sidecar"),
        el("dd", {}, `${node.sidecar_version || "?"} · protocol ${node.protocol ?? "?"}`),
        el("dt", {}, "spool"),
        el("dd", { "data-field": "spool" }, spoolText(node.spool)),
      ),
      el("div", { class: "agents" }, ...node.agents.map(chip)),
    );
  }

  function list(id, items) {
    const target = byId(id);
    target.replaceChildren(
      ...(items.length ? items.map((text) => el("li", {}, text)) : [el("li", { class: "none" }, "none")]),
    );
  }

  function render(doc) {
    const degraded = doc.problems.length > 0;
    const overall = byId("overall");
    overall.dataset.state = degraded ? "degraded" : "healthy";
    overall.textContent = degraded ? `degraded (${doc.problems.length})` : "healthy";
    const source =
      doc.source === "registry" ? "coordinator registry" : doc.source === "standalone" ? "standalone" : "copy";
    byId("meta").textContent =
      `${doc.nodes.length} nodes · ${doc.routes} routes · answered by ${doc.answered_by} (${source}) · ` +
      `TTL ${doc.ttl_s} s · updated ${new Date(doc.generated_at * 1000).toLocaleTimeString()}`;
    byId("nodes").replaceChildren(...doc.nodes.map(nodeCard));
    list("problems", [...doc.problems, ...doc.coordinator_errors.map((e) => `coordinator: ${e}`)]);
    list(
      "events",
      (doc.events || []).map(
        (e) => `${new Date(e.at * 1000).toISOString().slice(11, 19)} UTC  ${e.text}`,
      ),
    );
    list(
      "groups",
      Object.entries(doc.groups).map(
        ([name, members]) => `${name}: ${members.map((m) => `${m.agent_id}@${m.node_id}`).join(", ")}`,
      ),
    );
    list(
      "collisions",
      doc.collisions.map(
        (c) => `${c.agent_id}: claimed by ${c.claimants.join(", ")}; owner ${c.winner} (${c.rule})`,
      ),
    );
    list(
      "spool",
      doc.nodes
        .filter((n) => n.spool && (n.spool.depth || n.spool.dead_letters))
        .map((n) => `${n.node_id}: ${spoolText(n.spool)}`),
    );
    byId("banner").hidden = true;
    updates += 1;
    document.body.dataset.updates = String(updates);
  }

  function unreachable(error) {
    const overall = byId("overall");
    overall.dataset.state = "unreachable";
    overall.textContent = "unreachable";
    const banner = byId("banner");
    banner.textContent = `Cannot reach the sidecar (${error}); retrying every ${refreshMs / 1000} s.`;
    banner.hidden = false;
  }

  async function poll() {
    try {
      const response = await fetch("/api/cluster/topology", { cache: "no-store" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const doc = await response.json();
      refreshMs = Math.round(doc.refresh_s * 1000);
      render(doc);
    } catch (error) {
      unreachable(error.message || String(error));
    } finally {
      setTimeout(poll, refreshMs);
    }
  }

  poll();
})();
