// Conversations that survive a reload, in Chromium (WebGPU on SwiftShader): the page keeps each
// conversation's messages and the engine's state after its last reply in IndexedDB, bit for bit.
// 1. Two turns, a reload, the conversation reopened from the sidebar: the third turn prefills only
//    its own tokens and its reply equals that of a second browser that sent the same three
//    messages without a reload (sampled, same seed: the state carries the sampler's position too).
// 2. A state saved with another model is refused, with the reason on the page, and the model starts
//    the conversation afresh: by the page (the stored model identity differs) and by the engine
//    (the identity inside the bytes differs while the stored one was made to match).
// 3. Rename survives a reload; a full storage quota is a message, never a crash; delete removes the
//    conversation and its state from the store.
//
// Usage: node run.mjs conversations   (after `bash scripts/build-site.sh` with the demo model in www/models/demo)
import assert from 'node:assert/strict';
import path from 'node:path';
import { root } from './harness.mjs';

const dist = path.join(root, 'dist');
const TIMEOUT = 300_000;
const MESSAGES = ['Who made the heaven and the earth?', 'And what did he say then?', 'Tell me of the light.'];
/** Sampled, seeded: a reply depends on the state, the seed and the tokens sampled so far. */
const SETTINGS = { temperature: 1, 'top-k': 0, 'top-p': 1, seed: 5, 'max-tokens': 12 };

async function openPage(context, url) {
    const page = context.pages()[0] ?? await context.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    await page.goto(url);
    await waitReady(page);
    return { page, errors };
}

async function waitReady(page) {
    await page.waitForSelector('section.chat', { timeout: TIMEOUT });
}

async function applySettings(page) {
    for (const [cls, value] of Object.entries(SETTINGS)) {
        const input = page.locator(`.settings .${cls} input`);
        await input.fill(String(value));
        await input.dispatchEvent('change');
    }
}

/** Waits until no engine call is in progress (a reply, or a conversation being opened). */
async function idle(page) {
    await page.waitForFunction(() => !document.querySelector('button.stop')
        && !document.querySelector('button.new-conversation').disabled, null, { timeout: TIMEOUT });
}

/** Sends `text`, waits for the reply and for the conversation to be saved; the reply's ids and prompt tokens. */
async function send(page, text) {
    const before = await page.locator('.message.model').count();
    await page.locator('textarea.prompt').fill(text);
    await page.locator('textarea.prompt').press('Enter');
    await page.waitForFunction((i) => document.querySelectorAll('.message.model')[i]?.dataset.done === 'true', before, { timeout: TIMEOUT });
    await idle(page);
    const reply = page.locator('.message.model').nth(before);
    const messages = await page.locator('.message').count();
    await page.waitForSelector(`li.conversation.current[data-messages="${messages}"]`, { timeout: 30_000 });
    return {
        ids: (await reply.getAttribute('data-token-ids')).split(',').filter(Boolean).map(Number),
        promptTokens: Number(await reply.getAttribute('data-prompt-tokens')),
    };
}

async function conversationTokens(page) {
    return Number(await page.locator('.conversation-tokens').innerText());
}

/** Opens the saved conversation `id` from the sidebar and waits until its state is restored (or refused). */
async function open(page, id) {
    await page.locator(`li.conversation[data-id="${id}"] button.open`).click();
    await page.waitForSelector(`li.conversation.current[data-id="${id}"]`);
    await idle(page);
}

/** What the page's IndexedDB holds: { conversations: [...], states: [{ id, modelId, bytes: length }] }. */
async function stored(page) {
    return page.evaluate(async () => {
        const db = await new Promise((resolve, reject) => {
            const request = indexedDB.open('recurrentgemma-chat');
            request.onsuccess = () => resolve(request.result);
            request.onerror = () => reject(request.error);
        });
        const all = (name) => new Promise((resolve, reject) => {
            const request = db.transaction(name).objectStore(name).getAll();
            request.onsuccess = () => resolve(request.result);
            request.onerror = () => reject(request.error);
        });
        const result = {
            conversations: await all('conversations'),
            states: (await all('states')).map((s) => ({ id: s.id, modelId: s.modelId, bytes: s.bytes.length })),
        };
        db.close();
        return result;
    });
}

