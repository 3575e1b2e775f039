// Model management in Chromium: the package's `hasModelInCache`, `prefetchModel`,
// `listCachedModels` and `deleteModelAllInfoInCache` (WebLLM's names), and the page's Models
// panel over the same cache. A prefetched model loads with no request for its weights or its
// tokenizer and replies as the CPU reference does; a deleted one leaves no entry behind; a model
// missing one cached segment is listed as partial and is not "in cache"; weights are fetched
// without a referrer or cookies; a model the GPU's limits cannot hold is refused before its
// download.
//
// Usage: node run.mjs models   (after scripts/build-package.sh or scripts/build-site.sh, scripts/demo-model.sh)
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { cpuReference, root } from './harness.mjs';

const CACHE = 'recurrentgemma-models-v1';
const PROMPT = 'Write a haiku about recurrent networks.';
const MAX_TOKENS = 20;
const TIMEOUT = 300_000;

/** What the model's files take: the shards and the tokenizer as its manifest names them, and the manifest. */
function modelBytes(modelDir) {
    const text = fs.readFileSync(path.join(modelDir, 'manifest.json'), 'utf8');
    const manifest = JSON.parse(text);
    const files = manifest.shards.reduce((sum, shard) => sum + shard.bytes, 0) + manifest.tokenizer.bytes;
    return { files, manifest: Buffer.byteLength(text) };
}

/** The requests for the model's weights or tokenizer since `mark`. */
const heavyRequests = (server, mark) =>
    server.requests.slice(mark).filter((r) => /\/models\/demo\/(?!manifest\.json)/.test(r.path));

async function packageCase(t) {
    const modelDir = path.join(root, 'www/models/demo');
    const expected = await cpuReference(modelDir, PROMPT, MAX_TOKENS);
    const server = await t.serve({
        '/pkg/': path.join(root, 'pkg'), '/embed/': path.join(root, 'www/embed'), '/models/': path.join(root, 'www/models'),
    });
    const context = await t.browser();
    const page = await context.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    await page.goto(`${server.url}/embed/`);
    const api = (body, arg) => page.evaluate(async ([body, arg]) => {
        const rg = await import('/pkg/index.js');
        return new Function('rg', 'arg', `return (async () => { ${body} })();`)(rg, arg);
    }, [body, arg]);
    const source = `${server.url}/models/demo/`;

    assert.equal(await api('return rg.hasModelInCache(arg);', '../models/demo/'), false, 'nothing cached at first');
    assert.deepEqual(await api('return rg.listCachedModels();'), []);
    await assert.rejects(api('return rg.prefetchModel(arg);', '../models/missing/'), /manifest\.json: HTTP 404/);

    let mark = server.requests.length;
    const prefetched = await api(`
        const stages = new Set();
        let last;
        const model = await rg.prefetchModel(arg, { onProgress: (p) => { stages.add(p.stage); last = p; } });
        return { model, stages: [...stages], last };`, '../models/demo/');
    const sizes = modelBytes(modelDir);
    assert.deepEqual(prefetched.model, { source, bytes: sizes.files + sizes.manifest, totalBytes: sizes.files, complete: true });
    assert.deepEqual(prefetched.stages, ['manifest', 'tokenizer', 'weights', 'ready']);
    assert.equal(prefetched.last.bytesDone, prefetched.last.bytesTotal);
    const fetched = server.requests.slice(mark);
    assert.ok(fetched.some((r) => r.path.endsWith('.safetensors')), 'the prefetch downloaded the shards');
    for (const request of fetched) {
        assert.equal(request.referer, null, `${request.path} was fetched with a Referer`);
        assert.equal(request.cookie, null, `${request.path} was fetched with cookies`);
    }
    assert.equal(await api('return rg.hasModelInCache(arg);', '../models/demo/'), true);
    assert.deepEqual(await api('return rg.listCachedModels();'), [prefetched.model]);
    t.log(`prefetched ${prefetched.model.bytes} bytes; hasModelInCache true`);

    // A load after the prefetch reads the weights and the tokenizer from the cache only.
    mark = server.requests.length;
    const reply = await api(`
        const engine = await rg.createEngine(arg);
        const reply = await engine.chat(${JSON.stringify(PROMPT)}, { temperature: 0, maxTokens: ${MAX_TOKENS} });
        await engine.dispose();
        return reply.tokenIds;`, '../models/demo/');
    assert.deepEqual(heavyRequests(server, mark), [], 'a load after prefetchModel requests no shard');
    assert.deepEqual(reply, expected.ids, 'the prefetched model replies as the CPU reference');
    t.log('a load after the prefetch fetched only the manifest and replied as the CPU reference');

    // One segment gone: the model is listed as partial, and not in the cache.
    const partial = await api(`
        const cache = await caches.open('${CACHE}');
        const shard = (await cache.keys()).find((r) => r.url.includes('.safetensors'));
        await cache.delete(shard);
        return { has: await rg.hasModelInCache(arg), list: await rg.listCachedModels() };`, '../models/demo/');
    assert.equal(partial.has, false, 'a model missing a segment is not in the cache');
    assert.equal(partial.list.length, 1);
    assert.equal(partial.list[0].complete, false);
    assert.ok(partial.list[0].bytes < prefetched.model.bytes);

    // Another model's entries stay when one is deleted.
    await api(`
        const cache = await caches.open('${CACHE}');
        await cache.put(arg + 'other/manifest.json', new Response('{}', { headers: { 'x-rg-bytes': '2' } }));`,
    `${server.url}/models/`);
    await api('return rg.deleteModelAllInfoInCache(arg);', '../models/demo/');
    const left = await api(`return (await (await caches.open('${CACHE}')).keys()).map((r) => r.url);`);
    assert.deepEqual(left, [`${server.url}/models/other/manifest.json`], 'nothing of the deleted model is left');
    assert.equal(await api('return rg.hasModelInCache(arg);', '../models/demo/'), false);
    assert.deepEqual(await api('return rg.listCachedModels();'),
        [{ source: `${server.url}/models/other/`, bytes: 2, totalBytes: null, complete: false }]);
    assert.deepEqual(errors, []);
    t.log('deleteModelAllInfoInCache left no entry of the model, and the other model\'s');
}

