// The engine's dedicated worker: runs `Engine` and answers `WorkerEngine`'s messages
// ({ id, method, args } in; { id, progress } / { id, token } while working; { id, result } or
// { id, error } at the end).
import { Engine } from './index.js';

let engine = null;
const snapshots = new Map();
let nextSnapshot = 1;

function needEngine() {
    if (!engine) throw new Error('no model is loaded');
    return engine;
}

const methods = {
    async load(id, baseUrl) {
        engine = await Engine.load(baseUrl, { onProgress: (progress) => postMessage({ id, progress }) });
    },
    chat: (id, message, options) => needEngine().chat(message, { ...options, onToken: (token) => postMessage({ id, token }) }),
    generate: (id, prompt, options) => needEngine().generate(prompt, { ...options, onToken: (token) => postMessage({ id, token }) }),
    regenerate: (id, options) => needEngine().regenerate({ ...options, onToken: (token) => postMessage({ id, token }) }),
    abort: () => engine?.abort(),
    reset: () => needEngine().reset(),
    async snapshot() {
        const handle = nextSnapshot++;
        snapshots.set(handle, await needEngine().snapshot());
        return handle;
    },
    restore(id, handle) {
        const snapshot = snapshots.get(handle);
        if (!snapshot) throw new Error('this snapshot was freed');
        return needEngine().restore(snapshot);
    },
    freeSnapshot(id, handle) {
        snapshots.get(handle)?.free();
        snapshots.delete(handle);
    },
    stats: () => needEngine().stats(),
    gpuBytes: () => engine ? engine.gpuBytes() : 0,
    async dispose() {
        for (const snapshot of snapshots.values()) snapshot.free();
        snapshots.clear();
        await engine?.dispose();
    },
};

self.onmessage = async ({ data: { id, method, args } }) => {
    try {
        const run = methods[method];
        if (!run) throw new Error(`unknown method ${method}`);
        const result = await run(id, ...args);
        if (id !== 0) postMessage({ id, result: result ?? null });
    } catch (e) {
        if (id !== 0) postMessage({ id, error: String(e?.message ?? e) });
    }
};