/** Changes the stored state of `id` in the page: `change(record, arg)` edits it in place (it may be async). */
async function tamper(page, id, change, arg) {
    await page.evaluate(async ({ id, change, arg }) => {
        const edit = new Function(`return ${change}`)();
        const db = await new Promise((resolve, reject) => {
            const request = indexedDB.open('recurrentgemma-chat');
            request.onsuccess = () => resolve(request.result);
            request.onerror = () => reject(request.error);
        });
        const record = await new Promise((resolve) => {
            const request = db.transaction('states').objectStore('states').get(id);
            request.onsuccess = () => resolve(request.result);
        });
        await edit(record, arg);
        await new Promise((resolve, reject) => {
            const tx = db.transaction('states', 'readwrite');
            tx.objectStore('states').put(record);
            tx.oncomplete = resolve;
            tx.onabort = () => reject(tx.error);
        });
        db.close();
    }, { id, change: change.toString(), arg });
}

async function reloadsTabsAndTamper(t) {
    const server = await t.serve({ '/': dist });
    const modelUrl = `${server.url}/?model=models/demo/`;
    const context = await t.browser({ viewport: { width: 1400, height: 860 } });
    const reference = await t.browser();
    // 1. Two turns, saved with their state.
    let { page, errors } = await openPage(context, modelUrl);
    assert.equal(await page.locator('li.conversation.current.unsaved').count(), 1, 'a new conversation is open');
    await applySettings(page);
    const firstTurn = await send(page, MESSAGES[0]);
    await send(page, MESSAGES[1]);
    const history = await conversationTokens(page);
    const id = await page.locator('li.conversation.current').getAttribute('data-id');
    assert.equal(await page.locator('li.conversation.current button.open').innerText(), MESSAGES[0], 'titled by its first message');
    let store = await stored(page);
    assert.equal(store.conversations.length, 1);
    assert.equal(store.conversations[0].messages.length, 4);
    const modelId = store.states[0].modelId;
    assert.match(modelId, /^[0-9a-f]{64}$/, 'the state is stored with the model identity');
    t.log(`two turns saved: ${history} tokens in the conversation, its state ${store.states[0].bytes} B`);

    // ... after a reload, reopened: the state is restored, and the third turn prefills only itself.
    await page.reload();
    await waitReady(page);
    await applySettings(page);
    assert.equal(await page.locator('li.conversation.current.unsaved').count(), 1, 'a reload opens a new conversation');
    await open(page, id);
    assert.equal(await page.locator('.message').count(), 4, 'the messages are back');
    assert.equal(await page.locator('.restore-note').count(), 0, 'the state was restored');
    assert.equal(await conversationTokens(page), history, 'the engine holds the whole conversation again');
    // The saved state is the one after the last reply: there is none from before it to answer again from.
    assert.ok(await page.locator('button.regenerate').isDisabled(), 'Regenerate waits for a new reply');
    const third = await send(page, MESSAGES[2]);
    await page.screenshot({ path: path.join(t.screenshots, 'conversations.png') });

    // The reference: the same three messages in one go, in another browser, never reloaded.
    const other = await openPage(reference, modelUrl);
    await applySettings(other.page);
    await send(other.page, MESSAGES[0]);
    await send(other.page, MESSAGES[1]);
    assert.equal(await conversationTokens(other.page), history, 'the reference conversation is as long');
    const expected = await send(other.page, MESSAGES[2]);
    assert.deepEqual(third.ids, expected.ids, 'the third reply after the reload equals the uninterrupted one');
    assert.equal(third.promptTokens, expected.promptTokens, 'and prefilled as many tokens');
    assert.ok(third.promptTokens > 0 && third.promptTokens < history,
        `only the new turn was prefilled (${third.promptTokens} of ${history + third.promptTokens})`);
    t.log(`after a reload the third turn prefilled ${third.promptTokens} tokens (the whole history is `
        + `${history + third.promptTokens}) and replied as the uninterrupted conversation: ${third.ids.join(',')}`);
    assert.deepEqual(other.errors, []);

    // 2. Another model's state. The page refuses a state stored under another model's identity...
    await page.locator('button.new-conversation').click();
    await idle(page);
    await tamper(page, id, (record) => { record.modelId = 'f'.repeat(64); });
    await open(page, id);
    // Not offered; the model re-reads the conversation instead, so it still remembers it.
    const reread = /another model.*re-read the conversation \((\d+) tokens\)/.exec(await page.locator('.restore-note').innerText());
    assert.ok(reread, await page.locator('.restore-note').innerText());
    assert.equal(await conversationTokens(page), Number(reread[1]), 'the engine holds the re-read conversation');
    assert.ok(Number(reread[1]) > 0.8 * (history + third.promptTokens), `the whole conversation was re-read: ${reread[1]} tokens`);
    t.log(`a state stored for another model is not offered: "${await page.locator('.restore-note').innerText()}"`);
    // ... and the engine refuses bytes made by another model (their identity changed and their
    // checksum made right again), stored under this model's identity.
    await page.locator('button.new-conversation').click();
    await idle(page);
    await tamper(page, id, async (record, modelId) => {
        const bytes = new Uint8Array(record.bytes);
        bytes[12] ^= 0xff; // the first byte of the model's identity (src/chat/saved.rs)
        const body = bytes.subarray(0, bytes.length - 32);
        bytes.set(new Uint8Array(await crypto.subtle.digest('SHA-256', body)), bytes.length - 32);
        record.bytes = bytes;
        record.modelId = modelId;
    }, modelId);
    await open(page, id);
    const refused = await page.locator('.restore-note').innerText();
    assert.match(refused, /refused.*another model.*re-read the conversation/, refused);
    const reread2 = await conversationTokens(page);
    assert.ok(reread2 > 0, 'the model re-read the conversation');
    t.log(`the engine refused another model's bytes: "${refused}"`);
    // The next message prefills only itself, and saving it stores a good state again.
    const afterReread = await send(page, MESSAGES[0]);
    assert.ok(afterReread.promptTokens < reread2, `only the new message was prefilled (${afterReread.promptTokens})`);
    assert.ok(afterReread.promptTokens <= firstTurn.promptTokens + 4, 'a later turn, not the whole conversation');
    assert.equal(await page.locator('.message').count(), 8, 'the old messages stay on the page');

    // 3. Rename, and it survives a reload.
    await page.locator(`li.conversation[data-id="${id}"] button.rename`).click();
    await page.locator(`li.conversation[data-id="${id}"] .rename-input`).fill('Genesis');
    await page.locator(`li.conversation[data-id="${id}"] .rename-input`).press('Enter');
    await page.waitForSelector(`li.conversation[data-id="${id}"] button.open:text("Genesis")`);
    await page.reload();
    await waitReady(page);
    assert.equal(await page.locator(`li.conversation[data-id="${id}"] button.open`).innerText(), 'Genesis');
    t.log('rename survives a reload');

    // Delete frees the conversation and its state.
    assert.ok((await stored(page)).states.some((s) => s.id === id));
    await page.locator(`li.conversation[data-id="${id}"] button.delete`).click();
    await page.waitForSelector(`li.conversation[data-id="${id}"]`, { state: 'detached' });
    store = await stored(page);
    assert.ok(!store.conversations.some((c) => c.id === id), 'the conversation is gone from the store');
    assert.ok(!store.states.some((s) => s.id === id), 'and its state');
    await page.reload();
    await waitReady(page);
    assert.equal(await page.locator(`li.conversation[data-id="${id}"]`).count(), 0, 'for good');
    t.log('delete removes the conversation and its state');

    // 4. Two tabs on one conversation. Tab B opens what tab A saved; A saves again, and B is
    // told; B's own save is refused rather than overwriting A's; B reads it anew; B's rename
    // keeps A's messages; A's delete reaches B's list.
    await applySettings(page);
    await send(page, MESSAGES[0]);
    const shared = await page.locator('li.conversation.current').getAttribute('data-id');
    const tab = await context.newPage();
    const tabErrors = [];
    tab.on('pageerror', (e) => tabErrors.push(String(e)));
    await tab.goto(modelUrl);
    await waitReady(tab);
    await applySettings(tab);
    await open(tab, shared);
    assert.equal(await tab.locator('.message').count(), 2);
    await send(page, MESSAGES[1]);
    await tab.waitForSelector(`li.conversation[data-id="${shared}"][data-messages="4"]`, { timeout: 30_000 });
    assert.match(await tab.locator('.store-error').innerText(), /Another tab saved this conversation/);
    // B answers from what it has (two messages) and is refused the save.
    await tab.locator('textarea.prompt').fill(MESSAGES[2]);
    await tab.locator('textarea.prompt').press('Enter');
    await tab.waitForFunction(() => document.querySelectorAll('.message.model')[1]?.dataset.done === 'true', null, { timeout: TIMEOUT });
    await idle(tab);
    await tab.waitForFunction(() => /changed in another tab/.test(document.querySelector('.store-error')?.textContent ?? ''), null, { timeout: 30_000 });
    let record = (await stored(tab)).conversations.find((c) => c.id === shared);
    assert.equal(record.messages[2].text, MESSAGES[1], 'A\'s save stands: B did not overwrite it');
    const revision = record.revision;
    // Opening it again in B reads what A saved, with its state.
    await tab.locator(`li.conversation[data-id="${shared}"] button.open`).click();
    await tab.waitForFunction(() => document.querySelectorAll('.message').length === 4, null, { timeout: TIMEOUT });
    await idle(tab);
    assert.equal(await tab.locator('.message.user').nth(1).innerText(), MESSAGES[1]);
    assert.equal(await tab.locator('.restore-note').count(), 0, 'with its state');
    // B renames: only the title changes.
    await tab.locator(`li.conversation[data-id="${shared}"] button.rename`).click();
    await tab.locator(`li.conversation[data-id="${shared}"] .rename-input`).fill('Shared');
    await tab.locator(`li.conversation[data-id="${shared}"] .rename-input`).press('Enter');
    await page.waitForSelector(`li.conversation[data-id="${shared}"] button.open:text("Shared")`, { timeout: 30_000 });
    record = (await stored(page)).conversations.find((c) => c.id === shared);
    assert.equal(record.messages.length, 4, 'the rename kept the messages');
    assert.equal(record.revision, revision, 'a rename is not a save of the messages');
    // A deletes it: B's list follows, and B's next save does not bring it back under that id.
    await page.locator(`li.conversation[data-id="${shared}"] button.delete`).click();
    await tab.waitForSelector(`li.conversation[data-id="${shared}"]`, { state: 'detached', timeout: 30_000 });
    assert.match(await tab.locator('.store-error').innerText(), /Another tab deleted this conversation/);
    assert.deepEqual(tabErrors, [], 'no page errors in the second tab');
    await tab.close();
    t.log('two tabs: a save of one is announced to the other, a stale save is refused, a rename keeps the messages, a delete reaches both');

    assert.deepEqual(errors, [], 'no page errors');
}