async function pageCase(t) {
    const server = await t.serve({ '/': path.join(root, 'dist') });
    const context = await t.browser();
    const page = await context.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    await page.goto(server.url);
    await page.locator('details.models-panel summary').click();
    await page.waitForSelector('.models-panel .no-models');
    let mark = server.requests.length;
    await page.locator('button.prefetch-model[data-url="models/demo/"]').click();
    const item = page.locator(`.cached-model[data-source="${server.url}/models/demo/"]`);
    await item.and(page.locator('[data-complete="true"]')).waitFor({ timeout: TIMEOUT });
    assert.ok(heavyRequests(server, mark).length > 0, 'the panel downloaded the model');
    assert.equal(await page.locator('.known-models .offline').count(), 1, 'the demo is shown as available offline');
    assert.equal(await page.locator('.models-panel .storage-note').count(), 1, 'the page says whether the browser keeps it');
    t.log(`downloaded for offline: ${await item.locator('.size').innerText()}`);

    mark = server.requests.length;
    await page.locator('button.load-model[data-url="models/demo/"]').click();
    await page.waitForSelector('section.chat', { timeout: TIMEOUT });
    assert.deepEqual(heavyRequests(server, mark), [], 'loading a model downloaded for offline requests no shard');

    await item.locator('button.delete-model').click();
    await page.waitForSelector('.models-panel .no-models', { timeout: 60_000 });
    const left = await page.evaluate(async (name) => (await (await caches.open(name)).keys()).length, CACHE);
    assert.equal(left, 0, 'Delete left no cache entry');
    assert.match(await page.locator('.cached-bytes').innerText(), /0\.0 MB/);
    assert.deepEqual(errors, []);
    t.log('loaded with no shard request, then deleted from the panel');
}

/** A GPU whose limits cannot hold the demo's 16,384,000-byte embedding piece: refused before any
 * file but the manifest is fetched, in one line that says what it needs and what the GPU allows. */
async function limitsCase(t) {
    const server = await t.serve({
        '/pkg/': path.join(root, 'pkg'), '/embed/': path.join(root, 'www/embed'), '/models/': path.join(root, 'www/models'),
    });
    const context = await t.browser();
    const page = await context.newPage();
    await page.addInitScript(() => {
        for (const limit of ['maxStorageBufferBindingSize', 'maxBufferSize']) {
            Object.defineProperty(GPUSupportedLimits.prototype, limit, { get: () => 8 << 20 });
        }
    });
    await page.goto(`${server.url}/embed/`);
    const mark = server.requests.length;
    const failure = await page.evaluate(async () => {
        const rg = await import('/pkg/index.js');
        return rg.createEngine('../models/demo/').then(() => 'loaded', (e) => e.message);
    });
    assert.match(failure, /^gpu: this model needs a 16384000-byte buffer binding \(model\.embed_tokens\.weight[^)]*\); this GPU allows 8388608 bytes per buffer binding \(maxStorageBufferBindingSize 8388608, maxBufferSize 8388608\)$/);
    assert.deepEqual(server.requests.slice(mark).map((r) => r.path).filter((p) => p.startsWith('/models/')),
        ['/models/demo/manifest.json'], 'only the manifest was fetched');
    t.log(`refused before the download: ${failure}`);
}

export default [
    { name: 'models (package)', needs: ['rg', 'demo', 'package'], run: packageCase },
    { name: 'models (page)', needs: ['site'], run: pageCase },
    { name: 'models (limits)', needs: ['demo', 'package'], run: limitsCase },
];
