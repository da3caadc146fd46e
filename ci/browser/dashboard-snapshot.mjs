// Opens the clima dashboard in headless Chromium, waits until a live update
// (server-sent event) has been rendered, prints every number the page shows
// as JSON ({"redis.total": 123, "valkey.country.GT": 45, ...}) and saves a
// screenshot.
//
//   node ci/browser/dashboard-snapshot.mjs URL SCREENSHOT.png
//
// CLIMA_CHROMIUM names the browser binary (default /usr/bin/chromium).
import { chromium } from "playwright-core";

const [url, screenshot] = process.argv.slice(2);
if (!url || !screenshot) {
  console.error("usage: dashboard-snapshot.mjs URL SCREENSHOT.png");
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: process.env.CLIMA_CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1300 } });
  const problems = [];
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("requestfailed", (request) => {
    // The event stream is cut when the browser closes; anything else is a real failure.
    if (!request.url().includes("/api/stats/stream")) problems.push(`request failed: ${request.url()}`);
  });
  await page.goto(url);
  await page.waitForSelector("body[data-ready=true]", { timeout: 20000 });
  await page.waitForSelector("#status.live", { timeout: 20000 });
  const shown = await page.$$eval("[data-stat]", (nodes) =>
    Object.fromEntries(nodes.map((node) => [node.dataset.stat, Number(node.textContent.replaceAll(",", ""))])));
  await page.screenshot({ path: screenshot, fullPage: true });
  if (problems.length) throw new Error(problems.join("\n"));
  console.log(JSON.stringify(shown));
} finally {
  await browser.close();
}
