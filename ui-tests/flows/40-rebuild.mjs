// Projections and jobs: an admin previews a full rebuild of agent_status (the preview counts the
// events it will read), starts it, lands on the jobs page, and sees the job's row, refreshed by
// the page every 2 s, reach done.
import { randomUUID } from "node:crypto";
import { assert, until } from "../harness.mjs";
import { agentStateChanged, append, login } from "../session.mjs";

const PROJECTION = "agent_status";
/// How long the rebuild of a handful of events may take, refreshes included.
const DONE_MS = 60000;

export const flows = [
  {
    name: "a full rebuild is previewed, started and reaches done on the jobs page",
    shot: "jobs.png",
    async run({ page, config, note }) {
      // Something to rebuild: two agents' state changes.
      for (const agent of [randomUUID(), randomUUID()]) {
        await append(config, agent, [agentStateChanged(agent, "idle"), agentStateChanged(agent, "running")]);
      }
      const listed = await fetch(`${config.url}/v1/projections`, {
        headers: { authorization: `Bearer ${config.adminKey}` },
      });
      assert(listed.ok, `/v1/projections answered ${listed.status}`);
      assert((await listed.text()).includes(PROJECTION), `/v1/projections does not list ${PROJECTION}`);

      await login(page, config.adminKey, "/ui/projections");
      await page.locator(`tr[data-projection="${PROJECTION}"]`).waitFor({ state: "visible" });
      await page.screenshot({ path: `${config.shots}/projections.png`, fullPage: true });

      const form = page.locator(`form[data-testid="rebuild-${PROJECTION}"]`);
      await form.locator("select[name=mode]").selectOption("full");
      await Promise.all([page.waitForURL(`**/ui/projections/${PROJECTION}/rebuild`), form.locator("button[type=submit]").click()]);
      const preview = (await page.locator("[data-testid=preview]").textContent()).trim();
      const read = /will read ([\d,  ]+) events/.exec(preview);
      assert(read, `the preview names no number of events: "${preview}"`);
      const events = Number(read[1].replace(/[^\d]/g, ""));
      assert(events >= 4, `the preview counts ${events} events, at least the 4 just appended are there`);
      await page.screenshot({ path: `${config.shots}/rebuild-preview.png`, fullPage: true });

      const started = Date.now();
      await Promise.all([page.waitForURL((u) => u.pathname === "/ui/jobs"), page.click("[data-testid=confirm]")]);
      const row = page.locator(`[data-testid=jobs] tr[data-job]`).filter({ hasText: PROJECTION }).first();
      await row.waitFor({ state: "visible" });
      const job = await row.getAttribute("data-job");
      const mine = page.locator(`[data-testid=jobs] tr[data-job="${job}"]`);
      // The page refreshes its table itself; no reload here.
      const state = await until(
        `job ${job} to reach done`,
        async () => {
          const s = await mine.getAttribute("data-state").catch(() => null);
          if (s && !["running", "pending", "done"].includes(s)) throw new Error(`job ${job} ended ${s}: ${await mine.textContent()}`);
          return s === "done" && s;
        },
        DONE_MS,
      );
      const progress = (await mine.textContent()).replace(/\s+/g, " ").trim();
      note(`preview: ${events} events; job ${job.slice(0, 8)} ${state} ${Date.now() - started} ms after Start (${progress})`);
    },
  },
];
