// The chat page's Content-Security-Policy and its question before a download from another site,
// in Chromium (WebGPU on SwiftShader):
// 1. the built page carries the policy; a same-origin ?model= loads and replies with not one
//    policy violation; a script or event handler injected into the page is refused;
// 2. ?model= naming a second origin shows that origin and the download size and fetches no
//    tokenizer and no shard until the visitor says Download; Cancel goes back to the picker.
//
// Usage: node run.mjs csp   (after `bash scripts/build-site.sh` with the demo model in www/models/demo)
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { root } from './harness.mjs';

const dist = path.join(root, 'dist');
const LOAD_TIMEOUT = 300_000;
const DIRECTIVES = ["default-src 'self'", "script-src 'self' 'wasm-unsafe-eval'", "object-src 'none'", "base-uri 'none'"];

/** A page that records every CSP violation (in window.__violations) and every page error. */
async function openPage(context) {
    const page = context.pages()[0] ?? await context.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
    await page.addInitScript(() => {
        window.__violations = [];
        document.addEventListener('securitypolicyviolation',
            (e) => window.__violations.push(`${e.effectiveDirective} ${e.blockedURI}`));
    });
    return { page, errors };
}

async function violations(page) {
    return page.evaluate(() => window.__violations);
}

async function sendAndWait(page, text) {
    await page.locator('textarea.prompt').fill(text);
    await page.locator('textarea.prompt').press('Enter');
    await page.waitForFunction(() => {
        const m = document.querySelector('.message.model');
        return m && m.dataset.done === 'true' && !document.querySelector('button.stop');
    }, null, { timeout: LOAD_TIMEOUT });
}

async function samePage(t) {
    const server = await t.serve({ '/': dist });
    const context = await t.browser();
    const { page, errors } = await openPage(context);
    await page.goto(`${server.url}/?model=models/demo/`);
    await page.waitForSelector('section.chat', { timeout: LOAD_TIMEOUT });
    const policy = await page.getAttribute('meta[http-equiv="Content-Security-Policy"]', 'content');
    for (const directive of DIRECTIVES) assert.ok(policy.includes(directive), `${directive} in ${policy}`);
    assert.equal(await page.locator('script:not([src])').count(), 0, 'no inline script in the page');
    await page.locator('.settings .max-tokens input').fill('8');
    await page.locator('.settings .max-tokens input').dispatchEvent('change');
    await sendAndWait(page, 'Hello there.');
    assert.deepEqual(await violations(page), [], 'loading and a reply break no rule of the policy');
    assert.deepEqual(errors, [], 'no page errors');
    t.log('same-origin model loads and replies under the policy with no violation');

    // What an injection would try: an inline script, an inline event handler, an object.
    await page.evaluate(() => {
        const script = document.createElement('script');
        script.textContent = 'window.__injected = "script"';
        document.body.append(script);
        document.body.insertAdjacentHTML('beforeend',
            '<img src="/no-such-image.png" onerror="window.__injected = \'handler\'">'
            + '<object data="/models.json" type="text/html"></object>');
    });
    await page.waitForFunction(() => window.__violations.length >= 3, null, { timeout: 10_000 });
    assert.equal(await page.evaluate(() => window.__injected), undefined, 'no injected code ran');
    const refused = (await violations(page)).join('\n');
    for (const directive of ['script-src-elem inline', 'script-src-attr inline', 'object-src']) {
        assert.ok(refused.includes(directive), `${directive} refused:\n${refused}`);
    }
    t.log('an injected script, event handler and object are refused');
}

