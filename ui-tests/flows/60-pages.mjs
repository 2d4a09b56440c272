// Every page of the navigation as an admin: it answers 200 with its title and no page, console
// or CSP error, and leaves a screenshot named after it (the README's pictures).
import { assert } from "../harness.mjs";
import { login, navigation } from "../session.mjs";

/// Pages other flows shoot in a state worth showing.
const SHOT_ELSEWHERE = new Set(["/ui", "/ui/events", "/ui/projections", "/ui/jobs"]);

export const flows = [
  {
    name: "an admin opens every page of the navigation without an error",
    shot: "pages.png",
    async run({ page, config, note }) {
      await login(page, config.adminKey, "/ui");
      const pages = await navigation(page);
      assert(pages.length > 0, "the page has no navigation");
      const shot = [];
      for (const href of pages) {
        const reply = await page.goto(href);
        assert(reply.ok(), `${href} answered ${reply.status()} to an admin`);
        assert(new URL(page.url()).pathname === href, `${href} went to ${page.url()}`);
        // The message is read only when there is one: a locator's textContent waits for it.
        const errors = await page.$$eval("[data-testid=error]", (els) => els.map((e) => e.textContent));
        assert(errors.length === 0, `${href} shows an error: ${errors.join(" | ")}`);
        if (SHOT_ELSEWHERE.has(href)) continue;
        const name = `${href.replace(/^\/ui\/?/, "").replace(/\//g, "-") || "overview"}.png`;
        await page.screenshot({ path: `${config.shots}/${name}`, fullPage: true });
        shot.push(name);
      }
      note(`visited ${pages.length} pages, shot ${shot.join(" ")}`);
    },
  },
];
