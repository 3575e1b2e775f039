// The page's saved conversations, in this origin's IndexedDB (nothing leaves the browser).
// Two object stores, both keyed by the conversation's id:
//   conversations: { id, title, updated, revision, messages: [{ speaker, text, tokenIds, stopped, promptTokens }] }
//   states:        { id, modelId, bytes } — the engine's state after the conversation's last reply,
//                  bit for bit (`snapshot.toBytes()`), and the identity (manifest sha256) of the
//                  model that made it, so it is only ever offered back to that model.
// A conversation and its state are written in one transaction: the two never disagree. Failures
// reject with the DOMException IndexedDB gives (a full quota is a `QuotaExceededError`); an
// operation that has not settled within OPERATION_MS rejects with a `TimeoutError`, so the page
// never waits on a hung one for good.
// Imported by the page's wasm (src/app/store.rs); records cross as JSON text and a Uint8Array.
//
// Several tabs share the store. Every save carries the conversation's next revision and is refused
// (a `StaleError`) unless the stored one is the revision before it: a tab never overwrites what
// another saved since it read, nor brings back a conversation another deleted. Every change is
// announced on the BroadcastChannel CHANNEL as { id, change: 'saved' | 'renamed' | 'deleted' }.

const NAME = 'recurrentgemma-chat';
const VERSION = 1;
const OPERATION_MS = 15_000;
export const CHANNEL = 'recurrentgemma-chat';

const announcer = typeof BroadcastChannel === 'function' ? new BroadcastChannel(CHANNEL) : null;
function announce(id, change) {
    announcer?.postMessage({ id, change });
}

/** Calls `onChange(id, change)` for every change another tab makes (a channel does not hear its
 * own messages, so this tab's changes are not reported back to it). */
export function listenForChanges(onChange) {
    if (announcer) announcer.onmessage = ({ data }) => onChange(String(data?.id), String(data?.change));
}

let opening = null;

function database() {
    opening ??= new Promise((resolve, reject) => {
        const request = indexedDB.open(NAME, VERSION);
        // Each version's changes, applied in order from the version the browser holds (0: none),
        // so that a later VERSION adds its step here and keeps every saved conversation.
        request.onupgradeneeded = (event) => {
            const db = request.result;
            if (event.oldVersion < 1) {
                db.createObjectStore('conversations', { keyPath: 'id' });
                db.createObjectStore('states', { keyPath: 'id' });
            }
        };
        request.onsuccess = () => {
            // Another tab upgrading the schema: let it, and reopen on the next call.
            request.result.onversionchange = () => { request.result.close(); opening = null; };
            resolve(request.result);
        };
        request.onerror = () => reject(request.error);
        request.onblocked = () => reject(new DOMException('another tab holds the conversation store open', 'InvalidStateError'));
    });
    // A failed open is tried again next time rather than remembered.
    opening.catch(() => { opening = null; });
    return opening;
}

/** Runs `work(stores...)` in one transaction; resolves with what its returned request read, once committed. */
function transaction(names, mode, work) {
    let timer;
    const timeout = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new DOMException(
            `the browser's storage (IndexedDB) did not answer within ${OPERATION_MS / 1000} s`, 'TimeoutError')), OPERATION_MS);
    });
    const run = (async () => {
        const db = await database();
        return new Promise((resolve, reject) => {
            const tx = db.transaction(names, mode);
            const request = work(...names.map((name) => tx.objectStore(name)));
            tx.oncomplete = () => resolve(request?.result);
            // A failed request aborts the transaction; its error (QuotaExceededError, ...) is the one to report.
            tx.onabort = () => reject(tx.error ?? request?.error ?? new DOMException('the transaction was aborted', 'AbortError'));
        });
    })();
    return Promise.race([run, timeout]).finally(() => clearTimeout(timer));
}

/** Every saved conversation (without states), most recent first, as JSON text: the records as they
 * are stored, which the page reads one by one (it skips one it cannot read). */
export async function listConversations() {
    const all = await transaction(['conversations'], 'readonly', (conversations) => conversations.getAll());
    all.sort((a, b) => b.updated - a.updated);
    return JSON.stringify(all);
}

/**
 * Saves a conversation (JSON text) and, in the same transaction, the state after its last reply
 * (`bytes`, made by the model `modelId`), or removes a stale one when `bytes` is null. When the
 * state does not fit the quota, the conversation is saved without it (and without the older state,
 * which no longer matches its messages). Resolves with whether the state was saved.
 */
export async function saveConversation(json, modelId, bytes) {
    const conversation = JSON.parse(json);
    let stale = null;
    const write = (withState) => transaction(['conversations', 'states'], 'readwrite', (conversations, states) => {
        const read = conversations.get(conversation.id);
        read.onsuccess = () => {
            const stored = read.result;
            const expected = conversation.revision - 1;
            if ((stored?.revision ?? 0) !== expected) {
                stale = stored ? 'changed' : 'deleted';
                read.transaction.abort();
                return;
            }
            conversations.put(conversation);
            if (withState) states.put({ id: conversation.id, modelId, bytes });
            else states.delete(conversation.id);
        };
    });
    const refuse = () => new DOMException(`this conversation was ${stale} in another tab`, 'StaleError');
    let withState = Boolean(bytes);
    try {
        await write(withState);
    } catch (e) {
        if (stale) throw refuse();
        if (!bytes || e?.name !== 'QuotaExceededError') throw e;
        withState = false;
        await write(false).catch((again) => { throw stale ? refuse() : again; });
    }
    announce(conversation.id, 'saved');
    return withState;
}

/** `{ conversation: JSON text, state: { modelId, bytes } | null }`, read in one transaction (so
 * that the state is the one saved with these messages), or null when there is no such conversation. */
export async function openConversation(id) {
    let conversation;
    const state = await transaction(['conversations', 'states'], 'readonly', (conversations, states) => {
        conversations.get(id).onsuccess = (event) => { conversation = event.target.result; };
        return states.get(id);
    });
    return conversation ? { conversation: JSON.stringify(conversation), state: state ?? null } : null;
}

/** Renames a conversation: its title alone changes, whatever else another tab saved meanwhile. */
export async function renameConversation(id, title) {
    await transaction(['conversations'], 'readwrite', (conversations) => {
        const read = conversations.get(id);
        read.onsuccess = () => {
            if (read.result) conversations.put({ ...read.result, title });
        };
    });
    announce(id, 'renamed');
}

/** Deletes a conversation and its state (the space is freed when IndexedDB compacts). */
export async function deleteConversation(id) {
    await transaction(['conversations', 'states'], 'readwrite', (conversations, states) => {
        conversations.delete(id);
        states.delete(id);
    });
    announce(id, 'deleted');
}
