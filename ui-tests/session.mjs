// What many flows do: log in through the form, read the page's CSRF token, walk the navigation,
// and append an event through the API as a client would.
import { assert } from "./harness.mjs";

/// Logs in through /ui/login with `key` and waits for the page it was sent to (`next`).
export async function login(page, key, next = "/ui") {
  await page.goto(`/ui/login?next=${encodeURIComponent(next)}`);
  await page.fill("#key", key);
  await Promise.all([
    page.waitForURL((u) => u.pathname === next || (next === "/ui" && u.pathname === "/ui/")),
    page.click("form[action='/ui/login'] button[type=submit]"),
  ]);
}

/// The addresses in the top navigation, in order.
export async function navigation(page) {
  return page.$$eval("header.top nav a", (links) => links.map((a) => a.getAttribute("href")));
}

/// Appends `events` to agent `aggregateId` through the API with `key`; the recorded events.
export async function append(config, aggregateId, events) {
  const reply = await fetch(`${config.url}/v1/aggregates/agent/${aggregateId}/events`, {
    method: "POST",
    headers: { authorization: `Bearer ${config.adminKey}`, "content-type": "application/json" },
    body: JSON.stringify({ events }),
  });
  const body = await reply.json().catch(() => null);
  assert(reply.ok, `append answered ${reply.status}: ${JSON.stringify(body)}`);
  return body.events;
}

/// A valid agent.state.changed event.
export function agentStateChanged(agentId, toState) {
  return {
    type: "agent.state.changed",
    payload: { agent_id: agentId, from_state: null, to_state: toState, reason: null },
  };
}