async function otherOrigin(t) {
    const server = await t.serve({ '/': dist });
    // The demo model, served from a second origin (another port: another origin to the browser).
    const host = await t.serve({ '/': path.join(dist, 'models') });
    const manifest = JSON.parse(fs.readFileSync(path.join(dist, 'models/demo/manifest.json'), 'utf8'));
    const total = manifest.shards.reduce((sum, s) => sum + s.bytes, manifest.tokenizer?.bytes ?? 0);
    const context = await t.browser();
    const { page, errors } = await openPage(context);
    const link = `${server.url}/?model=${encodeURIComponent(`${host.url}/demo/`)}`;
    await page.goto(link);
    const ask = page.locator('section.confirm-download');
    await ask.waitFor({ timeout: 60_000 });
    assert.equal(await ask.locator('.origin').innerText(), host.url, 'the question names the origin');
    assert.equal(Number(await ask.locator('.size').getAttribute('data-bytes')), total, 'and the size');
    const fetched = () => host.requests.map((r) => r.path);
    assert.deepEqual(fetched(), ['/demo/manifest.json'], 'only the manifest is read before the yes');
    await page.screenshot({ path: path.join(t.screenshots, 'confirm-download.png') });

    await ask.locator('button.cancel').click();
    await page.waitForSelector('.picker', { timeout: 10_000 });
    assert.deepEqual(fetched(), ['/demo/manifest.json'], 'Cancel downloads nothing');
    t.log(`a link to ${host.url} asks first (${total} B), and Cancel downloads nothing`);

    await page.goto(link);
    await ask.waitFor({ timeout: 60_000 });
    await ask.locator('button.download').click();
    await page.waitForSelector('section.chat', { timeout: LOAD_TIMEOUT });
    assert.ok(fetched().some((p) => p.endsWith('.safetensors')), `shards come after the yes: ${fetched()}`);
    assert.deepEqual(await violations(page), [], 'a model from another origin loads under the policy');
    assert.deepEqual(errors, [], 'no page errors');
    t.log('after Download the model loads from the other origin');
}

/** Asking goes by the model's address, not its origin: a model on the page's own origin but
 * outside its folder is asked about; one under the folder is not. And inside another site's frame
 * the page does not ask at all (the question could be overlaid, the click on Download disguised). */
async function byFolderAndNotInFrames(t) {
    const server = await t.serve({ '/': dist });
    const site = await t.serve({ '/app/': dist, '/elsewhere/': path.join(dist, 'models') });
    const framer = t.tempDir('rg-framer-');
    const framed = `${server.url}/?model=${encodeURIComponent(`${site.url}/elsewhere/demo/`)}`;
    fs.writeFileSync(path.join(framer, 'index.html'), `<!doctype html><iframe src="${framed}" width="900" height="600"></iframe>`);
    const outside = await t.serve({ '/': framer });
    const context = await t.browser();
    const { page, errors } = await openPage(context);
    await page.goto(`${site.url}/app/?model=${encodeURIComponent('/elsewhere/demo/')}`);
    const ask = page.locator('section.confirm-download');
    await ask.waitFor({ timeout: 60_000 });
    assert.equal(await ask.locator('.origin').innerText(), site.url, 'the same origin as the page, and still asked');
    await ask.locator('button.cancel').click();
    await page.goto(`${site.url}/app/?model=models/demo/`);
    await page.waitForSelector('section.chat', { timeout: LOAD_TIMEOUT });
    assert.deepEqual(errors, [], 'no page errors');
    t.log('a model outside the page\'s folder is asked about, on its own origin too; one under it is not');

    await page.goto(outside.url);
    const frame = page.frameLocator('iframe');
    await frame.locator('section.load-failed').waitFor({ timeout: 60_000 });
    assert.match(await frame.locator('section.load-failed .why').innerText(), /inside another site's frame/);
    assert.equal(await frame.locator('section.confirm-download').count(), 0, 'no question inside a frame');
    assert.ok(!site.requests.some((r) => r.path.startsWith('/elsewhere/') && r.path.endsWith('.safetensors')), 'nothing downloaded');
    t.log('inside another site\'s frame the page does not offer to download from another site');
}

export default [
    { name: 'csp (same origin, injections)', run: samePage },
    { name: 'csp (another origin asked first)', run: otherOrigin },
    { name: 'csp (asked by folder, never in a frame)', run: byFolderAndNotInFrames },
].map((c) => ({ ...c, needs: ['site'] }));
