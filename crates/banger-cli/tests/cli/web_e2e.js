// The web UI in a real browser: Debian's chromium, driven by playwright-core. Run by the CLI
// test `web::in_a_browser_a_vm_is_created_watched_stopped_and_deleted` with PLAYWRIGHT_CORE
// (the package dir), CHROMIUM, LOGIN_URL (the daemon's link with its token), SHOTS (the
// screenshot dir), OPEN_PAGE (the file:// page `banger ui` gives a browser) and IMAGE (an
// image the daemon has). Prints "all steps passed" at the end.
"use strict";
const { chromium } = require(process.env.PLAYWRIGHT_CORE);
const assert = require("node:assert/strict");
const path = require("node:path");

const login = process.env.LOGIN_URL;
const base = new URL(login).origin;
const shots = process.env.SHOTS;
let step = "start";
let current = null; // the page, for a screenshot and its text when a step fails

function say(s) {
  step = s;
  console.log("step: " + s);
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(shots, name + ".png"), fullPage: true });
}

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu"],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  current = page;
  const problems = [];
  page.on("console", (m) => { if (m.type() === "error") problems.push(m.text()); });
  page.on("pageerror", (e) => problems.push(String(e)));
  page.setDefaultTimeout(30000);

  say("open the dashboard through the page banger ui writes");
  await page.goto(process.env.OPEN_PAGE);
  await page.waitForURL(base + "/");
  assert.equal(page.url(), base + "/", "the token is gone from the address bar");
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === "banger_session");
  assert.ok(session && session.httpOnly && session.sameSite === "Strict", JSON.stringify(cookies));
  assert.match(await page.textContent("#count-running"), /^0 running/);
  await shot(page, "dashboard");

  say("the create form");
  await page.click("nav >> text=Create");
  await page.waitForURL(base + "/vms/new");
  await page.fill("#name", "web1");
  await page.selectOption("#image", process.env.IMAGE);
  await page.fill("#memory", "256M");
  await page.fill("#cpus", "1");
  // The picker lists the home's directories; choosing one fills the workspace field.
  await page.click("a:has-text('Browse…')");
  await page.waitForURL(/\/browse/);
  await page.click("ul.dirs a:has-text('proj/')");
  await shot(page, "browse");
  await page.click("a:has-text('Use this directory')");
  await page.waitForURL(/\/vms\/new\?workspace=/);
  assert.match(await page.inputValue("#workspace"), /\/user\/proj$/);
  await page.fill("#name", "web1");
  await page.selectOption("#image", process.env.IMAGE);
  await page.fill("#memory", "256M");
  await page.fill("#cpus", "1");
  await shot(page, "create-form");

  say("create: the stages reach ready");
  await page.click("button:has-text('Create')");
  await page.waitForURL(/\/ops\/[0-9a-f]{12}$/);
  await page.waitForSelector("#outcome .done", { timeout: 90000 });
  const stages = await page.$$eval("#stages li .stage", (els) => els.map((e) => e.textContent));
  assert.ok(stages.includes("resolve image"), stages.join(", "));
  assert.ok(stages.length >= 3, stages.join(", "));
  assert.match(await page.textContent("#outcome"), /VM web1 is ready/);
  assert.equal(await page.$("#cancel"), null, "no cancel button once it ended");
  await shot(page, "create-stages");

  say("the VM's detail page");
  await page.click("#outcome a:has-text('Open')");
  await page.waitForURL(base + "/vms/web1");
  assert.match(await page.textContent("main"), /running/);
  assert.match(await page.textContent("main"), /web1\.vm/);
  assert.match(await page.textContent("main"), /\/user\/proj/, "the workspace was prepared");
  assert.match(await page.textContent("main"), /\/root\/repo/);
  await shot(page, "vm-detail");

  say("the VM list and the dashboard's counts");
  await page.goto(base + "/vms");
  const row = await page.textContent("#vms tbody");
  assert.match(row, /web1/);
  assert.match(row, /running/);
  assert.match(row, new RegExp(process.env.IMAGE));
  await shot(page, "vm-list");
  await page.goto(base + "/");
  assert.match(await page.textContent("#count-running"), /^1 running/);
  assert.match(await page.textContent("main"), /create VM web1/);

  say("the console log");
  await page.goto(base + "/vms/web1");
  await page.click("text=Console log");
  await page.waitForURL(base + "/vms/web1/log");
  await page.waitForSelector("pre#log");
  assert.match(await page.textContent("pre#log"), /Linux version/);
  // What the guest writes next appears without a reload.
  const logPath = await page.textContent("#log-path");
  require("node:fs").appendFileSync(logPath, "web-ui-follow-marker <b>escaped</b>\n");
  await page.waitForFunction(() => document.querySelector("pre#log").textContent.includes("web-ui-follow-marker <b>escaped</b>"));
  assert.equal(await page.$("pre#log b"), null, "log text is text, never markup");
  await shot(page, "vm-log");

  say("stop behind its confirmation");
  await page.goto(base + "/vms/web1");
  await page.click("a:has-text('Stop…')");
  await page.waitForURL(/\/vms\/web1\/confirm\?action=stop$/);
  assert.match(await page.textContent(".confirm"), /Stop VM web1\?/);
  await shot(page, "confirm-stop");
  await page.click(".confirm button:has-text('Stop')");
  await page.waitForURL(base + "/vms/web1");
  assert.match(await page.textContent("main"), /stopped/);

  say("delete behind its confirmation");
  await page.click("a:has-text('Delete…')");
  await page.waitForURL(/\/vms\/web1\/confirm\?action=delete$/);
  await page.click(".confirm button:has-text('Delete')");
  await page.waitForURL(base + "/vms");
  assert.doesNotMatch(await page.textContent("main"), /web1/);

  say("images, kernels, host");
  await page.goto(base + "/images");
  assert.match(await page.textContent("#images"), new RegExp(process.env.IMAGE));
  await shot(page, "images");
  await page.click(`#images a:has-text('${process.env.IMAGE}')`);
  await shot(page, "image-detail");
  await page.goto(base + "/kernels");
  await shot(page, "kernels");
  await page.goto(base + "/host");
  assert.match(await page.textContent("main"), /privilege/);
  await shot(page, "host");

  say("a narrow window");
  await page.setViewportSize({ width: 390, height: 844 });
  for (const [p, name] of [["/", "narrow-dashboard"], ["/vms/new", "narrow-create"], ["/images", "narrow-images"]]) {
    await page.goto(base + p);
    const wide = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(wide <= 391, `${p} is ${wide}px wide at 390px`);
    await shot(page, name);
  }

  say("the keyboard alone");
  await page.setViewportSize({ width: 1280, height: 800 });
  await page.goto(base + "/");
  await page.keyboard.press("Tab");
  assert.equal(await page.evaluate(() => document.activeElement.textContent), "Skip to content");
  await page.keyboard.press("Tab"); // Dashboard
  await page.keyboard.press("Tab"); // VMs
  assert.equal(await page.evaluate(() => document.activeElement.textContent), "VMs");
  await page.keyboard.press("Enter");
  await page.waitForURL(base + "/vms");

  assert.deepEqual(problems, [], "no script errors or CSP violations");
  await browser.close();
  console.log("all steps passed");
})().catch(async (e) => {
  console.error(`failed at step "${step}":`, e);
  if (current) {
    console.error("at " + current.url() + ":\n" + (await current.textContent("body").catch(() => "")));
    await shot(current, "failure").catch(() => {});
  }
  process.exit(1);
});
