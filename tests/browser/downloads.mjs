// End-to-end tests of the page's download path in Chromium against a test server made to
// misbehave (server.mjs): every way a real host or network goes wrong, and a malformed model,
// must end in a loaded model or in one clear line with a Retry, never in a model downloaded
// twice, a poisoned cache or leaked GPU memory. The built site (dist/) is served on one origin;
// the demo model on it and, for the cross-origin case, on a second origin that, like most CDNs,
// does not expose Content-Range. The page loads in the package's worker, which is served with test
// hooks (worker-hooks.mjs): it reports the GPU buffers it makes, and can be made to fail cache writes.
//
// Usage: node run.mjs downloads   (after `bash scripts/build-site.sh` with the demo model in www/models/demo)
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { root } from './harness.mjs';
import { FAIL_SHARD_PUTS, hookedPackage, noEngineWorker } from './worker-hooks.mjs';

const dist = path.join(root, 'dist');
const modelDir = path.join(dist, 'models/demo');
const CACHE = 'recurrentgemma-models-v1';
/** The page keeps a shard's download in cache segments of this size (src/web/download.rs). */
const SEGMENT_BYTES = 8 << 20;
const MAX_MANIFEST_BYTES = 16 << 20;
const LOAD_TIMEOUT = Number(process.env.LOAD_TIMEOUT ?? 300_000);

/**
 * Waits for the load to end, agreeing to download from another site if the page asks;
 * `{ ready: true }` or `{ failed: message }`.
 */
async function outcome(page) {
    for (;;) {
        await page.waitForSelector('section.chat, section.load-failed, section.confirm-download', { timeout: LOAD_TIMEOUT })
            .catch(async (e) => {
                throw new Error(`${e.message}\nthe page shows: ${await page.locator('main').innerText().catch(() => '?')}`);
            });
        const confirm = page.locator('section.confirm-download button.download');
        if (!(await confirm.count())) break;
        await confirm.click();
    }
    if (await page.locator('section.load-failed').count()) {
        return { failed: await page.locator('section.load-failed .why').innerText() };
    }
    return { ready: true };
}

async function expectReady(page, what) {
    const result = await outcome(page);
    assert.ok(result.ready, `${what}: the load failed: ${result.failed}`);
}

/** The load fails with one line matching `pattern`, and the page offers Retry. */
async function expectFailure(page, pattern, what) {
    const result = await outcome(page);
    assert.ok(result.failed !== undefined, `${what}: the load should have failed`);
    assert.match(result.failed, pattern, what);
    assert.ok(!result.failed.includes('\n'), `${what}: one line: ${result.failed}`);
    assert.equal(await page.locator('section.load-failed button.retry').count(), 1, `${what}: Retry is offered`);
    return result.failed;
}

/** Loads the model at `url` through the page's URL field. */
async function loadTypedUrl(page, url) {
    await page.locator('.url-form input').fill(url);
    await page.locator('.url-form button[type=submit]').click();
}

async function clearCache(page) {
    await page.evaluate((name) => caches.delete(name), CACHE);
}

async function cachedUrls(page) {
    return page.evaluate(async (name) => (await (await caches.open(name)).keys()).map((r) => r.url), CACHE);
}

function requestsOf(server, urlPath, since) {
    return server.requests.slice(since).filter((r) => r.path === urlPath);
}

function rangeStart(request) {
    const match = /^bytes=(\d+)-$/.exec(request.range ?? '');
    assert.ok(match, `a Range request from a byte: ${JSON.stringify(request)}`);
    return Number(match[1]);
}

/** Two models side by side in one folder, as a user might pick their models folder. */
function folderOfTwoModels(t) {
    const parent = t.tempDir('rg-models-');
    for (const name of ['first', 'second']) fs.cpSync(modelDir, path.join(parent, 'models', name), { recursive: true });
    return path.join(parent, 'models');
}

/** A copy of the (int4) demo model whose first scales piece claims two scales too many per row. */
function malformedInt4Model(t) {
    const parent = t.tempDir('rg-bad-int4-');
    fs.cpSync(modelDir, path.join(parent, 'bad'), { recursive: true });
    const file = path.join(parent, 'bad', 'manifest.json');
    const manifest = JSON.parse(fs.readFileSync(file, 'utf8'));
    assert.equal(manifest.quantization, 'int4', 'the demo model is int4');
    manifest.pieces.find((p) => p.role === 'scales').shape[1] += 2;
    fs.writeFileSync(file, JSON.stringify(manifest));
    return parent;
}

