// Browser test of the web console: Debian chromium driven by playwright-core against a real
// stack (scripts/test-web starts devstack, the processor and status-api, then runs this).
//
// Environment:
//   CONSOLE_URL      status-api base URL, e.g. http://127.0.0.1:18080
//   USER_A, PASS_A   an account whose photos are uploaded
//   USER_B, PASS_B   another account, which must not see USER_A's data
//   PHOTOS           photo paths separated by ':' (uploaded through the Upload page)
//   EXPECT_FAILED    how many of PHOTOS must fail the thumbnail stage (e.g. a truncated file)
//   EXPECT_INDEXING  1 when the embed stage runs (banners go processing → indexing → done)
//   SETTINGS_PHOTO   a photo uploaded after changing the thumbnail size on the Settings page
//                    (USER_A must be an operator, USER_B must not)
//   EXPECT_FACES     1 when one of PHOTOS has faces (the Gallery must show boxes)
//   ARTIFACTS        directory for screenshots
//   CHROMIUM         browser binary (default /usr/bin/chromium)
import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const env = (k, d) => {
  const v = process.env[k] ?? d;
  if (v === undefined) throw new Error(`${k} is not set`);
  return v;
};
const BASE = env('CONSOLE_URL');
const [USER_A, PASS_A, USER_B, PASS_B] = ['USER_A', 'PASS_A', 'USER_B', 'PASS_B'].map((k) => env(k));
const PHOTOS = env('PHOTOS').split(':').filter(Boolean);
const EXPECT_FAILED = Number(env('EXPECT_FAILED', '0'));
const EXPECT_INDEXING = env('EXPECT_INDEXING', '1') === '1';
const ARTIFACTS = env('ARTIFACTS', 'tests-artifacts/web');
const TIMEOUT = Number(env('WEB_TEST_TIMEOUT_MS', '120000'));
fs.mkdirSync(ARTIFACTS, { recursive: true });

const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

