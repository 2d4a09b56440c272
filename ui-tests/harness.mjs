// The harness the dashboard's browser flows run in: one Chromium (Debian's, never a downloaded
// one), a fresh browser context per flow (so no cookie leaks between them), and a watch on every
// page for what a user would call broken: an uncaught exception, a console error, a Content
// Security Policy violation, or a 5xx answer. A flow fails on any of those unless it declared it
// expected (`ctx.expect`), and always leaves a screenshot of where it ended.
//
// Settings come from the environment:
//   KEEL_UI_URL          the keel to test, e.g. http://127.0.0.1:8080 (required)
//   KEEL_UI_KEY          an admin API key (required)
//   KEEL_UI_READER_KEY   a reader (viewer) API key (required)
//   KEEL_UI_SHOTS        where screenshots go (default target/ui-shots)
//   KEEL_UI_DLQ_GROUP    a consumer group with a parked sequence, for the dead-letters flow
//   KEEL_CHROMIUM        the browser (default /usr/bin/chromium)
//   KEEL_UI_FLOWS        run only the flows whose name contains this
import { mkdirSync } from "node:fs";
import { join, resolve } from "node:path";
import { chromium } from "playwright-core";

export function settings(env = process.env) {
  const missing = ["KEEL_UI_URL", "KEEL_UI_KEY", "KEEL_UI_READER_KEY"].filter((k) => !env[k]);
  if (missing.length) {
    throw new Error(`set ${missing.join(", ")} (the keel to test and its keys)`);
  }
  return {
    url: env.KEEL_UI_URL.replace(/\/$/, ""),
    adminKey: env.KEEL_UI_KEY,
    readerKey: env.KEEL_UI_READER_KEY,
    shots: resolve(env.KEEL_UI_SHOTS || "target/ui-shots"),
    chromium: env.KEEL_CHROMIUM || "/usr/bin/chromium",
    only: env.KEEL_UI_FLOWS || "",
    dlqGroup: env.KEEL_UI_DLQ_GROUP || "",
  };
}

/// Polls `check` (which may be async) until it returns something truthy, or throws `what` after
/// `ms`. Flows never sleep to wait.
export async function until(what, check, ms = 5000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() >= deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

export function assert(ok, message) {
  if (!ok) throw new Error(message);
}

// Known faults of keel, each with the issue that tracks it: reported on the flow's line, not
// failed, so the flows stay useful until the fix lands. Remove an entry with its fix.
const KNOWN = [];

// Problems a page reported, each a line; `expected` holds patterns a flow declared it provokes.
function watch(page, problems, expected, known) {
  const report = (kind, text) => {
    if (expected.some((re) => re.test(text))) return;
    const fault = KNOWN.find((k) => k.pattern.test(text));
    if (fault) return known.add(`known: ${fault.why}`);
    problems.push(`${kind}: ${text} (on ${page.url()})`);
  };
  page.on("pageerror", (e) => report("uncaught exception", e.message));
  page.on("console", (m) => {
    // A failed load names no address in its text; the message's location does.
    const where = m.location() && m.location().url;
    const text = /^Failed to load resource/.test(m.text()) && where ? `${m.text()}: ${where}` : m.text();
    if (m.type() === "error") report("console.error", text);
    else if (/Content[- ]Security[- ]Policy/i.test(text)) report("CSP", text);
  });
  page.on("response", (r) => {
    if (r.status() >= 500) report("server error", `${r.status()} ${r.url()}`);
  });
}

// Chromium fires `securitypolicyviolation` in the page; the binding carries it out to us, on
// every document the context opens.
async function watchPolicy(context, problems) {
  await context.exposeBinding("__keelPolicyViolation", ({ page }, text) => {
    problems.push(`CSP violation: ${text} (on ${page.url()})`);
  });
  await context.addInitScript(() => {
    document.addEventListener("securitypolicyviolation", (e) => {
      window.__keelPolicyViolation(`${e.violatedDirective} blocked ${e.blockedURI || "inline"}`);
    });
  });
}

/// Runs `flows` ([{ name, shot, run(ctx) }]) one after another; prints one line per flow and
/// returns whether all passed.
export async function runFlows(flows, config = settings()) {
  mkdirSync(config.shots, { recursive: true });
  const chosen = flows.filter((f) => f.name.includes(config.only));
  const browser = await chromium.launch({
    executablePath: config.chromium,
    args: ["--no-sandbox"],
  });
  const shared = {}; // what one flow leaves for the next (an appended event's id)
  let failed = 0;
  try {
    for (const flow of chosen) {
      const started = Date.now();
      const problems = [];
      const expected = [];
      const notes = [];
      const known = new Set();
      const context = await browser.newContext({ baseURL: config.url, viewport: { width: 1280, height: 900 } });
      await watchPolicy(context, problems);
      context.on("page", (p) => watch(p, problems, expected, known));
      const page = await context.newPage();
      const shot = join(config.shots, flow.shot);
      let error = null;
      try {
        await flow.run({
          page,
          context,
          config,
          shared,
          note: (n) => notes.push(n),
          // Runs `body` with console errors matching `pattern` (which it provokes) allowed.
          expect: async (pattern, body) => {
            expected.push(pattern);
            try {
              return await body();
            } finally {
              expected.splice(expected.indexOf(pattern), 1);
            }
          },
        });
      } catch (e) {
        error = e;
      }
      await page.screenshot({ path: shot, fullPage: true }).catch((e) => problems.push(`no screenshot: ${e.message}`));
      await context.close();
      const ms = Date.now() - started;
      const why = [error && (error.stack || String(error)), ...problems].filter(Boolean);
      notes.push(...known);
      const extra = notes.length ? ` (${notes.join("; ")})` : "";
      if (why.length) {
        failed++;
        console.log(`FAIL ${flow.name} in ${ms} ms, screenshot ${shot}${extra}`);
        for (const w of why) console.log(`     ${w.replace(/\n/g, "\n     ")}`);
      } else {
        console.log(`ok   ${flow.name} in ${ms} ms, screenshot ${shot}${extra}`);
      }
    }
  } finally {
    await browser.close();
  }
  if (!chosen.length) {
    console.log(`FAIL no flow's name contains "${config.only}"`);
    return false;
  }
  console.log(`${chosen.length - failed} of ${chosen.length} flows passed; screenshots in ${config.shots}`);
  return failed === 0;
}
