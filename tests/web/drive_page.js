#!/usr/bin/env node
// Drives qdiff serve's web page in headless Chromium like a person would: types into
// the form, picks the sampler, clicks Generate (twice, two seeds), waits for the image,
// and saves a screenshot. Speaks the Chrome DevTools protocol over --remote-debugging-pipe
// (fd 3 in, fd 4 out, messages separated by NUL), so it needs only Node's standard library.
//
// usage: node drive_page.js CHROMIUM URL OUTDIR [INIT.png [MASK.png [WIDE.png]]]
// writes OUTDIR/screenshot.png, OUTDIR/result-K.png (K = 1..6: the images made), OUTDIR/state.json
// (what the page showed); exits non-zero with a message when something is missing.
"use strict";
const {spawn} = require("child_process");
const fs = require("fs");
const os = require("os");
const path = require("path");

const [chromium, url, outdir, initPath, maskPath, widePath] = process.argv.slice(2);
const profile = fs.mkdtempSync(path.join(os.tmpdir(), "qdiff-web-"));
const browser = spawn(chromium, [
  "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
  "--disable-dev-shm-usage", "--remote-debugging-pipe", `--user-data-dir=${profile}`,
  "--window-size=1280,900", "about:blank",
], {stdio: ["ignore", "ignore", "pipe", "pipe", "pipe"]});
let browserLog = "";
browser.stderr.on("data", (d) => { browserLog += d; });

let nextId = 1, inbuf = Buffer.alloc(0);
const pending = new Map(), waiters = [];
browser.stdio[4].on("data", (chunk) => {
  inbuf = Buffer.concat([inbuf, chunk]);
  let nul;
  while ((nul = inbuf.indexOf(0)) >= 0) {
    const msg = JSON.parse(inbuf.subarray(0, nul).toString("utf8"));
    inbuf = inbuf.subarray(nul + 1);
    if (msg.id && pending.has(msg.id)) {
      const {resolve, reject, method} = pending.get(msg.id);
      pending.delete(msg.id);
      if (msg.error) reject(new Error(`${method}: ${msg.error.message}`));
      else resolve(msg.result);
    } else if (msg.method) {
      for (const w of waiters.slice()) if (w.method === msg.method) { waiters.splice(waiters.indexOf(w), 1); w.resolve(msg.params); }
    }
  }
});

function send(method, params = {}, sessionId) {
  const id = nextId++;
  const msg = {id, method, params};
  if (sessionId) msg.sessionId = sessionId;
  browser.stdio[3].write(JSON.stringify(msg) + "\0");
  return new Promise((resolve, reject) => pending.set(id, {resolve, reject, method}));
}
const waitEvent = (method) => new Promise((resolve) => waiters.push({method, resolve}));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function fail(msg) {
  console.error("drive_page: " + msg);
  if (browserLog) console.error("chromium said: " + browserLog.slice(-2000));
  browser.kill("SIGKILL");
  try { fs.rmSync(profile, {recursive: true, force: true, maxRetries: 5}); } catch (e) { /* a temp dir left behind */ }
  process.exit(1);
}
setTimeout(() => fail("timed out after 600 s"), 600000).unref();
browser.on("error", (e) => fail(`cannot start ${chromium}: ${e.message}`));