const started = Date.now();
function step(what) {
  console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s] ${what}`);
}

/** A browser with a fresh profile; every console error and page error is collected. */
async function openBrowser(name) {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), `console-test-${name}-`));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: env('CHROMIUM', '/usr/bin/chromium'),
    headless: true,
    args: ARGS,
    viewport: { width: 1280, height: 900 },
  });
  const page = context.pages()[0] || await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  const errors = [];
  let allowed = [];
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return;
    const text = msg.text();
    if (allowed.some((re) => re.test(text))) return;
    errors.push(`${page.url()}: ${text}`);
  });
  page.on('pageerror', (e) => errors.push(`${page.url()}: uncaught ${e.message}`));
  return {
    context, page, errors,
    /** Run `fn` with console errors matching `res` expected (e.g. a deliberate 401). */
    async expecting(res, fn) { allowed = res; try { return await fn(); } finally { allowed = []; } },
    async close() { await context.close(); fs.rmSync(profile, { recursive: true, force: true }); },
  };
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage: true });
}

async function signIn(b, user, password) {
  const { page } = b;
  await page.goto(`${BASE}/upload`);
  await page.waitForURL(/\/login\?next=%2Fupload$/);
  // Keyboard: the user field has focus, Tab moves to the password, Enter submits.
  await page.waitForSelector('#user:focus');
  await page.keyboard.type(user);
  await page.keyboard.press('Tab');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'password');
  await page.keyboard.type(password);
  await page.keyboard.press('Enter');
  await page.waitForURL(`${BASE}/upload`);
  await page.waitForSelector('#signed-in-as');
  assert.equal(await page.textContent('#signed-in-as'), user);
}

async function bannerTexts(page) {
  return page.evaluate(() => window.__bannerLog);
}

async function main() {
  const a = await openBrowser('a');
  const { page } = a;

  step('sign-in page: a wrong password is refused with a visible error');
  await page.goto(`${BASE}/gallery`);
  await page.waitForURL(/\/login\?next=%2Fgallery$/);
  await page.fill('#user', USER_A);
  await page.fill('#password', 'not-the-password');
  await a.expecting([/status of 401/], async () => {
    await page.click('#sign-in');
    await page.waitForFunction(() => document.getElementById('login-error').textContent.includes('Wrong'));
  });
  assert.equal(await page.getAttribute('#login-error', 'role'), 'alert');
  assert.equal(await page.getAttribute('label[for=user]', 'for'), 'user');
  await shot(page, 'login');

  step(`sign in as ${USER_A} with the keyboard`);
  await signIn(a, USER_A, PASS_A);
  const cookies = await a.context.cookies();
  const session = cookies.find((c) => c.name === 'pp_session');
  assert.ok(session && session.httpOnly && session.sameSite === 'Strict', JSON.stringify(cookies));
  assert.equal(await page.evaluate(() => document.cookie.includes('pp_session')), false, 'HttpOnly');

  step(`upload ${PHOTOS.length} photos through the Upload page`);
  await page.waitForSelector('#banner-idle:not([hidden])');
  // Record every banner title shown, to check the order processing → indexing → done.
  await page.evaluate(() => {
    window.__bannerLog = [];
    const record = () => {
      for (const id of ['banner-processing', 'banner-indexing', 'banner-done', 'banner-failures']) {
        const el = document.getElementById(id);
        const t = el && !el.hidden ? document.getElementById(`${id}-title`).textContent : null;
        if (t && window.__bannerLog[window.__bannerLog.length - 1] !== t) window.__bannerLog.push(t);
      }
    };
    new MutationObserver(record).observe(document.querySelector('.banners'), { subtree: true, childList: true, characterData: true, attributes: true });
  });
  await page.setInputFiles('#files', PHOTOS);
  await page.waitForSelector(`text=Upload ${PHOTOS.length} photos`);
  await page.click('#upload-button');
  await page.waitForFunction((n) => document.getElementById('upload-summary').textContent.startsWith(`Uploaded ${n} of ${n}.`), PHOTOS.length);
  await shot(page, 'upload');

  const ok = PHOTOS.length - EXPECT_FAILED;
  step('status banners reach done');
  await page.waitForSelector('#banner-done:not([hidden])', { timeout: TIMEOUT });
  const log = await bannerTexts(page);
  console.log('  banners seen:', JSON.stringify(log));
  const first = (prefix) => log.findIndex((t) => t.startsWith(prefix));
  assert.ok(first('Processing your photos — ') >= 0, 'a processing banner was shown');
  if (EXPECT_INDEXING && ok > 0) {
    assert.ok(first('Indexing with AI — ') > first('Processing your photos — '), 'indexing after processing');
    const lastIndexing = log.filter((t) => t.startsWith('Indexing with AI — ')).pop();
    assert.ok(lastIndexing.endsWith(` of ${ok}`), `indexing counts against the ${ok} ok thumbnails: ${lastIndexing}`);
  }
  assert.ok(first('Done — ') > first('Processing your photos — '), 'done after processing');
  assert.equal(await page.textContent('#banner-done-title'), `Done — ${ok} of ${PHOTOS.length} photos ready`);
  // Every processing banner counted against all the photos uploaded so far, never more.
  for (const t of log.filter((x) => x.startsWith('Processing'))) {
    const [n, of] = t.replace('Processing your photos — ', '').split(' of ').map(Number);
    assert.ok(n < of && of <= PHOTOS.length, t);
  }
  if (EXPECT_FAILED) {
    assert.equal(await page.textContent('#banner-failures-title'), `${EXPECT_FAILED} failed`);
  }

  step('Status page shows the same done state and the failures with reasons');
  await page.goto(`${BASE}/status`);
  await page.waitForSelector('#banner-done:not([hidden])');
  assert.equal(await page.textContent('#banner-done-title'), `Done — ${ok} of ${PHOTOS.length} photos ready`);
  await page.waitForSelector('#connection:text("Live.")');
  if (EXPECT_FAILED) {
    await page.waitForFunction((n) => document.querySelectorAll('#failure-list li strong').length === n, EXPECT_FAILED);
    console.log('  failures listed:', JSON.stringify(await page.$$eval('#failure-list li', (l) => l.map((x) => x.textContent))));
  }
  await shot(page, 'status');

  step('Gallery shows the thumbnails; face boxes on demand');
  await page.goto(`${BASE}/gallery`);
  await page.waitForFunction((n) => [...document.querySelectorAll('#gallery img')].filter((i) => i.complete && i.naturalWidth > 0).length === n, ok);
  const faces = await page.$$eval('#gallery .face', (l) => l.length);
  console.log(`  ${ok} thumbnails loaded, ${faces} face boxes`);
  assert.equal(await page.$eval('#gallery .face', (f) => getComputedStyle(f).display).catch(() => 'none'), 'none', 'boxes hidden by default');
  await page.focus('#show-faces');
  await page.keyboard.press('Space');
  assert.ok(await page.$eval('#gallery', (g) => g.classList.contains('show-faces')));
  if (env('EXPECT_FACES', '0') === '1') assert.ok(faces > 0, 'face boxes for the photo with faces');
  if (faces > 0) assert.equal(await page.$eval('#gallery .face', (f) => getComputedStyle(f).display), 'block');
  await shot(page, 'gallery');

  step('responsive: no horizontal scrolling at phone width');
  await page.setViewportSize({ width: 375, height: 800 });
  for (const p of ['gallery', 'upload', 'status']) {
    await page.goto(`${BASE}/${p}`);
    await page.waitForSelector('#app > *');
    const over = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(over <= 0, `${p} overflows by ${over}px at 375px`);
  }
  await shot(page, 'gallery-phone');
  await page.setViewportSize({ width: 1280, height: 900 });

  step('Settings: an invalid value is refused; a new thumbnail size takes effect on the next photo');
  await page.goto(`${BASE}/settings`);
  await page.waitForSelector('#setting-thumbnail-quality');
  await page.fill('#setting-thumbnail-quality', '0');
  await page.click('#settings-thumbnail-save');
  await page.waitForSelector('#settings-thumbnail-message.error');
  assert.equal(await page.getAttribute('#setting-thumbnail-quality', 'aria-invalid'), 'true');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'setting-thumbnail-quality');
  await page.fill('#setting-thumbnail-max_width', '160');
  await page.fill('#setting-thumbnail-max_height', '160');
  await page.fill('#setting-thumbnail-quality', '70');
  await page.click('#settings-thumbnail-save');
  await page.waitForSelector('#settings-thumbnail-message.ok');
  await page.waitForFunction((u) => document.querySelector('#settings-history tr td:nth-child(2)')?.textContent === u, USER_A);
  await shot(page, 'settings');
  const settingsPhoto = env('SETTINGS_PHOTO', '');
  if (settingsPhoto) {
    await page.goto(`${BASE}/upload`);
    await page.setInputFiles('#files', [settingsPhoto]);
    await page.click('#upload-button');
    await page.waitForFunction(() => document.getElementById('upload-summary').textContent.startsWith('Uploaded 1 of 1.'));
    const name = path.basename(settingsPhoto);
    let size = null;
    for (const until = Date.now() + TIMEOUT; !size && Date.now() < until;) {
      size = await page.evaluate(async (file) => {
        const s = await (await fetch('/v1/session')).json();
        const r = await fetch(`/v1/users/${s.user}/photos`, { headers: { Authorization: `Bearer ${s.token}` } });
        const p = (await r.json()).photos.find((x) => x.file === file && x.thumbnail_status === 'ok');
        return p ? { w: p.thumbnail_width, h: p.thumbnail_height } : null;
      }, name);
      if (!size) await page.waitForTimeout(500);
    }
    assert.ok(size, `${name} got no thumbnail`);
    const { w, h } = size;
    console.log(`  ${name} thumbnail after the change: ${w}x${h}`);
    assert.ok(Math.max(w, h) === 160, `the new thumbnail fits 160x160 (was 400x400): ${w}x${h}`);
  }

  for (const p of ['home', 'dashboard', 'services']) {
    step(`${p} page renders`);
    await page.goto(`${BASE}/${p === 'home' ? '' : p}`);
    await page.waitForSelector('#app > *');
    if (p === 'services') {
      await page.waitForFunction(() => /[1-9]\d* running/.test(document.querySelector('#service-thumbnail')?.textContent || ''));
      await page.waitForFunction(() => /[1-9]\d* running/.test(document.querySelector('#service-embed')?.textContent || ''));
      assert.match(await page.textContent('#service-thumbnail'), /corrupt_image/, 'the cut-off HEIC\'s failure is listed with its reason');
    }
    if (p === 'dashboard') {
      await page.waitForSelector('#dash-thumb-latency .spark');
      assert.match(await page.textContent('#dash-thumb-latency'), /p95 \d+ ms/);
    }
    await page.waitForTimeout(300);
    await shot(page, p);
  }

  step(`${USER_B} cannot see ${USER_A}'s photos or status`);
  const b = await openBrowser('b');
  await signIn(b, USER_B, PASS_B);
  const tokenB = await b.page.evaluate(async () => (await (await fetch('/v1/session')).json()).token);
  for (const what of ['photos', 'status', 'events']) {
    const r = await fetch(`${BASE}/v1/users/${USER_A}/${what}`, { headers: { Authorization: `Bearer ${tokenB}` } });
    assert.equal(r.status, 403, `${USER_B} reading ${USER_A}'s ${what}`);
    const anon = await fetch(`${BASE}/v1/users/${USER_A}/${what}`);
    assert.equal(anon.status, 401, `anonymous ${what}`);
  }
  const presign = await fetch(`${BASE}/v1/users/${USER_A}/uploads`, {
    method: 'POST', headers: { Authorization: `Bearer ${tokenB}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ files: [{ name: 'x.jpg' }] }),
  });
  assert.equal(presign.status, 403, `${USER_B} presigning under ${USER_A}'s prefix`);
  await b.page.goto(`${BASE}/gallery`);
  await b.page.waitForSelector('#gallery-count:text("No photos yet")');
  await shot(b.page, 'gallery-other-user');
  const cookieB = (await b.context.cookies()).find((c) => c.name === 'pp_session');
  for (const [method, url, body] of [['GET', '/v1/ops/services'], ['GET', '/v1/ops/metrics'], ['GET', '/v1/settings'],
    ['PUT', '/v1/settings', { group: 'faces', values: { min_score: 0.1, min_size_px: 0 } }]]) {
    const r = await fetch(`${BASE}${url}`, { method, headers: { Cookie: `pp_session=${cookieB.value}`, 'Content-Type': 'application/json' }, body: body && JSON.stringify(body) });
    assert.equal(r.status, 403, `${USER_B} (not an operator) ${method} ${url}`);
  }
  await b.page.goto(`${BASE}/settings`);
  await b.page.waitForSelector('#operators-only');
  await b.page.click('#sign-out');
  await b.page.waitForURL(`${BASE}/login`);

  const errors = [...a.errors, ...b.errors];
  await b.close();
  await a.close();
  assert.deepEqual(errors, [], 'no console errors');
  step(`passed; screenshots in ${ARTIFACTS}`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
