// Dead letters: a consumer group (KEEL_UI_DLQ_GROUP, set up by the Rust test with a real consumer
// that parked a poison record and held the next record of its key) shows the sequence with a
// record held behind its head; Retry in order counts it in a dry run, Run retries it, and the
// consumer redelivers the sequence, so it leaves the page.
import { assert, until } from "../harness.mjs";
import { login } from "../session.mjs";

/// How long the consumer may take to redeliver a retried sequence.
const DELIVERED_MS = 30000;

export const flows = [
  {
    name: "a poison record's sequence is retried in order from the dead-letters page",
    shot: "dead-letters-retried.png",
    async run({ page, config, note }) {
      const group = config.dlqGroup;
      assert(group, "set KEEL_UI_DLQ_GROUP to a consumer group with a parked sequence");
      const path = `/ui/dead-letters?group=${encodeURIComponent(group)}`;
      await login(page, config.adminKey, "/ui/dead-letters");
      await page.goto(path);
      const row = page.locator("[data-testid=sequences] tr[data-key]").first();
      await row.waitFor({ state: "visible" });
      const key = await row.getAttribute("data-key");
      const held = Number((await row.locator("[data-testid=held]").textContent()).trim());
      assert(held > 0, `the sequence of ${key} holds ${held} records behind its head`);
      await page.screenshot({ path: `${config.shots}/dead-letters-group.png`, fullPage: true });

      await Promise.all([page.waitForURL(`**/ui/dead-letters/${encodeURIComponent(group)}`), row.locator("[data-testid=retry]").click()]);
      const dry = (await page.locator("[data-testid=count]").textContent()).trim();
      assert(dry === `${held + 1} rows`, `the dry run would touch "${dry}", not the head and the ${held} held`);
      await page.screenshot({ path: `${config.shots}/dead-letters-dry-run.png`, fullPage: true });

      await Promise.all([page.waitForLoadState("load"), page.click("[data-testid=run]")]);
      await until("the Retried page", async () => (await page.title()).includes("Retried"));
      const touched = (await page.locator("[data-testid=count]").textContent()).trim();
      assert(touched === dry, `the run touched "${touched}" after a dry run of "${dry}"`);

      // The consumer redelivers the sequence in order (the Rust test checks the order): it is
      // no longer open.
      const started = Date.now();
      await until(
        `the sequence of ${key} to be delivered`,
        async () => {
          const reply = await fetch(`${config.url}/v1/dlq/${encodeURIComponent(group)}/sequences`, {
            headers: { authorization: `Bearer ${config.adminKey}` },
          });
          assert(reply.ok, `the sequences answered ${reply.status}`);
          return (await reply.json()).sequences.length === 0;
        },
        DELIVERED_MS,
      );
      const delivered = Date.now() - started;
      await page.goto(path);
      assert((await page.locator(`[data-testid=sequences] tr[data-key="${key}"]`).count()) === 0, "the delivered sequence is still listed");
      note(`held ${held}, retried ${touched}, delivered ${delivered} ms after Run`);
    },
  },
];
