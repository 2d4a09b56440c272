// A reader (viewer) sees no control that changes anything on any page of the navigation, and
// forged posts are refused: one without the CSRF token, one from another site's origin.
import { assert } from "../harness.mjs";
import { login, navigation } from "../session.mjs";

/// What changes something: a posting form other than logout, or a dangerous button.
const MUTATING = "form[method=post]:not([action='/ui/logout']), button.danger";

export const flows = [
  {
    name: "a viewer sees no mutating control and forged posts are refused",
    shot: "viewer.png",
    async run({ page, config, note, expect }) {
      await login(page, config.readerKey, "/ui");
      const pages = await navigation(page);
      assert(pages.length > 0, "the page has no navigation");
      const checked = [];
      const missing = [];
      for (const href of pages) {
        // A page another change has not built yet answers 404: noted, and checked once it exists.
        const reply = await expect(/status of 404/, () => page.goto(href));
        if (reply.status() === 404) {
          missing.push(href);
          continue;
        }
        assert(reply.ok(), `${href} answered ${reply.status()} to a viewer`);
        const controls = await page.$$eval(MUTATING, (els) => els.map((e) => e.outerHTML.slice(0, 120)));
        assert(controls.length === 0, `${href} shows a viewer mutating controls: ${controls.join(" | ")}`);
        checked.push(href);
      }
      await page.goto("/ui");
      const csrf = await page.locator("body").getAttribute("data-csrf");
      assert(csrf && csrf.length === 64, "the page carries no CSRF token");

      // Refused as a forgery (csrf_failed), not for some other reason.
      const forged = await expect(/status of 403/, () =>
        page.evaluate(async () => {
          const reply = await fetch("/ui/logout", { method: "POST" });
          return { status: reply.status, body: await reply.text() };
        }),
      );
      assert(forged.status === 403 && forged.body.includes("csrf_failed"), `a post without the CSRF token answered ${forged.status}`);

      const crossSite = await page.request.post("/ui/logout", {
        form: { csrf },
        headers: { Origin: "http://evil.example" },
        maxRedirects: 0,
      });
      assert(
        crossSite.status() === 403 && (await crossSite.text()).includes("csrf_failed"),
        `a post from another origin answered ${crossSite.status()}`,
      );

      // Neither forgery ended the session.
      const again = await page.goto("/ui");
      assert(new URL(page.url()).pathname === "/ui" && again.ok(), `the session ended: now at ${page.url()}`);
      note(`checked ${checked.join(" ")}${missing.length ? `; not built yet (404): ${missing.join(" ")}` : ""}`);
    },
  },
];
