// The Events page: an event appended through the API shows up in the open page's live tail
// within 2 s, and its detail page shows its payload and its delivery journey.
import { randomUUID } from "node:crypto";
import { assert, until } from "../harness.mjs";
import { agentStateChanged, append, login } from "../session.mjs";

/// How long after its append an event may take to reach an open tail.
const TAIL_MS = 2000;

export const flows = [
  {
    name: "an appended event appears in the live tail",
    shot: "events-live-tail.png",
    async run({ page, config, shared, note }) {
      await login(page, config.adminKey, "/ui/events");
      await page.locator("[data-tail]").waitFor({ state: "attached" });
      await until("the live tail's EventSource to open", () =>
        page.evaluate(() => window.keel && window.keel.source && window.keel.source.readyState === 1),
      );
      const agent = randomUUID();
      const asked = Date.now();
      const [event] = await append(config, agent, [agentStateChanged(agent, "running")]);
      const appended = Date.now();
      const row = page.locator(`tr[data-event-id="${event.id}"]`);
      await row.waitFor({ state: "visible", timeout: TAIL_MS });
      const seen = Date.now();
      assert(seen - appended <= TAIL_MS, `the row came ${seen - appended} ms after the append`);
      const first = await page.locator("#event-rows tr").first().getAttribute("data-event-id");
      assert(first === event.id, `the new row is not on top (top is ${first})`);
      assert((await row.textContent()).includes("agent.state.changed"), "the row does not name the type");
      const tailed = await page.evaluate(() => window.keel.tailed);
      assert(tailed >= 1, `window.keel.tailed is ${tailed}`);
      shared.event = { id: event.id, agent };
      note(`row visible ${seen - appended} ms after the append returned (${seen - asked} ms after it was sent)`);
    },
  },
  {
    name: "the event's detail page shows its payload",
    shot: "event-detail.png",
    async run({ page, config, shared }) {
      assert(shared.event, "no event from the live-tail flow to look at");
      const { id, agent } = shared.event;
      await login(page, config.adminKey, "/ui/events");
      await Promise.all([
        page.waitForURL(`**/ui/events/${id}`),
        page.click(`tr[data-event-id="${id}"] a[href="/ui/events/${id}"]`),
      ]);
      const payload = JSON.parse(await page.locator("[data-testid=payload]").textContent());
      assert(payload.agent_id === agent && payload.to_state === "running", `payload shown: ${JSON.stringify(payload)}`);
      await page.locator("[data-testid=journey]").waitFor({ state: "visible" });
    },
  },
];
