// The page at / in a real browser: headless Chromium (Debian's package, no browser download)
// driven by playwright-core. It uploads a real photo through the page and waits for every
// rendition to be shown, decoded, with its caption; with PRESET, the preset picked on the page is
// rendered on request and shown too; with a key, a wrong key must show the `unauthorized` code.
// Saves a screenshot.
//
// node tests/browser/try-page.mjs BASE_URL KEY PREFIX RENDITIONS SCREENSHOT [PRESET]
// (KEY may be "" for a pixbox without keys; PREFIX "" for the default route.)
import { chromium } from "playwright-core";

const [base, key, prefix, renditions, screenshot, preset] = process.argv.slice(2);
const expected = Number(renditions);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  // Root in a container cannot use Chromium's sandbox; the page is our own, on loopback.
  args: ["--no-sandbox"],
});
const fail = async (message) => {
  await page.screenshot({ path: screenshot, fullPage: true }).catch(() => {});
  console.error(`try-page: ${message} (screenshot: ${screenshot})`);
  await browser.close();
  process.exit(1);
};
const page = await browser.newPage({ viewport: { width: 1100, height: 760 } });
const errors = [];
page.on("pageerror", (e) => errors.push(e.message));
await page.goto(base + "/");
await page.fill("#key", key);
await page.selectOption("#prefix", prefix);
if (preset) await page.selectOption("#preset", preset);
const started = Date.now();
await page.setInputFiles("#files", "tests/fixtures/cups-srgb.jpg");
try {
  await page.waitForFunction(
    (n) =>
      [...document.querySelectorAll(".renditions figure:not(.preset) img")].filter((i) => i.complete && i.naturalWidth > 0)
        .length >= n,
    expected,
    { timeout: 60_000 },
  );
} catch (e) {
  await fail(`${expected} renditions did not appear: ${await page.locator("#jobs").innerText()}`);
}
const captions = await page.$$eval(".renditions figure:not(.preset) figcaption", (els) => els.map((e) => e.textContent));
const states = await page.$$eval("#jobs .state", (els) => els.map((e) => e.textContent));
if (captions.length !== expected || !captions.every((c) => /\d+x\d+ image\/\w+, [\d.]+ KiB/.test(c))) {
  await fail(`captions: ${JSON.stringify(captions)}`);
}
if (!states.some((s) => s.endsWith(": done"))) await fail(`states: ${JSON.stringify(states)}`);
if (preset) {
  try {
    await page.waitForSelector("figure.preset figcaption", { timeout: 30_000 });
  } catch (e) {
    await fail(`preset ${preset} did not appear: ${await page.locator("#jobs").innerText()}`);
  }
  const caption = await page.textContent("figure.preset figcaption");
  if (!new RegExp(`^preset ${preset}: \\d+x\\d+ image/\\w+, [\\d.]+ KiB, \\d+ ms$`).test(caption)) await fail(`preset caption: ${caption}`);
  console.log(`try-page: ${caption}`);
}
await page.screenshot({ path: screenshot, fullPage: true });
console.log(`try-page: ${expected} renditions shown ${Date.now() - started} ms after the drop: ${captions.join("; ")}`);

if (key) {
  // Auth on: a wrong key is refused, and the page says so with the code.
  await page.fill("#key", "pbx_wrong");
  await page.setInputFiles("#files", "tests/fixtures/cups-srgb.jpg");
  try {
    await page.waitForSelector("#jobs .error >> text=unauthorized", { timeout: 10_000 });
  } catch (e) {
    await fail(`no unauthorized error shown: ${await page.locator("#jobs").innerText()}`);
  }
  console.log("try-page: a wrong key shows the unauthorized code");
}
if (errors.length) await fail(`page errors: ${errors.join("; ")}`);
await browser.close();
