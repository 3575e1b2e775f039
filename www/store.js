// The page's saved conversations, in this origin's IndexedDB (nothing leaves the browser).
// Two object stores, both keyed by the conversation's id:
//   conversations: { id, title, updated, messages: [{ speaker, text, tokenIds, stopped, promptTokens }] }
//   states:        { id, modelId, bytes } — the engine's state after the conversation's last reply,
//                  bit for bit (`snapshot.toBytes()`), and the identity (manifest sha256) of the
//                  model that made it, so it is only ever offered back to that model.
// A conversation and its state are written in one transaction: the two never disagree. Failures
// reject with the DOMException IndexedDB gives (a full quota is a `QuotaExceededError`).
// Imported by the page's wasm (src/app/store.rs); records cross as JSON text and a Uint8Array.

const NAME = 'recurrentgemma-chat';
const VERSION = 1;

let opening = null;

function database() {
    opening ??= new Promise((resolve, reject) => {
        const request = indexedDB.open(NAME, VERSION);
        request.onupgradeneeded = () => {
            request.result.createObjectStore('conversations', { keyPath: 'id' });
            request.result.createObjectStore('states', { keyPath: 'id' });
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
async function transaction(names, mode, work) {
    const db = await database();
    return new Promise((resolve, reject) => {
        const tx = db.transaction(names, mode);
        const request = work(...names.map((name) => tx.objectStore(name)));
        tx.oncomplete = () => resolve(request?.result);
        // A failed request aborts the transaction; its error (QuotaExceededError, ...) is the one to report.
        tx.onabort = () => reject(tx.error ?? request?.error ?? new DOMException('the transaction was aborted', 'AbortError'));
    });
}

/** Every saved conversation (without states), most recent first, as JSON text. */
export async function listConversations() {
    const all = await transaction(['conversations'], 'readonly', (conversations) => conversations.getAll());
    all.sort((a, b) => b.updated - a.updated);
    return JSON.stringify(all);
}

/**
 * Saves a conversation (JSON text) and, in the same transaction, the state after its last reply
 * (`bytes`, made by the model `modelId`), or removes a stale one when `bytes` is null.
 */
export function saveConversation(json, modelId, bytes) {
    const conversation = JSON.parse(json);
    return transaction(['conversations', 'states'], 'readwrite', (conversations, states) => {
        conversations.put(conversation);
        if (bytes) states.put({ id: conversation.id, modelId, bytes });
        else states.delete(conversation.id);
    });
}

/** Saves a conversation's record alone (a new title); its state is left as it is. */
export function putConversation(json) {
    const conversation = JSON.parse(json);
    return transaction(['conversations'], 'readwrite', (conversations) => { conversations.put(conversation); });
}

/** `{ id, modelId, bytes }`, or null when the conversation has no saved state. */
export async function getState(id) {
    return (await transaction(['states'], 'readonly', (states) => states.get(id))) ?? null;
}

/** Deletes a conversation and its state (the space is freed when IndexedDB compacts). */
export function deleteConversation(id) {
    return transaction(['conversations', 'states'], 'readwrite', (conversations, states) => {
        conversations.delete(id);
        states.delete(id);
    });
}
