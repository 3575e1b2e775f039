// End-to-end test of the chat page in a real Chromium (WebGPU on SwiftShader, no GPU needed):
// the built site (dist/) and the demo model are served over HTTP on 127.0.0.1, and the page is
// driven like a user would. Greedy replies must equal `rg generate --backend cpu` token for token.
// The model runs in the package's worker: from the moment the page is interactive (the model
// picker shown), no task on the page's main thread may take over 50 ms during a load or a reply
// (Long Tasks API; a task that only waited for a CPU, as a Chromium trace of the same run shows,
// is excused: see main-thread.mjs), and the figures must update while a reply streams.
//
// Usage: node run.mjs app   (after `bash scripts/build-site.sh` and `cargo build --bin rg`)
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { cpuReference, root } from './harness.mjs';
import { busiestSince, longTasksSinceInteractive, observeLongTasks, traceMainThreads, withCpuTime } from './main-thread.mjs';
import { engineWorker, hookedPackage } from './worker-hooks.mjs';

const dist = path.join(root, 'dist');
const modelDir = path.join(dist, 'models/demo');
const shard = '/models/demo/model-00000.safetensors';
const PROMPT = 'Write a haiku about recurrent networks.';
const MAX_TOKENS = 20;
const LOAD_TIMEOUT = 300_000;
const PASSAGE_PROMPT = 'Read me Psalms 23:1-3.';
const PASSAGE_LIMIT = 160;
/** The longest a main-thread task may take once the page is interactive (a "long task" is longer). */
const LONG_TASK_MS = 50;

