// The overview: an admin logs in and lands on it, with its tiles and both live charts drawn.
import { assert, until } from "../harness.mjs";
import { login } from "../session.mjs";

export const flows = [
  {
    name: "admin logs in and sees the overview",
    shot: "overview.png",
    async run({ page, config, note }) {
      await login(page, config.adminKey, "/ui");
      await page.locator("[data-testid=tiles]").waitFor({ state: "visible" });
      const tiles = await page.locator("[data-testid=tiles] .tile").count();
      assert(tiles > 0, "the overview shows no tile");
      for (const id of ["chart-flow", "chart-lag"]) {
        await page.locator(`svg#${id}`).waitFor({ state: "attached" });
      }
      // keel.js counts the points of every chart it saw; both charts must have been seen.
      const charts = await until("keel.js to read the charts", () =>
        page.evaluate(() => window.keel && "chart-flow" in window.keel.charts && "chart-lag" in window.keel.charts && window.keel.charts),
      );
      const principal = await page.locator("[data-testid=principal]").textContent();
      assert(principal.trim().length > 0, "the page does not say who is logged in");
      note(`${tiles} tiles, charts ${JSON.stringify(charts)}`);
    },
  },
];
