// Tests the embeddable package through its example page (www/embed/, plain JavaScript) in a real
// Chromium, on the page's thread and in worker mode: load the demo model, stream a greedy reply
// equal to `rg generate --backend cpu`, abort a long one, dispose and check the GPU memory is freed;
// then the API's edges: bad options, aborted signals, an abort mid-prompt, busy calls, snapshots of
// other engines and models, dispose during a reply, a worker that dies.
//
// Usage: node run.mjs package   (after scripts/build-package.sh, scripts/demo-model.sh, cargo build --bin rg)
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { cpuReference, MODES, root } from './harness.mjs';
import { collectDevices, engineWorker, hookedPackage } from './worker-hooks.mjs';

const modelDir = path.join(root, 'www/models/demo');
const PROMPT = 'Write a haiku about recurrent networks.';
const MAX_TOKENS = 20;
const TIMEOUT = 300_000;

async function setValue(page, id, value) {
    await page.locator(`#${id}`).fill(String(value));
}

async function exercise(t, context, server, expected, { worker, name: mode }) {
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
    t.log(`${mode}: reply equals the CPU reference (${ids.length} tokens)`);

    await setValue(page, 'max-tokens', 2000);
    await page.locator('#send').click();
    await page.waitForFunction(() => document.getElementById('output').textContent.length > 10, null, { timeout: TIMEOUT });
    await page.locator('#stop').click();
    await page.waitForSelector('#output[data-state="done"]', { timeout: TIMEOUT });
    assert.equal(await page.locator('#output').getAttribute('data-stopped'), 'true');
    const stopped = (await page.locator('#output').getAttribute('data-token-ids')).split(',').length;
    assert.ok(stopped < 2000, `${mode}: aborted after ${stopped} tokens`);
    t.log(`${mode}: abort stopped the reply after ${stopped} tokens`);

    // Snapshot and restore, reset: sampled with a seed at T > 0 (the GPU's draw depends on the
    // seed and the tokens generated so far, both part of the state), so the same message gives the
    // same reply only from the same state, and a reply without the restore (or the reset) differs.
    const hot = { temperature: 1, topK: 0, topP: 1, seed: 7, maxTokens: 12 };
    const states = await page.evaluate(async (hot) => {
        const e = window.engine;
        await e.reset();
        await e.chat('Hi there.', { temperature: 0, maxTokens: 8 });
        const saved = await e.snapshot();
        const first = await e.chat('And then?', hot);
        const continued = await e.chat('And then?', hot);
        await e.restore(saved);
        const restored = await e.chat('And then?', hot);
        await saved.free();
        await e.reset();
        const fresh = await e.chat('Hi there.', hot);
        const notReset = await e.chat('Hi there.', hot);
        await e.reset();
        const reset = await e.chat('Hi there.', hot);
        await e.reset();
        const greedy = await e.chat('Write a haiku about recurrent networks.', { temperature: 0, maxTokens: 20 });
        const ids = (reply) => reply.tokenIds;
        return {
            first: ids(first), continued: ids(continued), restored: ids(restored), fresh: ids(fresh),
            notReset: ids(notReset), reset: ids(reset), greedy: ids(greedy), stateBytes: (await e.stats()).stateBytes,
            firstToken: (await e.stats()).timeToFirstTokenSeconds,
            weightFormat: (await e.stats()).weightFormat,
        };
    }, hot);
    assert.notDeepEqual(states.continued, states.first, `${mode}: without a restore the reply differs`);
    assert.deepEqual(states.restored, states.first, `${mode}: restore returns to the snapshot's state`);
    assert.notDeepEqual(states.notReset, states.fresh, `${mode}: without a reset the reply differs`);
    assert.deepEqual(states.reset, states.fresh, `${mode}: reset starts a new conversation`);
    assert.deepEqual(states.greedy, expected.ids, `${mode}: after a reset the greedy reply is the CPU reference's`);
    assert.ok(states.stateBytes > 0);
    assert.ok(states.firstToken > 0, `${mode}: stats give the time to the first token`);
    const format = JSON.parse(fs.readFileSync(path.join(modelDir, 'manifest.json'), 'utf8')).quantization;
    assert.equal(states.weightFormat, format, `${mode}: stats name the weight format`);
    t.log(`${mode}: snapshot/restore and reset ok`);

    await checkEdges(t, page, mode, worker);

    const gpuBytes = Number(await page.locator('#stats').getAttribute('data-gpu-bytes'));
    assert.ok(gpuBytes > 0);
    await page.locator('#dispose').click();
    await page.waitForSelector('#output[data-state="disposed"]', { timeout: 60_000 });
    assert.equal(await page.locator('#stats').getAttribute('data-gpu-bytes'), '0', `${mode}: dispose freed the GPU memory`);
    if (worker) {
        for (let i = 0; i < 50 && page.workers().length > 0; i++) await new Promise((r) => setTimeout(r, 100));
        assert.equal(page.workers().length, 0, 'dispose ended the worker');
    }
    t.log(`${mode}: dispose freed ${gpuBytes} B of GPU memory`);
    assert.deepEqual(errors, [], `${mode}: no uncaught errors`);
    await page.close();
}