async function fullQuota(t) {
    const server = await t.serve({ '/': dist });
    const modelUrl = `${server.url}/?model=models/demo/`;
    // A full quota: the reply is shown, the page says it was not saved, nothing crashes. In a
    // browser of its own, whose storage took no write yet (Chromium checks a store's room
    // again only now and then, so a quota lowered after a write is not seen at once).
    const tight = await t.browser();
    const { page: full, errors: fullErrors } = await openPage(tight, modelUrl);
    await applySettings(full);
    const cdp = await tight.newCDPSession(full);
    await cdp.send('Storage.overrideQuotaForOrigin', { origin: server.url, quotaSize: 1 });
    await full.locator('textarea.prompt').fill(MESSAGES[0]);
    await full.locator('textarea.prompt').press('Enter');
    await full.waitForFunction(() => document.querySelector('.message.model')?.dataset.done === 'true', null, { timeout: TIMEOUT });
    await idle(full);
    assert.equal(await full.locator('.store-error').count(), 1,
        `the page says it could not save: ${await full.locator('section.chat').innerText()}`);
    assert.match(await full.locator('.store-error').innerText(), /storage .* is full/);
    assert.equal(await full.locator('.message.model[data-done="true"]').count(), 1, 'the reply is there');
    assert.equal((await stored(full)).conversations.length, 0, 'nothing was saved');
    assert.deepEqual(fullErrors, [], 'no page errors');
    t.log(`a full quota: "${await full.locator('.store-error').innerText()}"`);
}