/** English prose: letters, spaces and punctuation only, made mostly of common words. */
function assertReadable(text) {
    assert.match(text, /^[A-Za-z ,.;:'!?()\n-]+$/, `not plain English: ${JSON.stringify(text)}`);
    const words = text.toLowerCase().match(/[a-z']+/g) ?? [];
    const common = new Set(['the', 'and', 'of', 'to', 'unto', 'in', 'he', 'i', 'my', 'me', 'is', 'that', 'shall', 'a', 'for', 'his', 'thou', 'thy', 'they', 'lord', 'god', 'be', 'not', 'with', 'it', 'all']);
    const share = words.filter((w) => common.has(w)).length / Math.max(words.length, 1);
    assert.ok(words.length >= 8 && share >= 0.25, `${words.length} words, ${(100 * share).toFixed(0)} % common: ${text}`);
}

async function waitReady(page) {
    await page.waitForSelector('section.chat', { timeout: LOAD_TIMEOUT });
}

async function setNumber(page, cls, value) {
    const input = page.locator(`.settings .${cls} input`);
    await input.fill(String(value));
    await input.dispatchEvent('change');
}

/** Sends `text` with Enter and waits for the reply to finish; returns its token ids and text. */
async function chat(page, text) {
    const before = await page.locator('.message.model').count();
    await page.locator('textarea.prompt').fill(text);
    await page.locator('textarea.prompt').press('Enter');
    const reply = page.locator('.message.model').nth(before);
    await reply.waitFor();
    await page.waitForFunction((i) => {
        const m = document.querySelectorAll('.message.model')[i];
        return m && m.dataset.done === 'true' && !document.querySelector('button.stop');
        // Polled, not run every animation frame: the test's own probes must not be the page's long tasks.
    }, before, { timeout: LOAD_TIMEOUT, polling: 250 });
    const ids = (await reply.getAttribute('data-token-ids')).split(',').filter(Boolean).map(Number);
    return { ids, text: await reply.innerText() };
}

/** Records, in the page, every change of the decode rate shown while the reply is still streaming. */
async function watchLiveFigures(page) {
    await page.evaluate(() => {
        window.__liveDecode = [];
        new MutationObserver(() => {
            const rate = Number(document.querySelector('.decode-rate')?.dataset.rate ?? 0);
            const reply = [...document.querySelectorAll('.message.model')].at(-1);
            if (reply?.dataset.done === 'false') window.__liveDecode.push(rate);
        }).observe(document.body, { subtree: true, attributes: true, attributeFilter: ['data-rate'] });
    });
}

function shardRequests(server, since) {
    return server.requests.slice(since).filter((r) => r.path === shard);
}

async function chatPage(t) {
    const expected = (await cpuReference(modelDir, PROMPT, MAX_TOKENS)).ids;
    assert.equal(expected.length, MAX_TOKENS, `the CPU reference stopped early: ${expected}`);
    t.log(`CPU reference: ${expected.join(',')}`);

    // The package's worker, with hooks that keep its GPU devices (to destroy one: a lost device).
    const server = await t.serve({ '/': dist, '/pkg/': hookedPackage(dist) });
    const context = await t.browser({ viewport: { width: 1280, height: 860 } });
    const page = context.pages()[0] ?? await context.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
    const modelUrl = `${server.url}/?model=models/demo/`;
    // Every main-thread task over 50 ms, and when the page became interactive (main-thread.mjs).
    await observeLongTasks(page);
    // 1. First load from the network; greedy reply equals the CPU reference.
    await page.goto(`${server.url}/`);
    await page.waitForSelector('.known-models button.load-model', { timeout: 60_000 });
    const trace = await traceMainThreads(page);
    const folderMark = await trace.mark(page);
    await page.screenshot({ path: path.join(t.screenshots, 'picker.png') });
    // A converted model folder picked on this computer loads too (no network, no cache).
    await page.locator('.folder input[type=file]').setInputFiles(modelDir);
    await waitReady(page);
    assert.equal(page.workers().length, 1, 'the model runs in a worker');
    assert.equal(shardRequests(server, 0).length, 0, 'a picked folder is read from disk');
    assert.equal(await page.locator('.load-summary').getAttribute('data-cache'), 'Unavailable');
    await setNumber(page, 'temperature', 0);
    await setNumber(page, 'max-tokens', MAX_TOKENS);
    await watchLiveFigures(page);
    assert.deepEqual((await chat(page, PROMPT)).ids, expected, 'the picked folder gives the same reply');
    const folderPage = await longTasksSinceInteractive(page);
    const live = await page.evaluate(() => window.__liveDecode);
    assert.ok(live.some((rate) => rate > 0), `the decode rate was shown while the reply streamed: ${live}`);
    t.log(`a picked local folder loads and replies like the CPU reference; live decode rates ${live.map((r) => r.toFixed(1)).join(', ')} tok/s`);

    await page.goto(modelUrl);
    const linkMark = await trace.mark(page);
    await waitReady(page);
    assert.equal(shardRequests(server, 0).length, 1, 'the shard was fetched once');
    assert.equal(await page.locator('.load-summary').getAttribute('data-cache'), 'On');
    await setNumber(page, 'temperature', 0);
    await setNumber(page, 'max-tokens', MAX_TOKENS);
    const first = await chat(page, PROMPT);
    assert.deepEqual(first.ids, expected, 'greedy reply in the browser equals rg generate --backend cpu');
    t.log(`browser reply matches the CPU reference (${first.ids.length} tokens)`);
    const peakWasm = Number(await page.locator('.load-figures').getAttribute('data-peak-wasm'));
    t.log(`the engine's wasm heap peak during the load (in its worker): ${(peakWasm / 2 ** 20).toFixed(1)} MiB`);
    // SwiftShader's adapter.info names it ("google swiftshader …").
    const adapter = await page.locator('.stats .adapter').innerText();
    assert.match(adapter, /swiftshader/i, 'the page shows the GPU adapter');
    t.log(`the page shows the adapter: ${adapter}`);
    assert.ok(peakWasm > 0 && peakWasm < 128 * 2 ** 20, `wasm heap peaked at ${peakWasm} B during the load`);
    const firstToken = Number(await page.locator('.first-token').getAttribute('data-seconds'));
    assert.ok(firstToken > 0 && firstToken < 60, `the figures show the time to the first token (${firstToken} s)`);
    t.log(`time to first token: ${(1000 * firstToken).toFixed(0)} ms, prefill ${await page.locator('.prefill-rate').textContent()}`);
    const stateBytes = await page.locator('.state-bytes').getAttribute('data-bytes');
    const gpuBytes = await page.locator('.gpu-bytes').getAttribute('data-bytes');
    assert.ok(Number(stateBytes) > 0 && Number(gpuBytes) > Number(stateBytes));
    const format = JSON.parse(fs.readFileSync(path.join(modelDir, 'manifest.json'), 'utf8')).quantization;
    assert.equal(await page.locator('.weight-bytes').getAttribute('data-format'), format, 'the page names the weight format');
    assert.match(await page.locator('.weight-bytes').textContent(), new RegExp(`MiB, ${format}$`));
    // The main thread never waited for the model: two loads (a picked folder, then a URL over
    // the network) and a reply after each, from the moment each page was interactive.
    const linkPage = await longTasksSinceInteractive(page);
    const traced = await trace.stop();
    for (const [what, tasks, mark] of [['a folder load and a reply', folderPage, folderMark], ['a network load and a reply', linkPage, linkMark]]) {
        const long = withCpuTime(tasks.after, traced, mark);
        const longest = long.reduce((a, t) => (t.duration > (a?.duration ?? 0) ? t : a), null);
        const busiest = busiestSince(traced, mark, tasks.interactive);
        t.log(`${what}: ${long.length} main-thread task(s) over ${LONG_TASK_MS} ms once interactive`
            + (longest ? `, the longest ${longest.duration.toFixed(0)} ms, of which the thread ran ${longest.cpu?.toFixed(0) ?? '?'} ms` : '')
            + `; the most CPU one task took: ${busiest.cpu.toFixed(1)} ms (${busiest.wall.toFixed(0)} ms wall)`
            + `; before: the app's start, ${tasks.before.toFixed(0)} ms`);
        // A task is the page's long work if its thread ran for over 50 ms of it; one that only
        // waited for a CPU (the model's SwiftShader threads, other processes) is the machine's load.
        const pages = long.filter((t) => t.cpu === null || t.cpu > LONG_TASK_MS);
        assert.deepEqual(pages, [], `${what}: no main-thread task over ${LONG_TASK_MS} ms once interactive`);
        assert.ok(busiest.cpu < LONG_TASK_MS, `${what}: a main-thread task ran ${busiest.cpu} ms`);
    }

    // 2. A setting the model cannot use is refused where it is typed, with the reason; the
    // field keeps the old value and the next message goes through.
    for (const [cls, value, kept] of [['top-p', 0, '0.95'], ['top-p', 1.5, '0.95'], ['max-tokens', 0, String(MAX_TOKENS)],
        ['temperature', -1, '0'], ['top-k', 2.5, '40'], ['seed', 2 ** 53, '0'], ['max-tokens', 2 ** 53, String(MAX_TOKENS)]]) {
        await setNumber(page, cls, value);
        const error = page.locator(`.settings .${cls} .setting-error`);
        assert.match(await error.innerText(), /must be/, `${cls} = ${value} is refused`);
        assert.equal(await page.locator(`.settings .${cls} input`).inputValue(), kept, `${cls} keeps ${kept}`);
    }
    await setNumber(page, 'top-p', 0.95);
    assert.equal(await page.locator('.settings .top-p .setting-error').count(), 0, 'a good value clears the error');
    t.log('settings out of range are refused before anything is sent');

    // Shift+Enter makes a new line; markup in a message is shown as text, never run.
    await page.locator('textarea.prompt').fill('line one');
    await page.locator('textarea.prompt').press('Shift+Enter');
    await page.locator('textarea.prompt').type('line two');
    assert.equal(await page.locator('textarea.prompt').inputValue(), 'line one\nline two');
    assert.equal(await page.locator('.message.user').count(), 1, 'Shift+Enter did not send');
    const hostile = 'look: <img src=x onerror="window.__xss=1"> and <script>window.__xss=2</script> **bold**';
    const second = await chat(page, hostile);
    const userText = await page.locator('.message.user').last().innerText();
    assert.ok(userText.includes('<img src=x onerror="window.__xss=1">') && userText.includes('<script>'), userText);
    assert.equal(await page.locator('.messages img, .messages script').count(), 0, 'no element was made from the text');
    assert.equal(await page.evaluate(() => window.__xss), undefined, 'no script ran');
    assert.ok(second.ids.length > 0);
    // The state is the same size after a longer conversation; so is all GPU memory.
    assert.equal(await page.locator('.state-bytes').getAttribute('data-bytes'), stateBytes);
    assert.equal(await page.locator('.gpu-bytes').getAttribute('data-bytes'), gpuBytes);
    const tokens = Number(await page.locator('.conversation-tokens').innerText());
    assert.ok(tokens > first.ids.length + 20, `conversation tokens ${tokens}`);
    await page.screenshot({ path: path.join(t.screenshots, 'chat.png') });
    t.log(`second turn ok; state ${stateBytes} B and GPU ${gpuBytes} B unchanged at ${tokens} tokens`);

    // 3. Stop halts a long generation.
    await setNumber(page, 'max-tokens', 2000);
    await page.locator('textarea.prompt').fill('Tell me a very long story.');
    await page.locator('textarea.prompt').press('Enter');
    await page.waitForFunction(() => {
        const m = [...document.querySelectorAll('.message.model')].at(-1);
        return m && m.innerText.length > 10;
    }, null, { timeout: LOAD_TIMEOUT });
    await page.locator('button.stop').click();
    await page.waitForSelector('.message.model:last-child[data-stopped="true"][data-done="true"]', { timeout: 60_000 });
    const stoppedIds = (await page.locator('.message.model').last().getAttribute('data-token-ids')).split(',');
    assert.ok(stoppedIds.length < 2000, `stopped after ${stoppedIds.length} tokens`);
    t.log(`Stop halted the reply after ${stoppedIds.length} tokens`);
    // Stop during a long message's prefill: the reply ends before its first token, and the
    // conversation is as it was before the message.
    const tokensBefore = await page.locator('.conversation-tokens').innerText();
    await page.locator('textarea.prompt').fill('Tell me about recurrent networks and attention. '.repeat(300));
    await page.locator('textarea.prompt').press('Enter');
    await page.locator('button.stop').click();
    await page.waitForSelector('.message.model:last-child[data-stopped="true"][data-done="true"]', { timeout: 60_000 });
    assert.equal(await page.locator('.message.model').last().getAttribute('data-token-ids'), '', 'no token after Stop');
    assert.equal(await page.locator('.conversation-tokens').innerText(), tokensBefore, 'the prompt was taken back');
    t.log('Stop during a long prompt ended it before the first token');

    // 4. New chat, then Regenerate (greedy: the same reply again).
    await page.locator('button.new-chat').click();
    assert.equal(await page.locator('.message').count(), 0);
    await setNumber(page, 'max-tokens', MAX_TOKENS);
    const fresh = await chat(page, PROMPT);
    assert.deepEqual(fresh.ids, expected, 'New chat starts from an empty state');
    // Mark the reply, so the wait below cannot mistake it for the regenerated one.
    await page.evaluate(() => { document.querySelector('.message.model').dataset.replaced = 'yes'; });
    await page.locator('button.regenerate').click();
    await page.waitForFunction(() => {
        const m = document.querySelector('.message.model');
        return m && !m.dataset.replaced && m.dataset.done === 'true' && m.dataset.tokenIds
            && !document.querySelector('button.stop');
    }, null, { timeout: LOAD_TIMEOUT });
    assert.equal(await page.locator('.message.model').count(), 1, 'the reply was replaced, not added');
    const again = (await page.locator('.message.model').last().getAttribute('data-token-ids')).split(',').map(Number);
    assert.deepEqual(again, expected, 'greedy regenerate repeats the reply');
    // New chat, sampled with a seed at T > 0 (the GPU's draw depends on the seed and the
    // tokens generated so far): after New chat the same message gets the same reply, and
    // without it another one, so this fails if New chat leaves anything behind.
    await setNumber(page, 'temperature', 1);
    await setNumber(page, 'top-k', 0);
    await setNumber(page, 'top-p', 1);
    await setNumber(page, 'seed', 11);
    await page.locator('button.new-chat').click();
    const sampled = await chat(page, PROMPT);
    const continued = await chat(page, PROMPT);
    assert.notDeepEqual(continued.ids, sampled.ids, 'without New chat the sampled reply differs');
    await page.locator('button.new-chat').click();
    assert.deepEqual((await chat(page, PROMPT)).ids, sampled.ids, 'after New chat the sampled reply repeats');
    t.log('new chat and regenerate ok');

    // The demo is a trained model: asked for a passage, it answers in readable English and
    // ends its reply by itself (<end_of_turn>), like the CPU reference.
    await setNumber(page, 'temperature', 0);
    await setNumber(page, 'max-tokens', PASSAGE_LIMIT);
    await page.locator('button.new-chat').click();
    const passage = await chat(page, PASSAGE_PROMPT);
    assert.deepEqual(passage.ids, (await cpuReference(modelDir, PASSAGE_PROMPT, PASSAGE_LIMIT)).ids,
        'the passage equals the CPU reference');
    assert.ok(passage.ids.length < PASSAGE_LIMIT, `the reply ran to the ${PASSAGE_LIMIT}-token limit`);
    assert.notEqual(await page.locator('.message.model').last().getAttribute('data-stopped'), 'true');
    assertReadable(passage.text);
    await page.screenshot({ path: path.join(t.screenshots, 'passage.png') });
    t.log(`the trained demo replied in ${passage.ids.length} tokens and stopped by itself: ${JSON.stringify(passage.text)}`);

    // 5. Reload: every weight byte comes from Cache Storage, none from the network.
    let mark = server.requests.length;
    await page.reload();
    await waitReady(page);
    assert.equal(shardRequests(server, mark).length, 0, 'no shard fetched after a reload');
    assert.ok(Number(await page.locator('.load-summary').getAttribute('data-from-cache')) > 0);
    t.log('reload loaded from the cache');

    // 6. A corrupted cached shard is detected and fetched again: a reload checks each cached
    // segment against the digest it was stored with (headers kept here, the body damaged).
    const editCache = (edit) => page.evaluate(async ([name, edit]) => {
        const cache = await caches.open('recurrentgemma-models-v1');
        const digests = [];
        for (const request of await cache.keys()) {
            if (!request.url.includes(name)) continue;
            const response = await cache.match(request);
            const headers = new Headers(response.headers);
            digests.push(headers.get('x-rg-sha256'));
            const bytes = new Uint8Array(await response.arrayBuffer());
            if (edit === 'damage') bytes[bytes.length - 100] ^= 0xff;
            if (edit === 'forget digests') headers.delete('x-rg-sha256');
            await cache.put(request, new Response(bytes, { headers }));
        }
        return digests;
    }, ['model-00000.safetensors', edit]);
    const digests = await editCache('damage');
    assert.ok(digests.length >= 2 && digests.every((d) => /^[0-9a-f]{64}$/.test(d)), `segment digests: ${digests}`);
    mark = server.requests.length;
    await page.reload();
    await waitReady(page);
    assert.equal(shardRequests(server, mark).length, 1, 'the damaged shard was fetched again');
    assert.match(await page.locator('.load-notes').innerText(), /damaged \(the segment at byte \d+ fails its sha256\)/);
    await setNumber(page, 'temperature', 0);
    await setNumber(page, 'max-tokens', MAX_TOKENS);
    assert.deepEqual((await chat(page, PROMPT)).ids, expected, 'the re-fetched weights are right');
    t.log(`damaged cache entry caught by its segment's digest and re-fetched (${digests.length} segments)`);

    // A cache written before segments had digests is read as it is, hashed whole in wasm.
    await editCache('forget digests');
    mark = server.requests.length;
    await page.reload();
    await waitReady(page);
    assert.equal(shardRequests(server, mark).length, 0, 'segments without digests are still read from the cache');
    await setNumber(page, 'temperature', 0);
    await setNumber(page, 'max-tokens', MAX_TOKENS);
    assert.deepEqual((await chat(page, PROMPT)).ids, expected, 'weights read from segments without digests');
    t.log('segments without digests loaded from the cache');

    assert.deepEqual(errors, [], 'no errors in the console');

    // 7. A connection dropped mid-shard resumes with a Range request.
    await page.locator('button.clear-cache').click();
    // waitForFunction does not await an async predicate (a Promise is truthy): poll instead.
    for (let tries = 0; ; tries++) {
        const cached = await page.evaluate(async () => (await (await caches.open('recurrentgemma-models-v1')).keys()).length);
        if (cached === 0) break;
        assert.ok(tries < 100, `the cache still holds ${cached} entries after Clear`);
        await new Promise((resolve) => setTimeout(resolve, 100));
    }
    server.cutOnce(shard, 3_000_000);
    mark = server.requests.length;
    await page.reload();
    await waitReady(page);
    const resumed = shardRequests(server, mark);
    assert.equal(resumed.length, 2, JSON.stringify(resumed));
    assert.match(resumed[1].range ?? '', /^bytes=\d+-$/);
    // It resumes from the last byte the page received: past 0, at most the 3,000,000 sent
    // (what was still in flight when the socket closed is lost with it).
    const resumedAt = Number(/bytes=(\d+)-/.exec(resumed[1].range)[1]);
    assert.ok(resumedAt > 0 && resumedAt <= 3_000_000, resumed[1].range);
    await setNumber(page, 'temperature', 0);
    await setNumber(page, 'max-tokens', MAX_TOKENS);
    assert.deepEqual((await chat(page, PROMPT)).ids, expected, 'the resumed download gives the right weights');
    t.log(`dropped connection resumed with ${resumed[1].range}`);

    // 8. Storage quota too small: the model still loads, without caching, and says so.
    await page.locator('button.clear-cache').click();
    const cdp = await context.newCDPSession(page);
    await cdp.send('Storage.overrideQuotaForOrigin', { origin: server.url, quotaSize: 1_000_000 });
    await page.reload();
    await waitReady(page);
    assert.equal(await page.locator('.load-summary').getAttribute('data-cache'), 'QuotaExceeded');
    await cdp.send('Storage.overrideQuotaForOrigin', { origin: server.url });
    t.log('quota exceeded: loaded without caching');

    // 9. The GPU device is lost mid-reply: the page reloads the model from the cache by itself
    // (no shard request, no page reload) and reopens the conversation from its last save, with
    // the unanswered message back in the composer. Lost again before a reply, it waits for a click.
    await page.reload();
    await waitReady(page);
    await setNumber(page, 'temperature', 0);
    await setNumber(page, 'max-tokens', MAX_TOKENS);
    assert.deepEqual((await chat(page, PROMPT)).ids, expected, 'the reply before the loss');
    const saved = await page.locator('.message').allInnerTexts();
    await page.evaluate(() => { window.__samePage = true; });
    mark = server.requests.length;
    await setNumber(page, 'max-tokens', 2000);
    await page.locator('textarea.prompt').fill('Tell me more.');
    await page.locator('textarea.prompt').press('Enter');
    await page.waitForFunction(() => (document.querySelectorAll('.message.model')[1]?.textContent.length ?? 0) > 10,
        null, { timeout: LOAD_TIMEOUT, polling: 100 });
    await (await engineWorker(page)).evaluate(() => self.__devices.at(-1).destroy());
    await page.waitForSelector('.recovery-note', { timeout: LOAD_TIMEOUT });
    await page.waitForFunction(() => !document.querySelector('button.stop') && document.querySelectorAll('.message').length === 2,
        null, { timeout: LOAD_TIMEOUT, polling: 250 });
    const note = await page.locator('.recovery-note').innerText();
    assert.match(note, /^The GPU was lost \(.*\): the model was reloaded from this browser's cache, and the conversation restored from its last save\.$/);
    assert.equal(shardRequests(server, mark).length, 0, 'no shard fetched to recover');
    assert.equal(await page.evaluate(() => window.__samePage), true, 'recovered without reloading the page');
    assert.deepEqual(await page.locator('.message').allInnerTexts(), saved, 'the conversation is back as saved');
    assert.equal(await page.locator('.restore-note').count(), 0, 'its saved state was restored, not re-read');
    assert.equal(await page.locator('textarea.prompt').inputValue(), 'Tell me more.', 'the unanswered message is back');
    t.log(`device lost mid-reply: ${note}`);

    // Lost between calls: the page notices at once (the package's onDeviceLost), not at the next message.
    await (await engineWorker(page)).evaluate(() => self.__devices.at(-1).destroy());
    await page.waitForSelector('.device-lost', { timeout: 60_000 });
    await page.locator('.device-lost button.retry').click();
    await waitReady(page);
    await setNumber(page, 'temperature', 0);
    await setNumber(page, 'max-tokens', MAX_TOKENS);
    assert.deepEqual((await chat(page, PROMPT)).ids, expected, 'the reloaded engine works');
    t.log('device lost again between calls, before a reply: the page said so at once, waited for a click, then reloaded');
}

/** 10. No WebGPU: a page that says why, not a blank screen. */
async function noWebGpu(t) {
    const bare = await t.bareBrowser();
    const server = await t.serve({ '/': dist });
    const page = await bare.newPage();
    await page.addInitScript(() => Object.defineProperty(Navigator.prototype, 'gpu', { get: () => undefined }));
    await page.goto(`${server.url}/?model=models/demo/`);
    await page.waitForSelector('.no-webgpu', { timeout: 60_000 });
    assert.match(await page.locator('.no-webgpu').innerText(), /WebGPU/);
    assert.equal(shardRequests(server, 0).length, 0, 'nothing downloaded without WebGPU');
    await page.screenshot({ path: path.join(t.screenshots, 'no-webgpu.png') });
    t.log('no-WebGPU page shown');
}

export default [
    { name: 'app', needs: ['rg', 'site'], run: chatPage },
    { name: 'app (no WebGPU)', needs: ['site'], run: noWebGpu },
];