async function run(t) {
    const manifest = JSON.parse(fs.readFileSync(path.join(modelDir, 'manifest.json'), 'utf8'));
    assert.ok(manifest.tokenizer?.sha256, 'the demo model has no tokenizer digest: delete www/models/demo, '
        + 'run scripts/demo-model.sh and scripts/build-site.sh again');
    assert.equal(manifest.shards.length, 1, 'the demo model is one shard');
    const shard = `/models/demo/${manifest.shards[0].file}`;
    const shardBytes = manifest.shards[0].bytes;
    assert.ok(shardBytes > SEGMENT_BYTES + 1_000_000, `the demo shard (${shardBytes} B) spans a cache segment`);
    const tokenizer = '/models/demo/tokenizer.json';

    const site = await t.serve({ '/': dist, '/pkg/': hookedPackage(dist) });
    const host = await t.serve({ '/models/': path.join(dist, 'models') });
    const context = await t.browser();
    // The GPU buffers the engine's worker made, and how many are still held (as it last reported).
    await context.addInitScript(() => {
        let counts = { created: 0, live: 0 };
        new BroadcastChannel('rg-test-gpu').onmessage = ({ data }) => { counts = data; };
        window.__gpuBuffers = () => counts;
    });
    const page = context.pages()[0] ?? await context.newPage();
    const pageErrors = [];
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    const modelUrl = `${site.url}/?model=models/demo/`;
    let mark;
    await page.goto(`${site.url}/`);
    await page.waitForSelector('.url-form input', { timeout: 60_000 });

    // 1. Cross-origin resume: the model host does not expose Content-Range; the resumed 206 is
    //    taken on its Content-Length (a CORS-safelisted header) being what is left.
    host.cutOnce(shard, 3_000_000);
    await loadTypedUrl(page, `${host.url}/models/demo/`);
    await expectReady(page, 'cross-origin resume');
    let shardRequests = requestsOf(host, shard, 0);
    assert.equal(shardRequests.length, 2, JSON.stringify(shardRequests));
    assert.equal(shardRequests[1].status, 206);
    assert.ok(rangeStart(shardRequests[1]) > 0);
    t.log(`cross-origin resume without Content-Range: ${shardRequests[1].range}`);

    // 2. Cross-origin, and the host answers the Range request from the wrong byte: the length
    //    does not match what is left, so the shard starts over from byte 0 and still loads.
    await clearCache(page);
    mark = host.requests.length;
    host.cutOnce(shard, 3_000_000);
    host.wrongRangeOnce(shard, 1000);
    await page.reload();
    await loadTypedUrl(page, `${host.url}/models/demo/`);
    await expectReady(page, 'a 206 from the wrong byte');
    shardRequests = requestsOf(host, shard, mark);
    assert.deepEqual(shardRequests.map((r) => [r.range === null, r.status]), [[true, 200], [false, 206], [true, 200]],
        JSON.stringify(shardRequests));
    assert.match(await page.locator('.load-notes').innerText(), /byte 0/);
    t.log('a 206 from the wrong byte (Content-Range hidden): started over from byte 0');

    // 3. A response that ends cleanly before the shard does is a dropped connection: resumed.
    await clearCache(page);
    mark = site.requests.length;
    site.endEarlyOnce(shard, 3_000_000);
    await page.goto(modelUrl);
    await expectReady(page, 'short clean EOF');
    shardRequests = requestsOf(site, shard, mark);
    assert.equal(shardRequests.length, 2, JSON.stringify(shardRequests));
    assert.equal(rangeStart(shardRequests[1]), 3_000_000);
    t.log('short clean EOF resumed from byte 3,000,000');

    // 4. Resume across a reload: the connection stalls, the user reloads, and the download
    //    continues from what the cache kept, not from byte 0.
    await clearCache(page);
    // Past the first cache segment, well before the end (the int4 demo shard is ≈ 9.4 MB).
    const stallAt = SEGMENT_BYTES + Math.floor((shardBytes - SEGMENT_BYTES) / 2);
    site.stallOnce(shard, stallAt);
    await page.goto(modelUrl);
    // (waitForFunction would not wait for an async predicate.)
    for (const started = Date.now(); !(await cachedUrls(page)).some((url) => url.includes(manifest.shards[0].file));) {
        assert.ok(Date.now() - started < LOAD_TIMEOUT, 'the first segment of the stalled download was never cached');
        await new Promise((resolve) => setTimeout(resolve, 200));
    }
    mark = site.requests.length;
    await page.reload();
    await expectReady(page, 'resume after a reload');
    shardRequests = requestsOf(site, shard, mark);
    assert.equal(shardRequests.length, 1, JSON.stringify(shardRequests));
    const resumedAt = rangeStart(shardRequests[0]);
    assert.ok(resumedAt >= SEGMENT_BYTES && resumedAt <= stallAt, shardRequests[0].range);
    t.log(`resumed after a reload with ${shardRequests[0].range}`);

    // 5. The model is now fully cached. Under a quota with room for less than the model, a
    //    reload still reads it all from the cache: only bytes not cached count against the quota.
    const cdp = await context.newCDPSession(page);
    const usage = await page.evaluate(async () => (await navigator.storage.estimate()).usage);
    await cdp.send('Storage.overrideQuotaForOrigin', { origin: site.url, quotaSize: usage + 1_000_000 });
    mark = site.requests.length;
    await page.reload();
    await expectReady(page, 'cached model under a tight quota');
    assert.equal(requestsOf(site, shard, mark).length, 0, 'no shard fetched');
    assert.equal(requestsOf(site, tokenizer, mark).length, 0, 'no tokenizer fetched');
    assert.equal(Number(await page.locator('.load-summary').getAttribute('data-from-cache')), shardBytes);
    await cdp.send('Storage.overrideQuotaForOrigin', { origin: site.url });
    t.log('a cached model under a tight quota: nothing downloaded');

    // 6. The storage fills up mid-load (a cache put fails with QuotaExceededError): writing
    //    stops, the load goes on, nothing is fetched twice.
    await clearCache(page);
    mark = site.requests.length;
    await page.evaluate((name) => caches.open(name), FAIL_SHARD_PUTS);
    await page.goto(modelUrl);
    await expectReady(page, 'quota exceeded mid-load');
    await page.evaluate((name) => caches.delete(name), FAIL_SHARD_PUTS);
    assert.equal(requestsOf(site, shard, mark).length, 1);
    assert.equal(await page.locator('.load-summary').getAttribute('data-cache'), 'QuotaExceeded');
    t.log('quota exceeded mid-load: loaded, without writing');

    // 7. A poisoned tokenizer: the host answers with its HTML index page, then with a damaged
    //    file. Each fails in one line, nothing bad is cached, and once the host is fixed Retry loads.
    await clearCache(page);
    mark = site.requests.length;
    site.serveHtml(tokenizer);
    await page.goto(modelUrl);
    await expectFailure(page, /tokenizer\.json.*HTML/, 'tokenizer answered with HTML');
    assert.equal(requestsOf(site, shard, mark).length, 0, 'no shard fetched after a bad tokenizer');
    site.serveHtml(tokenizer, false);
    site.corrupt(tokenizer);
    await page.locator('section.load-failed button.retry').click();
    await expectFailure(page, /tokenizer\.json.*sha256/, 'damaged tokenizer');
    assert.ok(!(await cachedUrls(page)).some((url) => url.includes('tokenizer.json')), 'the bad copy was not cached');
    site.corrupt(tokenizer, false);
    await page.locator('section.load-failed button.retry').click();
    await expectReady(page, 'retry after the host was fixed');
    t.log('poisoned tokenizer: clear errors, never cached, Retry loads once fixed');

    // 8. A load that fails after the engine was made frees every GPU buffer it made: its
    //    worker, and the GPU device with it, is ended.
    await clearCache(page);
    site.corrupt(shard);
    await page.goto(modelUrl);
    await expectFailure(page, /model-00000\.safetensors/, 'damaged shard');
    const failed = await page.evaluate(() => window.__gpuBuffers());
    assert.ok(failed.created > 10, `the engine was made before the failure (${failed.created} buffers)`);
    await noEngineWorker(page);
    assert.ok(!(await cachedUrls(page)).some((url) => url.includes('.safetensors')), 'the damaged shard is not cached');
    site.corrupt(shard, false);
    await page.locator('section.load-failed button.retry').click();
    await expectReady(page, 'retry after a damaged shard');
    t.log(`a failed load ended its worker and with it all ${failed.created} of its GPU buffers`);

    // 9. A manifest that never ends is cut off at the cap, not read into memory whole.
    site.endless('/models/demo/manifest.json', 64 << 20);
    await page.goto(modelUrl);
    await expectFailure(page, new RegExp(`manifest\\.json: longer than the ${MAX_MANIFEST_BYTES} bytes`), 'endless manifest');
    site.endless('/models/demo/manifest.json', null);
    t.log('an endless manifest is cut off at 16 MiB');

    // 10. A picked folder holding two models is refused before anything loads.
    await page.goto(`${site.url}/`);
    await page.locator('.folder input[type=file]').setInputFiles(folderOfTwoModels(t));
    await expectFailure(page, /2 models/, 'a folder of two models');
    assert.equal((await page.evaluate(() => window.__gpuBuffers())).created, 0, 'nothing was allocated for it');
    assert.equal(page.workers().length, 0, 'no engine was started for it');
    t.log('a folder of two models: refused');

    // 11. A malformed int4 model (scales that do not match the groups) is one clear error
    //     from the manifest, before any shard is fetched or any GPU memory is taken.
    const bad = await t.serve({ '/models/': malformedInt4Model(t) });
    await page.goto(`${site.url}/`);
    await loadTypedUrl(page, `${bad.url}/models/bad/`);
    await expectFailure(page, /manifest\.json: piece .*scales.* expected .*int4 scales: one f16 per group/, 'malformed int4');
    assert.ok(!bad.requests.some((r) => r.path.endsWith('.safetensors')), 'no shard was fetched');
    assert.equal((await page.evaluate(() => window.__gpuBuffers())).created, 0, 'no GPU memory was taken');
    await noEngineWorker(page);
    t.log('a malformed int4 manifest: one clear error');

    assert.deepEqual(pageErrors, [], 'no uncaught errors in the page');
}

export default [{ name: 'downloads', needs: ['site'], run }];
