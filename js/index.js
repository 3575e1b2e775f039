// recurrentgemma-web: RecurrentGemma on WebGPU, in your page or in a worker.
//
//   import { createEngine } from './pkg/index.js';
//   const engine = await createEngine('https://host/recurrentgemma-2b-it-int8/', { worker: true, onProgress });
//   for await (const piece of engine.stream('Hello!', { temperature: 0.7 })) output.textContent += piece;
//
// `Engine` runs the model on this thread; `WorkerEngine` runs the same engine in a dedicated Web
// Worker and has the same (all-async) API, so the page never janks.
import init, { RecurrentGemma, StateSnapshot } from './rgweb.js';

const OTHER_ENGINE = 'this snapshot was taken by another engine: restore it into the engine that made it';

let initialized;
function initOnce() {
    initialized ??= init();
    return initialized;
}

/** Turns a callback-streaming call into an async iterator of text pieces; returns the reply. */
async function* streamOf(engine, start, options) {
    const queue = [];
    let wake = null;
    let settled = false;
    let reply;
    let failure;
    const notify = () => { wake?.(); wake = null; };
    const running = start({
        ...options,
        onToken: (piece) => { options.onToken?.(piece); queue.push(piece); notify(); },
    }).then((r) => { reply = r; }, (e) => { failure = e; }).finally(() => { settled = true; notify(); });
    try {
        for (;;) {
            if (queue.length) {
                yield queue.shift();
            } else if (settled) {
                break;
            } else {
                await new Promise((resolve) => { wake = resolve; });
            }
        }
        if (failure) throw failure;
        return reply;
    } finally {
        // The consumer stopped early (break, return, throw): stop generating too.
        if (!settled) engine.abort();
        await running;
    }
}

function withSignal(engine, signal) {
    if (!signal) return () => {};
    const onAbort = () => engine.abort();
    signal.addEventListener('abort', onAbort, { once: true });
    return () => signal.removeEventListener('abort', onAbort);
}