async function roomForMessagesOnly(t) {
    const server = await t.serve({ '/': dist });
    const modelUrl = `${server.url}/?model=models/demo/`;
    // Room for the messages but not for the state: the conversation is saved without its state,
    // the page says so, and after a reload it is there, with the model starting afresh.
    const roomy = await t.browser();
    const { page: some, errors: someErrors } = await openPage(roomy, modelUrl);
    await applySettings(some);
    const usage = await some.evaluate(async () => (await navigator.storage.estimate()).usage);
    const cdp = await roomy.newCDPSession(some);
    await cdp.send('Storage.overrideQuotaForOrigin', { origin: server.url, quotaSize: usage + 40_000 });
    await some.locator('textarea.prompt').fill(MESSAGES[0]);
    await some.locator('textarea.prompt').press('Enter');
    await some.waitForFunction(() => document.querySelector('.message.model')?.dataset.done === 'true', null, { timeout: TIMEOUT });
    await idle(some);
    await some.waitForSelector('.store-error', { timeout: 30_000 });
    assert.match(await some.locator('.store-error').innerText(), /saved without its state \(this site's storage in the browser is full\)/);
    const kept = await stored(some);
    assert.equal(kept.conversations.length, 1, 'the messages were saved');
    assert.equal(kept.conversations[0].messages.length, 2);
    assert.equal(kept.states.length, 0, 'no state was saved');
    // One record another version of the page wrote, unreadable to this one: skipped, not the whole list.
    await some.evaluate(async () => {
        const db = await new Promise((resolve) => { const r = indexedDB.open('recurrentgemma-chat'); r.onsuccess = () => resolve(r.result); });
        await new Promise((resolve, reject) => {
            const tx = db.transaction('conversations', 'readwrite');
            tx.objectStore('conversations').put({ id: 'from-elsewhere', title: 5, messages: 'none' });
            tx.oncomplete = resolve;
            tx.onabort = () => reject(tx.error);
        });
        db.close();
    });
    await cdp.send('Storage.overrideQuotaForOrigin', { origin: server.url });
    await some.reload();
    await waitReady(some);
    await some.waitForSelector('li.conversation[data-id]', { timeout: 30_000 });
    assert.equal(await some.locator('li.conversation[data-id]').count(), 1, 'the readable conversation is listed');
    assert.match(await some.locator('.store-error').innerText(), /1 saved conversation is unreadable/);
    await open(some, kept.conversations[0].id);
    assert.equal(await some.locator('.message').count(), 2, 'its messages came back');
    assert.match(await some.locator('.restore-note').innerText(), /no saved state: the model re-read the conversation/);
    assert.ok(await conversationTokens(some) > 0, 'the model remembers it');

    // A model reply is Markdown, rendered into the DOM: its links, images and raw HTML must
    // produce no element that loads or follows anything. The reply is written into a stored
    // conversation (the demo model writes no Markdown) and shown by opening it.
    const hostile = '# Title\n\n[click](javascript:alert(1)) <a href="javascript:alert(2)">a</a> '
        + '<img src="http://evil.invalid/pixel.png" onerror="alert(3)"> ![alt](http://evil.invalid/md.png)\n\n'
        + '<script>alert(4)</script>\n\n<iframe src="http://evil.invalid/"></iframe>\n\n- *item* `code`';
    await some.evaluate(async (text) => {
        const db = await new Promise((resolve) => { const r = indexedDB.open('recurrentgemma-chat'); r.onsuccess = () => resolve(r.result); });
        await new Promise((resolve, reject) => {
            const tx = db.transaction('conversations', 'readwrite');
            tx.objectStore('conversations').put({
                id: 'hostile', title: 'Hostile Markdown', updated: Date.now(), revision: 1, state_from: 0,
                messages: [{ speaker: 'user', text: 'Hi' }, { speaker: 'model', text }],
            });
            tx.oncomplete = resolve;
            tx.onabort = () => reject(tx.error);
        });
        db.close();
    }, hostile);
    await some.reload();
    await waitReady(some);
    await some.waitForSelector('li.conversation[data-id="hostile"]', { timeout: 30_000 });
    await open(some, 'hostile');
    const dom = await some.evaluate(() => {
        const reply = document.querySelector('.message.model');
        const all = [...reply.querySelectorAll('*')];
        return {
            tags: [...new Set(all.map((e) => e.tagName.toLowerCase()))].sort(),
            attributes: [...new Set(all.flatMap((e) => [...e.attributes].map((a) => a.name)))].sort(),
            urls: all.flatMap((e) => [...e.attributes].map((a) => a.value)).filter((v) => /evil|javascript:/.test(v)),
            text: reply.innerText,
        };
    });
    for (const tag of ['a', 'img', 'script', 'iframe']) assert.ok(!dom.tags.includes(tag), `no <${tag}> from model Markdown: ${dom.tags}`);
    for (const name of ['href', 'src', 'onerror']) assert.ok(!dom.attributes.includes(name), `no ${name} attribute: ${dom.attributes}`);
    // The Markdown link keeps its target as a title (shown on hover, never followed); nothing else carries a URL.
    assert.deepEqual(dom.urls, ['javascript:alert(1)'], `only the link's title holds a URL: ${dom.urls}`);
    assert.ok(dom.tags.includes('h3') && dom.tags.includes('li') && dom.tags.includes('code'), `the Markdown is rendered: ${dom.tags}`);
    assert.ok(dom.text.includes('<img src="http://evil.invalid/pixel.png" onerror="alert(3)">'), 'raw HTML is shown as text');
    assert.ok(dom.text.includes('<script>alert(4)</script>'), 'a script is shown as text');
    t.log(`model Markdown: elements ${dom.tags.join(' ')}; attributes ${dom.attributes.join(' ')}; no URL but the link's title`);

    // IndexedDB stops answering (every transaction hangs): the save gives up after its
    // timeout, the page says so, and Send comes back instead of staying hidden for good.
    await some.locator('button.new-conversation').click();
    await idle(some);
    await some.evaluate(() => {
        const hung = { objectStore: () => new Proxy({}, { get: () => () => ({}) }) };
        IDBDatabase.prototype.transaction = () => hung;
    });
    await some.locator('textarea.prompt').fill(MESSAGES[0]);
    await some.locator('textarea.prompt').press('Enter');
    await some.waitForFunction(() => document.querySelector('.message.model')?.dataset.done === 'true', null, { timeout: TIMEOUT });
    await some.waitForFunction(() => /did not answer within 15 s/.test(document.querySelector('.store-error')?.innerText ?? ''),
        null, { timeout: 60_000 });
    await idle(some);
    assert.ok(await some.locator('button.send').isVisible(), 'Send is back after the hung save');
    t.log(`a hung IndexedDB: "${await some.locator('.store-error').innerText()}", and Send is back`);
    assert.deepEqual(someErrors, [], 'no page errors');
    t.log('room for the messages only: saved without its state, said so; an unreadable record is skipped');
}

export default [
    { name: 'conversations', run: reloadsTabsAndTamper },
    { name: 'conversations (a full quota)', run: fullQuota },
    { name: 'conversations (room for the messages only, hostile Markdown, a hung IndexedDB)', run: roomForMessagesOnly },
].map((c) => ({ ...c, needs: ['site'] }));
