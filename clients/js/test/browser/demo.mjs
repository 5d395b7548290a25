// The demo page in headless Chromium, driven step by step by tests/integration/test_demo_browser.py.
//
// Configuration comes in the environment (DEMO_BROWSER_CONFIG, JSON: pageUrl, chromium, timeoutMs),
// never on the command line: the page URL carries a JWT. Protocol: this script writes one JSON
// object per line on stdout ({"event": …}); pytest answers with one JSON command per line on stdin:
//   {"op":"expect","label":L,"offsets":{token:offset},"url":U?}  every row shows that record as a tick
//   {"op":"connected","url":U}                                   the badge says connected, on U
//   {"op":"screenshot","path":P}                                  save a PNG of the page
//   {"op":"done"}                                                 close the browser, exit 0
// Every wait is on a condition inside the page (page.waitForFunction), with a generous deadline.
// Run without DEMO_BROWSER_CONFIG (e.g. picked up by `node --test test/`) it does nothing.
import { createInterface } from "node:readline";

const raw = process.env.DEMO_BROWSER_CONFIG;
if (!raw) {
  console.log("demo.mjs: driven by tests/integration/test_demo_browser.py (DEMO_BROWSER_CONFIG unset), nothing to do");
  process.exit(0);
}
const cfg = JSON.parse(raw);
const timeout = cfg.timeoutMs ?? 90000;
const { chromium } = await import("playwright-core");

const pageErrors = [];
function emit(event, extra = {}) {
  process.stdout.write(`${JSON.stringify({ event, ...extra })}\n`);
}

/** What the page shows: its demoState plus the DOM's own text, read in one evaluation. */
async function snapshot(page) {
  return page.evaluate(() => {
    const rows = {};
    for (const tr of document.querySelectorAll("#rows tr")) {
      const cells = [...tr.children].map((td) => td.textContent);
      rows[cells[0]] = { cells, classes: [...tr.classList] };
    }
    return {
      demo: JSON.parse(JSON.stringify(window.demoState)),
      dom: { rows, badge: document.getElementById("badge").textContent,
             badgeState: document.getElementById("badge").dataset.state,
             headers: [...document.querySelectorAll("thead th")].map((th) => th.textContent),
             images: document.querySelectorAll("img").length },
      pwned: window.pwned === true,
    };
  });
}

async function step(page, cmd) {
  if (cmd.op === "expect") {
    await page.waitForFunction(({ offsets, url }) => {
      const d = window.demoState;
      if (d.state !== "connected" || (url && d.url !== url)) return false;
      return Object.entries(offsets).every(([t, off]) => {
        const r = d.rows[t];
        return r && r.offset === off && r.kind === "tick" && typeof r.latencyMs === "number";
      });
    }, { offsets: cmd.offsets, url: cmd.url ?? null }, { timeout, polling: 50 });
    emit("seen", { label: cmd.label, ...(await snapshot(page)), pageErrors });
  } else if (cmd.op === "connected") {
    await page.waitForFunction((url) => window.demoState.state === "connected" && window.demoState.url === url,
      cmd.url, { timeout, polling: 50 });
    emit("connected", { ...(await snapshot(page)), pageErrors });
  } else if (cmd.op === "screenshot") {
    await page.screenshot({ path: cmd.path, fullPage: true });
    emit("screenshot", { path: cmd.path });
  } else {
    throw new Error(`unknown command ${JSON.stringify(cmd).slice(0, 200)}`);
  }
}

const browser = await chromium.launch({ executablePath: cfg.chromium, args: ["--no-sandbox"], headless: true });
let code = 0;
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 640 } });
  page.on("pageerror", (err) => pageErrors.push(String(err).slice(0, 500)));
  page.on("console", (msg) => {
    if (msg.type() === "error") pageErrors.push(`console: ${msg.text().slice(0, 500)}`);
  });
  await page.goto(cfg.pageUrl, { timeout });
  // Snapshot first: every watched row holds a value before any tick was produced.
  await page.waitForFunction(() => {
    const d = window.demoState;
    return d && d.clientLoaded && d.state === "connected" && d.tokens.length > 0
      && d.tokens.every((t) => d.rows[t].kind !== "waiting" && typeof d.rows[t].latencyMs === "number");
  }, null, { timeout, polling: 50 });
  emit("snapshots", { ...(await snapshot(page)), pageErrors });
  const lines = createInterface({ input: process.stdin });
  for await (const line of lines) {
    if (!line.trim()) continue;
    const cmd = JSON.parse(line);
    if (cmd.op === "done") break;
    await step(page, cmd);
  }
} catch (err) {
  code = 1;
  let state = null;
  try {
    state = await browser.contexts()[0]?.pages()[0]?.evaluate(() => window.demoState ?? null);
  } catch { /* the page is gone */ }
  emit("error", { message: String(err?.stack ?? err).slice(0, 2000), state, pageErrors });
} finally {
  await browser.close();
}
process.exit(code);
