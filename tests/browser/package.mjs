// Tests the embeddable package through its example page (www/embed/, plain JavaScript) in a real
// Chromium, on the page's thread and in worker mode: load the demo model, stream a greedy reply
// equal to `rg generate --backend cpu`, abort a long one, dispose and check the GPU memory is freed.
//
// Usage: node package.mjs   (after scripts/build-package.sh, scripts/demo-model.sh, cargo build --bin rg)
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { cpuReference, launchContext, root } from './chromium.mjs';
import { startServer } from './server.mjs';

const modelDir = path.join(root, 'www/models/demo');
const PROMPT = 'Write a haiku about recurrent networks.';
const MAX_TOKENS = 20;
const TIMEOUT = 300_000;

function log(message) {
    console.log(`[package e2e] ${message}`);
}

async function setValue(page, id, value) {
    await page.locator(`#${id}`).fill(String(value));
}

async function exercise(context, server, expected, worker) {
    const mode = worker ? 'worker' : 'page thread';
    const page = await context.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    await page.goto(`${server.url}/embed/${worker ? '?worker=1' : ''}`);
    // A model that is not there: a JS exception with a clear message, and the page can try again.
    await setValue(page, 'model-url', '../models/missing/');
    await page.locator('#load').click();
    await page.waitForSelector('#output[data-state="error"]', { timeout: 60_000 });
    assert.match(await page.locator('#output').textContent(), /manifest\.json: HTTP 404/);
    await setValue(page, 'model-url', '../models/demo/');
    await page.locator('#load').click();
    await page.waitForSelector('#output[data-state="ready"]', { timeout: TIMEOUT });
    assert.equal(page.workers().length, worker ? 1 : 0, `the engine runs on the ${mode}`);

    await setValue(page, 'max-tokens', MAX_TOKENS);
    await setValue(page, 'temperature', 0);
    await page.locator('#send').click();
    await page.waitForSelector('#output[data-state="done"]', { timeout: TIMEOUT });
    const ids = (await page.locator('#output').getAttribute('data-token-ids')).split(',').map(Number);
    assert.deepEqual(ids, expected.ids, `${mode}: streamed reply's ids equal the CPU reference`);
    assert.equal(await page.locator('#output').textContent(), expected.text, `${mode}: streamed text equals rg's`);
    log(`${mode}: reply equals the CPU reference (${ids.length} tokens)`);

    await setValue(page, 'max-tokens', 2000);
    await page.locator('#send').click();
    await page.waitForFunction(() => document.getElementById('output').textContent.length > 10, null, { timeout: TIMEOUT });
    await page.locator('#stop').click();
    await page.waitForSelector('#output[data-state="done"]', { timeout: TIMEOUT });
    assert.equal(await page.locator('#output').getAttribute('data-stopped'), 'true');
    const stopped = (await page.locator('#output').getAttribute('data-token-ids')).split(',').length;
    assert.ok(stopped < 2000, `${mode}: aborted after ${stopped} tokens`);
    log(`${mode}: abort stopped the reply after ${stopped} tokens`);

    // Snapshot and restore: the same message after restoring gets the same reply; the state's
    // size is fixed; reset starts over.
    const [afterSnapshot, afterRestore, fresh, stateBytes] = await page.evaluate(async () => {
        const e = window.engine;
        await e.reset();
        await e.chat('Hi there.', { temperature: 0, maxTokens: 8 });
        const saved = await e.snapshot();
        const first = await e.chat('And then?', { temperature: 0, maxTokens: 8 });
        await e.restore(saved);
        const again = await e.chat('And then?', { temperature: 0, maxTokens: 8 });
        await saved.free();
        await e.reset();
        const reset = await e.chat('Write a haiku about recurrent networks.', { temperature: 0, maxTokens: 20 });
        return [first.tokenIds, again.tokenIds, reset.tokenIds, (await e.stats()).stateBytes];
    });
    assert.deepEqual(afterRestore, afterSnapshot, `${mode}: restore returns to the snapshot's state`);
    assert.deepEqual(fresh, expected.ids, `${mode}: reset starts a new conversation`);
    assert.ok(stateBytes > 0);
    log(`${mode}: snapshot/restore and reset ok`);

    const gpuBytes = Number(await page.locator('#stats').getAttribute('data-gpu-bytes'));
    assert.ok(gpuBytes > 0);
    await page.locator('#dispose').click();
    await page.waitForSelector('#output[data-state="disposed"]', { timeout: 60_000 });
    assert.equal(await page.locator('#stats').getAttribute('data-gpu-bytes'), '0', `${mode}: dispose freed the GPU memory`);
    if (worker) {
        for (let i = 0; i < 50 && page.workers().length > 0; i++) await new Promise((r) => setTimeout(r, 100));
        assert.equal(page.workers().length, 0, 'dispose ended the worker');
    }
    log(`${mode}: dispose freed ${gpuBytes} B of GPU memory`);
    assert.deepEqual(errors, [], `${mode}: no uncaught errors`);
    await page.close();
}

async function main() {
    for (const file of ['pkg/index.js', 'pkg/rgweb_bg.wasm', 'www/models/demo/manifest.json']) {
        assert.ok(fs.existsSync(path.join(root, file)), `${file} is missing: build the package and the demo model first`);
    }
    const expected = cpuReference(modelDir, PROMPT, MAX_TOKENS);
    assert.equal(expected.ids.length, MAX_TOKENS);
    const server = await startServer({
        '/pkg/': path.join(root, 'pkg'), '/embed/': path.join(root, 'www/embed'), '/models/': path.join(root, 'www/models'),
    });
    const context = await launchContext();
    try {
        await exercise(context, server, expected, false);
        await exercise(context, server, expected, true);
    } finally {
        await context.close();
        await server.close();
    }
    log('all passed');
}

main().catch((e) => {
    console.error(e);
    process.exit(1);
});