/** The API's edges, on the page's engine and on others loaded for the purpose. */
async function checkEdges(t, page, mode, worker) {
    const edges = await page.evaluate(async (worker) => {
        const { Engine, WorkerEngine } = await import('/pkg/index.js');
        const settle = (promise, ms = 60_000) => Promise.race([
            promise.then((value) => ({ value }), (error) => ({ error: `${error?.name}: ${error?.message}` })),
            new Promise((resolve) => setTimeout(() => resolve({ hung: true }), ms)),
        ]);
        const tokens = async (engine) => (await engine.stats()).conversationTokens;
        const out = {};
        const e = window.engine;
        await e.reset();
        await e.chat('Hi there.', { temperature: 0, maxTokens: 4 });
        const before = await tokens(e);

        // Options out of range: an Error naming the field, and nothing changes.
        const bad = [
            { temperature: NaN }, { temperature: -1 }, { temperature: Infinity }, { topK: -1 }, { topK: 1.5 },
            { topP: 0 }, { topP: 1.5 }, { seed: -1 }, { seed: 0.5 }, { maxTokens: 0 }, { maxTokens: 2.5 },
            { maxTokens: '5' },
        ];
        out.badOptions = [];
        for (const options of bad) {
            out.badOptions.push([Object.keys(options)[0], (await settle(e.chat('x', options))).error ?? 'accepted']);
        }
        out.badOptionsChanged = (await tokens(e)) !== before;

        // A signal aborted already: an AbortError up front, and nothing changes.
        const aborted = new AbortController();
        aborted.abort();
        out.preAborted = (await settle(e.chat('x', { signal: aborted.signal }))).error;
        const streamed = [];
        out.preAbortedStream = (await settle((async () => {
            for await (const piece of e.stream('x', { signal: aborted.signal })) streamed.push(piece);
        })())).error;
        out.preAbortedChanged = (await tokens(e)) !== before || streamed.length > 0;

        // An abort during a long prompt stops it there: no token, and the state as before the call.
        const controller = new AbortController();
        const long = e.chat('Tell me about recurrent networks and attention. '.repeat(250), {
            signal: controller.signal, maxTokens: 4,
        });
        setTimeout(() => controller.abort(), 0);
        out.midPrompt = (await settle(long)).value;
        out.midPromptChanged = (await tokens(e)) !== before;

        // One call at a time: another while a reply runs is refused, and the reply goes on.
        const running = e.chat('Tell me a long story.', { maxTokens: 300 });
        out.busy = (await settle(e.chat('x'))).error;
        out.busyReset = (await settle(e.reset())).error;
        e.abort();
        out.afterBusy = (await settle(running)).value?.stopped;

        // Another engine: its snapshot is refused and this one stays usable.
        let other;
        if (worker) {
            // A worker that can be made to die: the package's worker plus a 'crash' message.
            const source = `import '${location.origin}/pkg/worker.js';
                const answer = self.onmessage;
                self.onmessage = (event) => event.data.method === 'crash'
                    ? setTimeout(() => { throw new Error('crashed on purpose'); }) : answer(event);`;
            const workerUrl = URL.createObjectURL(new Blob([source], { type: 'text/javascript' }));
            other = await WorkerEngine.load('../models/demo/', { workerUrl });
        } else {
            other = await Engine.load('../models/demo/');
        }
        const foreign = await e.snapshot();
        await other.chat('Hi there.', { temperature: 0, maxTokens: 4 });
        const otherTokens = await tokens(other);
        out.otherEngine = (await settle(other.restore(foreign))).error;
        out.otherEngineKept = (await tokens(other)) === otherTokens
            && (await other.chat('And then?', { temperature: 0, maxTokens: 4 })).tokenIds.length > 0;

        // Another model of the same shape (one weight byte differs): refused too.
        const otherModel = await (worker ? WorkerEngine : Engine).load('../other-model/');
        out.otherModel = (await settle(otherModel.restore(foreign))).error;
        await foreign.free();

        // dispose() during a reply: the reply's promise is rejected, not left waiting; so is
        // every later call.
        let started;
        const firstToken = new Promise((resolve) => { started = resolve; });
        const reply = otherModel.chat('Tell me a long story.', { maxTokens: 2000, onToken: () => started() });
        const replySettled = settle(reply, 30_000);
        await firstToken;
        await otherModel.dispose();
        out.disposedReply = await replySettled;
        out.afterDispose = [
            (await settle(otherModel.chat('x'))).error, (await settle(otherModel.stats())).error,
            await otherModel.gpuBytes(),
        ];

        if (worker) {
            // The worker dies during a reply: the reply is rejected, and so is every later call.
            let going;
            const goingOn = new Promise((resolve) => { going = resolve; });
            const dying = other.chat('Tell me a long story.', { maxTokens: 2000, onToken: () => going() });
            const dyingSettled = settle(dying, 30_000);
            await goingOn;
            other.call('crash').catch(() => {});
            out.crashedReply = await dyingSettled;
            out.afterCrash = (await settle(other.chat('x'), 10_000)).error ?? 'no error';
        }
        await other.dispose();
        return out;
    }, worker);

    for (const [field, error] of edges.badOptions) {
        assert.match(error, new RegExp(`^Error: options\\.${field} must`), `${mode}: options.${field}`);
    }
    assert.equal(edges.badOptionsChanged, false, `${mode}: bad options changed nothing`);
    assert.match(edges.preAborted ?? '', /^AbortError: /, `${mode}: an aborted signal rejects up front`);
    assert.match(edges.preAbortedStream ?? '', /^AbortError: /, `${mode}: stream() too`);
    assert.equal(edges.preAbortedChanged, false, `${mode}: an aborted signal changed nothing`);
    assert.deepEqual(edges.midPrompt && [edges.midPrompt.stopped, edges.midPrompt.tokenIds.length, edges.midPrompt.promptTokens],
        [true, 0, 0], `${mode}: an abort mid-prompt stops before any token: ${JSON.stringify(edges.midPrompt)}`);
    assert.equal(edges.midPromptChanged, false, `${mode}: an abort mid-prompt leaves the state as before`);
    assert.match(edges.busy ?? '', /busy/, `${mode}: a second call while a reply runs`);
    assert.match(edges.busyReset ?? '', /busy/, `${mode}: reset while a reply runs`);
    assert.equal(edges.afterBusy, true, `${mode}: the running reply went on until aborted`);
    assert.match(edges.otherEngine ?? '', /another engine/, `${mode}: a snapshot of another engine`);
    assert.ok(edges.otherEngineKept, `${mode}: the refused restore left the engine usable and unchanged`);
    assert.match(edges.otherModel ?? '', worker ? /another engine/ : /another model/, `${mode}: a snapshot of another model`);
    assert.match(edges.disposedReply.error ?? JSON.stringify(edges.disposedReply), /disposed/,
        `${mode}: dispose during a reply rejects it`);
    assert.match(edges.afterDispose[0] ?? '', /disposed/, `${mode}: a call after dispose`);
    assert.match(edges.afterDispose[1] ?? '', /disposed/, `${mode}: stats after dispose`);
    assert.equal(edges.afterDispose[2], 0, `${mode}: no GPU memory after dispose`);
    if (worker) {
        assert.match(edges.crashedReply.error ?? JSON.stringify(edges.crashedReply), /worker failed.*crashed on purpose/,
            'a dying worker rejects the reply');
        assert.match(edges.afterCrash, /worker failed/, 'and every later call');
    }
    t.log(`${mode}: bad options, aborted signals, abort mid-prompt, busy calls, foreign snapshots, dispose mid-reply`
        + `${worker ? ', a dying worker' : ''} ok`);
}