/** What both engines offer on top of `invoke(method, args, onToken)`. */
class EngineApi {
    async #run(method, first, options = {}) {
        const { onToken, signal, ...sampling } = options ?? {};
        // Nothing starts for a signal aborted already: the caller meant it not to.
        if (signal?.aborted) throw new DOMException('the signal was aborted before the call started', 'AbortError');
        if (onToken != null && typeof onToken !== 'function') throw new TypeError('options.onToken must be a function');
        const release = withSignal(this, signal);
        try {
            return await this.invoke(method, first === undefined ? [sampling] : [first, sampling], onToken);
        } finally {
            release();
        }
    }

    /** A chat turn; only its own tokens are prefilled. Options: temperature, topK, topP, seed,
     * maxTokens, onToken(piece), signal (AbortSignal). Resolves to { text, tokenIds, promptTokens, stopped }. */
    chat(message, options) { return this.#run('chat', String(message), options); }

    /** Plain completion of `prompt` (no chat template). */
    generate(prompt, options) { return this.#run('generate', String(prompt), options); }

    /** The last chat message answered again (pass another seed for another reply). */
    regenerate(options) { return this.#run('regenerate', undefined, options); }

    /** `chat` as an async iterator of text pieces. */
    stream(message, options = {}) { return streamOf(this, (o) => this.chat(message, o), options); }

    /** `generate` as an async iterator of text pieces. */
    streamGenerate(prompt, options = {}) { return streamOf(this, (o) => this.generate(prompt, o), options); }
}

/** The model on the calling thread. */
export class Engine extends EngineApi {
    #model;

    constructor(model) {
        super();
        this.#model = model;
    }

    /** Loads the model at `baseUrl` (manifest.json, tokenizer.json, shards). */
    static async load(baseUrl, { onProgress } = {}) {
        await initOnce();
        return new Engine(await RecurrentGemma.load(String(baseUrl), onProgress ?? null));
    }

    invoke(method, args, onToken) { return this.#model[method](...args, onToken ?? null); }

    /** Stops the reply being generated; its promise resolves with the text so far. */
    abort() { this.#model.abort(); }

    async reset() { this.#model.reset(); }

    /** The conversation state (fixed size). Call `free()` on it when done. */
    async snapshot() { return this.#model.snapshot(); }

    async restore(snapshot) {
        if (!(snapshot instanceof StateSnapshot)) throw new Error(OTHER_ENGINE);
        this.#model.restore(snapshot);
    }

    async stats() { return this.#model.stats(); }

    /** Frees the GPU memory now; the engine cannot be used afterwards. */
    async dispose() { this.#model.dispose(); }

    /** GPU bytes held by the model (0 once disposed). */
    async gpuBytes() { return this.#model.gpuBytes; }

    /** Bytes of model files this origin keeps in Cache Storage. */
    static async cachedBytes() { await initOnce(); return RecurrentGemma.cachedBytes(); }

    static async clearCache() { await initOnce(); return RecurrentGemma.clearCache(); }
}

/** A snapshot held by the worker. */
class WorkerSnapshot {
    #free;

    constructor(engine, id, free) { this.engine = engine; this.id = id; this.#free = free; }

    free() { return this.#free(); }
}

/** How long `dispose()` waits for the worker to free the GPU memory before it ends the worker anyway. */
const DISPOSE_WAIT_MS = 5000;

/** The same engine in a dedicated Web Worker. */
export class WorkerEngine extends EngineApi {
    #worker;
    #pending = new Map();
    #nextId = 1;
    /** Why no call can be made any more (disposed, or the worker failed); null while usable. */
    #closed = null;

    constructor(worker) {
        super();
        this.#worker = worker;
        worker.onmessage = ({ data }) => {
            const call = this.#pending.get(data.id);
            if (!call) return;
            if ('progress' in data) call.onProgress?.(data.progress);
            else if ('token' in data) call.onToken?.(data.token);
            else {
                this.#pending.delete(data.id);
                if ('error' in data) call.reject(new Error(data.error));
                else call.resolve(data.result);
            }
        };
        // A worker that failed cannot answer: every call waiting, and every later one, gets the error.
        worker.onerror = (event) => {
            event.preventDefault();
            this.#close(`the engine's worker failed: ${event.message || 'unknown error'}`);
            worker.terminate();
        };
    }

    /** Makes every pending call and every later one fail with `reason`. */
    #close(reason) {
        this.#closed ??= reason;
        for (const call of this.#pending.values()) call.reject(new Error(reason));
        this.#pending.clear();
    }

    /** Starts a worker (`worker.js` beside this module unless `workerUrl` is given) and loads the model there. */
    static async load(baseUrl, { onProgress, workerUrl } = {}) {
        const worker = new Worker(workerUrl ?? new URL('./worker.js', import.meta.url), { type: 'module' });
        const engine = new WorkerEngine(worker);
        try {
            await engine.call('load', [new URL(String(baseUrl), globalThis.location?.href).href], { onProgress });
        } catch (e) {
            worker.terminate();
            throw e;
        }
        return engine;
    }

    call(method, args = [], callbacks = {}) {
        if (this.#closed) return Promise.reject(new Error(this.#closed));
        return this.#send(method, args, callbacks);
    }

    #send(method, args = [], callbacks = {}) {
        const id = this.#nextId++;
        return new Promise((resolve, reject) => {
            this.#pending.set(id, { resolve, reject, ...callbacks });
            this.#worker.postMessage({ id, method, args });
        });
    }

    invoke(method, args, onToken) { return this.call(method, args, { onToken }); }

    abort() {
        if (!this.#closed) this.#worker.postMessage({ id: 0, method: 'abort', args: [] });
    }

    reset() { return this.call('reset'); }

    async snapshot() {
        const id = await this.call('snapshot');
        // Freeing a snapshot of a closed engine has nothing left to free.
        return new WorkerSnapshot(this, id, async () => { if (!this.#closed) await this.call('freeSnapshot', [id]); });
    }

    async restore(snapshot) {
        // Snapshot ids are per worker: another engine's id could name one of this engine's snapshots.
        if (!(snapshot instanceof WorkerSnapshot) || snapshot.engine !== this) throw new Error(OTHER_ENGINE);
        return this.call('restore', [snapshot.id]);
    }

    stats() { return this.call('stats'); }

    async gpuBytes() { return this.#closed ? 0 : this.call('gpuBytes'); }

    /** Frees the GPU memory and ends the worker; every call still waiting is rejected now. */
    async dispose() {
        if (this.#closed) {
            this.#worker.terminate();
            return;
        }
        this.#close('this model was disposed');
        // The worker frees the GPU memory now (not whenever it is collected), stopping the reply in
        // progress; one that does not answer in time is ended all the same.
        let timer;
        const timeout = new Promise((resolve) => { timer = setTimeout(resolve, DISPOSE_WAIT_MS); });
        await Promise.race([this.#send('dispose').catch(() => {}), timeout]);
        clearTimeout(timer);
        this.#worker.terminate();
        this.#close('this model was disposed');
    }
}

/** `Engine.load`, or `WorkerEngine.load` with `{ worker: true }`. */
export function createEngine(baseUrl, { worker = false, ...options } = {}) {
    return worker ? WorkerEngine.load(baseUrl, options) : Engine.load(baseUrl, options);
}