async function main() {
  const {targetId} = await send("Target.createTarget", {url: "about:blank"});
  const {sessionId: s} = await send("Target.attachToTarget", {targetId, flatten: true});
  const page = (method, params) => send(method, params, s);
  const evaluate = async (expr) => {
    const r = await page("Runtime.evaluate", {expression: expr, awaitPromise: true, returnByValue: true});
    if (r.exceptionDetails) throw new Error(`page script failed: ${expr}: ${JSON.stringify(r.exceptionDetails).slice(0, 500)}`);
    return r.result.value;
  };
  const until = async (expr, what, ms = 300000) => {
    const t0 = Date.now();
    for (;;) {
      const v = await evaluate(expr);
      if (v) return v;
      if (Date.now() - t0 > ms) fail(`timed out waiting for ${what}; page status: ${await evaluate("document.getElementById('status').textContent + ' / ' + document.getElementById('error').textContent")}`);
      await sleep(100);
    }
  };
  // typing: focus the field, select what is there, insert text as the keyboard would
  const type = async (id, text) => {
    await evaluate(`(() => { const e = document.getElementById(${JSON.stringify(id)}); e.focus(); e.select && e.select(); })()`);
    await page("Input.insertText", {text});
  };
  const click = async (id) => {
    const box = await evaluate(`(() => { const e = document.getElementById(${JSON.stringify(id)});
                                        e.scrollIntoView({block: "center"}); const r = e.getBoundingClientRect();
                                        return {x: r.x + r.width / 2, y: r.y + r.height / 2}; })()`);
    for (const type of ["mousePressed", "mouseReleased"])
      await page("Input.dispatchMouseEvent", {type, x: box.x, y: box.y, button: "left", clickCount: 1});
  };

  // click Generate, wait for the n-th image of the session, read what the page shows
  const generated = async (n, what) => {
    await click("generate");
    await until(`document.getElementById('history').children.length === ${n} && !document.getElementById('generate').disabled`, what);
    return evaluate(`(() => { const i = document.querySelector('#view img.result');
        return {src: i.src, w: i.naturalWidth, h: i.naturalHeight, params: document.getElementById('params').textContent,
                error: document.getElementById('error').textContent}; })()`);
  };

  await page("Page.enable");
  await page("Runtime.enable");
  await page("Emulation.setDeviceMetricsOverride", {width: 1280, height: 900, deviceScaleFactor: 1, mobile: false});
  const loaded = waitEvent("Page.loadEventFired");
  await page("Page.navigate", {url});
  await loaded;
  // the lists come from /sdapi/v1/samplers, schedulers and sd-models
  const nSamplers = await until("document.getElementById('sampler').options.length > 1 && document.getElementById('sampler').options.length", "the sampler list");
  await until("/: ready/.test(document.getElementById('server').textContent) || /: ok/.test(document.getElementById('server').textContent)", "the model to be ready");

  await type("prompt", "a red circle on a blue background");
  await type("negative", "blurry");
  await type("width", "64");
  await type("height", "64");
  await type("steps", "100");
  await type("cfg", "5");
  await type("seed", "1234");
  // choose "Euler a" as a person would pick it from the list
  await evaluate(`(() => { const s = document.getElementById('sampler'); s.focus();
                          s.value = 'Euler a'; s.dispatchEvent(new Event('change', {bubbles: true})); return s.value; })()`);
  // watch for the live preview while the image is made
  await evaluate(`window.sawPreview = 0; new MutationObserver(() => { const p = document.getElementById('preview');
                    if (p && p.src.startsWith('data:image/png;base64,')) window.sawPreview++; })
                    .observe(document.body, {subtree: true, childList: true, attributes: true, attributeFilter: ['src']}); 1`);
  let sawProgress = false;
  await click("generate");
  const t0 = Date.now();
  for (;;) {   // live progress text while it runs
    const st = await evaluate("document.getElementById('status').textContent");
    if (/^step \d+\/\d+/.test(st)) sawProgress = true;
    if (await evaluate("!!document.querySelector('#view img.result') && document.querySelector('#view img.result').complete")) break;
    if (await evaluate("document.getElementById('error').textContent")) fail("the page shows an error: " + await evaluate("document.getElementById('error').textContent"));
    if (Date.now() - t0 > 300000) fail("no image after 300 s: " + st);
    await sleep(50);
  }
  const first = await evaluate(`(() => { const i = document.querySelector('#view img.result');
      return {src: i.src, w: i.naturalWidth, h: i.naturalHeight, params: document.getElementById('params').textContent,
              status: document.getElementById('status').textContent}; })()`);

  // a second image: new seed, the history keeps both
  await type("seed", "99");
  await type("steps", "8");
  await click("generate");
  await until("document.getElementById('history').children.length === 2 && !document.getElementById('generate').disabled", "the second image");
  const state = await evaluate(`(() => { const i = document.querySelector('#view img.result');
      return {src: i.src, w: i.naturalWidth, h: i.naturalHeight, params: document.getElementById('params').textContent,
              history: document.getElementById('history').children.length, status: document.getElementById('status').textContent}; })()`);
  // show the first image again from the history (as a person clicking its thumbnail), then the screenshot
  await evaluate("document.getElementById('history').children[1].click(); 1");
  await sleep(200);
  const shown = await evaluate("document.querySelector('#view img.result').src === document.getElementById('history').children[1].src");
  // image-to-image: a picture through the file input, denoising strength 0.5, a third image
  await page("DOM.enable");
  const {root} = await page("DOM.getDocument", {});
  const {nodeId} = await page("DOM.querySelector", {nodeId: root.nodeId, selector: "#init"});
  await page("DOM.setFileInputFiles", {nodeId, files: [initPath]});
  await type("strength", "0.5");
  await type("seed", "7");
  await type("steps", "10");
  const third = await generated(3, "the img2img image");
  // inpainting: the same picture with a mask file (blur 0), a fourth image
  let fourth = null, fifth = null;
  if (maskPath) {
    const m = await page("DOM.querySelector", {nodeId: root.nodeId, selector: "#mask"});
    await page("DOM.setFileInputFiles", {nodeId: m.nodeId, files: [maskPath]});
    await type("maskblur", "0");
    await type("strength", "0.75");
    fourth = await generated(4, "the inpainted image");
    // "Only masked" with a padding of 8, a fifth image
    await click("onlymasked");
    await type("maskpad", "8");
    fifth = await generated(5, "the only-masked image");
  }
  // image-to-image from a wider picture, "crop and resize", no mask: a sixth image
  let sixth = null;
  if (maskPath && widePath) {
    // take the mask away as a person would clear the field (a file input can be emptied)
    await evaluate(`(() => { const e = document.getElementById('mask'); e.value = '';
                            e.dispatchEvent(new Event('change', {bubbles: true})); return e.files.length; })()`);
    await click("onlymasked");
    await page("DOM.setFileInputFiles", {nodeId, files: [widePath]});
    await evaluate(`(() => { const s = document.getElementById('resizemode'); s.focus();
                            s.value = '1'; s.dispatchEvent(new Event('change', {bubbles: true})); return s.value; })()`);
    await type("strength", "0.5");
    sixth = await generated(6, "the crop-and-resize image");
  }
  const shot = await page("Page.captureScreenshot", {format: "png"});
  fs.writeFileSync(path.join(outdir, "screenshot.png"), Buffer.from(shot.data, "base64"));
  const png = (src) => Buffer.from(src.replace(/^data:image\/png;base64,/, ""), "base64");
  fs.writeFileSync(path.join(outdir, "result-1.png"), png(first.src));
  fs.writeFileSync(path.join(outdir, "result-2.png"), png(state.src));
  fs.writeFileSync(path.join(outdir, "result-3.png"), png(third.src));
  if (fourth) fs.writeFileSync(path.join(outdir, "result-4.png"), png(fourth.src));
  if (fifth) fs.writeFileSync(path.join(outdir, "result-5.png"), png(fifth.src));
  if (sixth) fs.writeFileSync(path.join(outdir, "result-6.png"), png(sixth.src));
  const report = {
    samplers: nSamplers, sawPreview: await evaluate("window.sawPreview"), sawProgress,
    first: {w: first.w, h: first.h, params: first.params, status: first.status},
    second: {w: state.w, h: state.h, params: state.params, status: state.status},
    history: state.history, historyClickShows: shown,
    third: {w: third.w, h: third.h, params: third.params, error: third.error},
    fourth: fourth ? {w: fourth.w, h: fourth.h, params: fourth.params, error: fourth.error} : null,
    fifth: fifth ? {w: fifth.w, h: fifth.h, params: fifth.params, error: fifth.error} : null,
    sixth: sixth ? {w: sixth.w, h: sixth.h, params: sixth.params, error: sixth.error} : null,
  };
  fs.writeFileSync(path.join(outdir, "state.json"), JSON.stringify(report, null, 1));
  console.log(JSON.stringify(report));
  const exited = new Promise((r) => browser.once("exit", r));
  await send("Browser.close").catch(() => {});
  await Promise.race([exited, sleep(10000)]);
  browser.kill("SIGKILL");
  try { fs.rmSync(profile, {recursive: true, force: true, maxRetries: 5}); } catch (e) { /* a temp dir left behind */ }
  process.exit(0);
}
main().catch((e) => fail(e.stack || String(e)));