/**
 * A copy of the demo model with one quantized weight changed (and its shard's sha256 updated):
 * another model of the same shape.
 */
function otherModel(t) {
    const dir = t.tempDir('rg-other-model-');
    for (const file of fs.readdirSync(modelDir)) fs.copyFileSync(path.join(modelDir, file), path.join(dir, file));
    const manifest = JSON.parse(fs.readFileSync(path.join(dir, 'manifest.json'), 'utf8'));
    const piece = manifest.pieces.find((p) => p.role === 'values' && /^(i8|u32)$/i.test(p.dtype));
    const shard = manifest.shards[piece.shard];
    const bytes = fs.readFileSync(path.join(dir, shard.file));
    bytes[piece.offset] ^= 1;
    fs.writeFileSync(path.join(dir, shard.file), bytes);
    shard.sha256 = crypto.createHash('sha256').update(bytes).digest('hex');
    fs.writeFileSync(path.join(dir, 'manifest.json'), JSON.stringify(manifest));
    return dir;
}

/**
 * The GPU device is lost while the engine is idle: `onDeviceLost` is called at once (not at the
 * next call), `reload()` brings the model back from the cache (no shard or tokenizer request) and
 * it replies as the CPU reference; `dispose()` afterwards is not reported as a loss.
 */
async function lostDevice(t, { worker, name: mode }) {
    const expected = await cpuReference(modelDir, PROMPT, MAX_TOKENS);
    const server = await t.serve({
        '/pkg/': worker ? hookedPackage(root) : path.join(root, 'pkg'), '/embed/': path.join(root, 'www/embed'),
        '/models/': path.join(root, 'www/models'),
    });
    const page = await (await t.browser()).newPage();
    await page.addInitScript(collectDevices);
    await page.goto(`${server.url}/embed/`);
    await page.evaluate(async (worker) => {
        const rg = await import('/pkg/index.js');
        window.__lost = [];
        window.__engine = await rg.createEngine('../models/demo/', { worker, onDeviceLost: (reason) => window.__lost.push(reason) });
        await window.__engine.chat('Hi.', { temperature: 0, maxTokens: 2 });
    }, worker);
    const mark = server.requests.length;
    if (worker) await (await engineWorker(page)).evaluate(() => self.__devices.at(-1).destroy());
    else await page.evaluate(() => window.__devices.at(-1).destroy());
    await page.waitForFunction(() => window.__lost.length > 0, null, { timeout: 30_000 });
    const after = await page.evaluate(async ([prompt, maxTokens]) => {
        await window.__engine.reload();
        const reply = await window.__engine.chat(prompt, { temperature: 0, maxTokens });
        await window.__engine.dispose();
        await new Promise((resolve) => setTimeout(resolve, 500));
        return { ids: reply.tokenIds, lost: window.__lost };
    }, [PROMPT, MAX_TOKENS]);
    assert.equal(after.lost.length, 1, `${mode}: one loss reported, and dispose() is not one: ${after.lost}`);
    assert.match(after.lost[0], /device lost/);
    assert.deepEqual(after.ids, expected.ids, `${mode}: the reloaded model replies as the CPU reference`);
    const fetched = server.requests.slice(mark).map((r) => r.path).filter((p) => p.startsWith('/models/'));
    assert.deepEqual(fetched, ['/models/demo/manifest.json'], `${mode}: reload() fetched no weights`);
    t.log(`${mode}: onDeviceLost("${after.lost[0]}"), reload() from the cache, the same reply`);
}

export default MODES.flatMap((mode) => [{
    name: `package (${mode.name})`,
    needs: ['rg', 'demo', 'package'],
    async run(t) {
        const expected = await cpuReference(modelDir, PROMPT, MAX_TOKENS);
        assert.equal(expected.ids.length, MAX_TOKENS);
        const server = await t.serve({
            '/pkg/': path.join(root, 'pkg'), '/embed/': path.join(root, 'www/embed'), '/models/': path.join(root, 'www/models'),
            '/other-model/': otherModel(t),
        });
        await exercise(t, await t.browser(), server, expected, mode);
    },
}, {
    name: `package: lost device (${mode.name})`,
    needs: ['rg', 'demo', 'package'],
    run: (t) => lostDevice(t, mode),
}]);
