// Runs every flow in flows/ (files in name order, each exporting `flows`) against a running keel
// in Debian's Chromium; prints one line per flow and exits non-zero if any failed. Settings:
// see harness.mjs. A new page gets its flows by adding a file to flows/.
import { readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { runFlows, settings } from "./harness.mjs";

const here = join(dirname(fileURLToPath(import.meta.url)), "flows");
const flows = [];
for (const file of readdirSync(here).filter((f) => f.endsWith(".mjs")).sort()) {
  flows.push(...(await import(pathToFileURL(join(here, file)))).flows);
}

try {
  process.exitCode = (await runFlows(flows, settings())) ? 0 : 1;
} catch (e) {
  console.log(`FAIL the flows could not run: ${e.stack || e}`);
  process.exitCode = 2;
}
