// The engine's dedicated worker: runs `Engine` and answers `WorkerEngine`'s messages
// ({ id, method, args } in; { id, progress } / { id, token } while working; { id, result } or
// { id, error } at the end; { deviceLost: reason } whenever the GPU device is lost).
import { Engine } from './index.js';

let engine = null;
const snapshots = new Map();
let nextSnapshot = 1;

function needEngine() {
    if (!engine) throw new Error('no model is loaded');
    return engine;
}

function savedSnapshot(handle) {
    const snapshot = snapshots.get(handle);
    if (!snapshot) throw new Error('this snapshot was freed');
    return snapshot;
}

/** Each piece of a reply, with the figures so far, to the page. */
const streamer = (id) => (token, live) => postMessage({ id, token, live });

const methods = {
    async load(id, source) {
        engine = await Engine.load(source, {
            onProgress: (progress) => postMessage({ id, progress }),
            onDeviceLost: (reason) => postMessage({ deviceLost: reason }),
        });
        return engine.modelId;
    },
    async reload(id) {
        // Snapshots lived on the lost device.
        for (const snapshot of snapshots.values()) snapshot.free();
        snapshots.clear();
        await needEngine().reload({ onProgress: (progress) => postMessage({ id, progress }) });
    },
    chat: (id, message, options) => needEngine().chat(message, { ...options, onToken: streamer(id) }),
    generate: (id, prompt, options) => needEngine().generate(prompt, { ...options, onToken: streamer(id) }),
    regenerate: (id, options) => needEngine().regenerate({ ...options, onToken: streamer(id) }),
    chatCompletion: (id, request) => needEngine().invoke('chatCompletion', [request], streamer(id)),
    prefillMessages: (id, request) => needEngine().invoke('prefillMessages', [request], streamer(id)),
    abort: () => engine?.abort(),
    reset: () => needEngine().reset(),
    async snapshot() {
        const handle = nextSnapshot++;
        snapshots.set(handle, await needEngine().snapshot());
        return handle;
    },
    restore(id, handle) {
        return needEngine().restore(savedSnapshot(handle));
    },
    snapshotBytes: (id, handle) => savedSnapshot(handle).toBytes(),
    restoreBytes: (id, bytes) => needEngine().restore(bytes),
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
        // A state's bytes move to the page rather than being copied.
        const transfer = result instanceof Uint8Array ? [result.buffer] : [];
        if (id !== 0) postMessage({ id, result: result ?? null }, transfer);
    } catch (e) {
        if (id !== 0) postMessage({ id, error: String(e?.message ?? e) });
    }
};
