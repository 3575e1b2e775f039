// recurrentgemma-web: RecurrentGemma on WebGPU, in your page or in a worker.
//
//   import { createEngine } from 'recurrentgemma-web';
//   const engine = await createEngine('https://host/recurrentgemma-2b-it-int8/', { worker: true, onProgress });
//   const chunks = await engine.chat.completions.create({ messages, stream: true });
//   for await (const chunk of chunks) output.textContent += chunk.choices[0]?.delta.content ?? '';
//
// `engine.chat.completions.create` is OpenAI's (and WebLLM's) chat completions API; `chat`,
// `generate` and `stream` are the simple layer over the same engine. `Engine` runs the model on
// this thread; `WorkerEngine` runs the same engine in a dedicated Web Worker and has the same
// (all-async) API, so the page never janks.
import init, { RecurrentGemma } from './rgweb.js';

const OTHER_ENGINE = 'this snapshot was taken by another engine: restore it into the engine that made it, or restore its toBytes()';

const isFileList = (source) => typeof FileList !== 'undefined' && source instanceof FileList;
const isBytes = (value) => value instanceof Uint8Array || value instanceof ArrayBuffer;
const modelName = (source) => (isFileList(source) ? 'local folder' : String(source));

/** A conversation state an engine holds; `toBytes()` copies it out as a `Uint8Array` that
 * `engine.restore(bytes)` takes back, in this session or after a reload. */
class Snapshot {
    #toBytes;
    #free;

    constructor(engine, toBytes, free, handle) {
        this.engine = engine;
        this.handle = handle;
        this.#toBytes = toBytes;
        this.#free = free;
    }

    /** The state, the ids it holds, a format version and the model's identity, as bytes. */
    toBytes() { return this.#toBytes(); }

    free() { return this.#free(); }
}

let initialized;
function initOnce() {
    // A failed start (a network error fetching the wasm) is not kept: the next load tries again.
    initialized ??= init().catch((e) => {
        initialized = undefined;
        throw e;
    });
    return initialized;
}

/**
 * Runs `start(onToken)` (a callback-streaming call) and queues its pieces; `pieces()` yields
 * them as they come and returns the call's result. `started` settles at the first piece or at
 * the end of the call: a call refused at once (a bad request, "busy") rejects it.
 */
function queued(engine, start) {
    const queue = [];
    let wake = null;
    let settled = false;
    let result;
    let failure;
    let markStarted;
    const started = new Promise((resolve) => { markStarted = resolve; });
    const notify = () => { markStarted(); wake?.(); wake = null; };
    const running = start((piece, live) => { queue.push([piece, live]); notify(); })
        .then((r) => { result = r; }, (e) => { failure = e; })
        .finally(() => { settled = true; notify(); });
    async function* pieces() {
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
            return result;
        } finally {
            // The consumer stopped early (break, return, throw): stop generating too.
            if (!settled) engine.abort();
            await running;
        }
    }
    const refused = started.then(() => { if (failure && !queue.length) throw failure; });
    // Only `create` waits on it; `stream()` reports the failure from its iterator instead.
    refused.catch(() => {});
    return { started: refused, pieces };
}

/** Turns a callback-streaming call into an async iterator of text pieces; returns the reply. */
async function* streamOf(engine, start, options) {
    const call = queued(engine, (onToken) => start({
        ...options,
        onToken: (piece, live) => { options.onToken?.(piece, live); onToken(piece, live); },
    }));
    const pieces = call.pieces();
    try {
        let next;
        while (!(next = await pieces.next()).done) yield next.value[0];
        return next.value;
    } finally {
        // The consumer stopped early: so does the call.
        await pieces.return();
    }
}

/** A random id for a completion, as OpenAI's `chatcmpl-…`. */
function completionId() {
    const bytes = crypto.getRandomValues(new Uint8Array(12));
    return `chatcmpl-${Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('')}`;
}

/** OpenAI's `usage`, with WebLLM's `extra` figures and ours. */
function usageOf(reply, seconds) {
    return {
        prompt_tokens: reply.conversationPromptTokens,
        completion_tokens: reply.completionTokens,
        total_tokens: reply.conversationPromptTokens + reply.completionTokens,
        extra: {
            prefill_tokens_per_s: reply.prefillTokensPerSecond,
            decode_tokens_per_s: reply.decodeTokensPerSecond,
            time_to_first_token_s: reply.timeToFirstTokenSeconds,
            e2e_latency_s: seconds,
            /** Tokens actually run through the model for this request: the rest was in the state. */
            prefilled_tokens: reply.prefilledTokens,
            /** The conversation's whole state: fixed, however long it gets. */
            state_bytes: reply.stateBytes,
            /** What a constrained reply's masks cost per token (0 for free text). */
            mask_median_s: reply.maskSecondsMedian,
            mask_p99_s: reply.maskSecondsP99,
        },
    };
}

function finishReason(reply) {
    return reply.stopped ? 'abort' : reply.finishReason;
}

/** `engine.chat.completions.create(request)`: OpenAI's chat completions, streamed or not. */
async function createCompletion(engine, request) {
    if (request === null || typeof request !== 'object') throw new Error('request must be an object { messages, … }');
    const { stream = false, stream_options: streamOptions, signal, ...rest } = request;
    if (typeof stream !== 'boolean') throw new Error(`request.stream must be true or false, got ${stream}`);
    // The signal stays on this thread (it cannot be posted to a worker): it aborts through abort().
    if (signal != null && !(signal instanceof AbortSignal)) throw new TypeError('request.signal must be an AbortSignal');
    if (signal?.aborted) throw new DOMException('the signal was aborted before the request started', 'AbortError');
    const invoke = (onToken) => {
        const release = withSignal(engine, signal);
        const running = engine.invoke('chatCompletion', [rest], onToken);
        running.finally(release).catch(() => {});
        return running;
    };
    if (streamOptions != null && !stream) throw new Error('request.stream_options needs request.stream: true');
    const includeUsage = Boolean(streamOptions?.include_usage);
    const id = completionId();
    const created = Math.floor(Date.now() / 1000);
    const model = String(rest.model ?? engine.model);
    const begun = performance.now();
    const seconds = () => (performance.now() - begun) / 1000;
    if (!stream) {
        const reply = await invoke(null);
        return {
            id,
            object: 'chat.completion',
            created,
            model,
            choices: [{
                index: 0,
                message: { role: 'assistant', content: reply.text },
                finish_reason: finishReason(reply),
                logprobs: null,
            }],
            usage: usageOf(reply, seconds()),
        };
    }
    const call = queued(engine, invoke);
    await call.started;
    const chunk = (delta, finish) => ({
        id,
        object: 'chat.completion.chunk',
        created,
        model,
        choices: [{ index: 0, delta, finish_reason: finish, logprobs: null }],
    });
    return (async function* chunks() {
        const pieces = call.pieces();
        try {
            yield chunk({ role: 'assistant', content: '' }, null);
            let next;
            while (!(next = await pieces.next()).done) yield chunk({ content: next.value[0] }, null);
            const reply = next.value;
            yield chunk({}, finishReason(reply));
            if (includeUsage) yield { id, object: 'chat.completion.chunk', created, model, choices: [], usage: usageOf(reply, seconds()) };
        } finally {
            // The consumer stopped early (break, return, throw): stop generating too.
            await pieces.return();
        }
    })();
}

function withSignal(engine, signal) {
    if (!signal) return () => {};
    const onAbort = () => engine.abort();
    signal.addEventListener('abort', onAbort, { once: true });
    return () => signal.removeEventListener('abort', onAbort);
}

/** What both engines offer on top of `invoke(method, args, onToken)`. */
class EngineApi {
    /** The model's name in completions: the URL it was loaded from. */
    model = '';

    constructor() {
        // `engine.chat(message)` is the simple layer; `engine.chat.completions.create(request)` is
        // OpenAI's API, as WebLLM has it.
        const chat = (message, options) => this.#run('chat', String(message), options);
        chat.completions = { create: (request) => createCompletion(this, request) };
        this.chat = chat;
    }

    /** WebLLM's name for `abort()`. */
    interruptGenerate() { this.abort(); }

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

    /**
     * Brings the state to `messages` (OpenAI's, ending with the assistant's reply) without
     * replying: for a conversation whose saved state is lost or refused, so that its next request
     * prefills only the new message. `onProgress({ fed, total })` follows it in tokens; `signal`
     * or `abort()` stops it, leaving the state as it was. Resolves to the tokens prefilled, or null
     * when aborted.
     */
    async prefillMessages(messages, { onProgress, signal } = {}) {
        if (signal?.aborted) throw new DOMException('the signal was aborted before the call started', 'AbortError');
        const release = withSignal(this, signal);
        // Progress comes back the way a reply's pieces do: through the call's streamed callback.
        const progress = onProgress ? (fed, total) => onProgress({ fed, total }) : null;
        try {
            return await this.invoke('prefillMessages', [{ messages }], progress);
        } finally {
            release();
        }
    }

    /** Plain completion of `prompt` (no chat template). */
    generate(prompt, options) { return this.#run('generate', String(prompt), options); }

    /** The last chat message answered again (pass another seed for another reply). */
    regenerate(options) { return this.#run('regenerate', undefined, options); }

    /** `chat` as an async iterator of text pieces. */
    stream(message, options = {}) { return streamOf(this, (o) => this.chat(message, o), options); }

    /** `generate` as an async iterator of text pieces. */
    streamGenerate(prompt, options = {}) { return streamOf(this, (o) => this.generate(prompt, o), options); }
}

/** The model at `source` (a base URL or a `FileList`) on this thread's GPU device. */
function openModel(source, onProgress) {
    return isFileList(source)
        ? RecurrentGemma.loadFiles(source, onProgress ?? null)
        : RecurrentGemma.load(String(source), onProgress ?? null);
}

/** The model on the calling thread. */
export class Engine extends EngineApi {
    #model;
    #source;
    #onDeviceLost;

    constructor(model, source, onDeviceLost) {
        super();
        this.#source = source;
        this.#onDeviceLost = onDeviceLost;
        this.#attach(model);
    }

    #attach(model) {
        this.#model = model;
        if (this.#onDeviceLost) model.onDeviceLost((reason) => this.#onDeviceLost(reason));
    }

    /** Loads the model at `source`: a base URL (manifest.json, tokenizer.json, shards under it),
     * or a picked folder's `FileList`. `onDeviceLost(reason)` is called if the GPU device is lost. */
    static async load(source, { onProgress, onDeviceLost } = {}) {
        await initOnce();
        if (onDeviceLost != null && typeof onDeviceLost !== 'function') throw new TypeError('options.onDeviceLost must be a function');
        const engine = new Engine(await openModel(source, onProgress), source, onDeviceLost);
        engine.model = modelName(source);
        return engine;
    }

    /**
     * Loads the model again on a new GPU device (after `onDeviceLost`): its files come from the
     * cache, so nothing is downloaded again. The conversation state starts empty: `restore()` a
     * state kept as bytes, or `prefillMessages()`. Snapshot objects taken before are gone.
     */
    async reload({ onProgress } = {}) {
        this.#model.dispose();
        this.#attach(await openModel(this.#source, onProgress));
    }

    invoke(method, args, onToken) {
        // The call's body starts in a later microtask: its stop flag is made now, so that an
        // abort() in this same tick stops it.
        this.#model.armAbort();
        return this.#model[method](...args, onToken ?? null);
    }

    /** The model's identity: the sha256 of its manifest, in hex. */
    get modelId() { return this.#model.modelId; }

    /** Stops the reply being generated; its promise resolves with the text so far. */
    abort() { this.#model.abort(); }

    async reset() { this.#model.reset(); }

    /** The conversation state (fixed size). `toBytes()` gives it as bytes to keep; call
     * `free()` on it when done. */
    async snapshot() {
        const inner = this.#model.snapshot();
        return new Snapshot(this, () => this.#model.snapshotBytes(inner), () => inner.free(), inner);
    }

    /** Returns to a snapshot this engine took, or to a state kept as bytes (`toBytes()`). */
    async restore(saved) {
        if (saved instanceof Blob) saved = await saved.arrayBuffer();
        if (isBytes(saved)) return this.#model.restoreBytes(new Uint8Array(saved));
        // Another engine's snapshot is refused by the engine itself, after its model is checked.
        if (!(saved instanceof Snapshot) || !(saved.engine instanceof Engine)) throw new Error(OTHER_ENGINE);
        return this.#model.restore(saved.handle);
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


/** How long `dispose()` waits for the worker to free the GPU memory before it ends the worker anyway. */
const DISPOSE_WAIT_MS = 5000;

/** The same engine in a dedicated Web Worker. */
export class WorkerEngine extends EngineApi {
    #worker;
    #pending = new Map();
    #nextId = 1;
    /** Why no call can be made any more (disposed, or the worker failed); null while usable. */
    #closed = null;

    constructor(worker, onDeviceLost) {
        super();
        this.#worker = worker;
        worker.onmessage = ({ data }) => {
            if ('deviceLost' in data) {
                onDeviceLost?.(data.deviceLost);
                return;
            }
            const call = this.#pending.get(data.id);
            if (!call) return;
            if ('progress' in data) call.onProgress?.(data.progress);
            else if ('token' in data) call.onToken?.(data.token, data.live);
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

    /** Starts a worker (`worker.js` beside this module unless `workerUrl` is given) and loads
     * the model there, from a base URL or a picked folder's `FileList`. */
    static async load(source, { onProgress, onDeviceLost, workerUrl } = {}) {
        if (onDeviceLost != null && typeof onDeviceLost !== 'function') throw new TypeError('options.onDeviceLost must be a function');
        const worker = new Worker(workerUrl ?? new URL('./worker.js', import.meta.url), { type: 'module' });
        const engine = new WorkerEngine(worker, onDeviceLost);
        const where = isFileList(source) ? source : new URL(String(source), globalThis.location?.href).href;
        try {
            engine.modelId = await engine.call('load', [where], { onProgress });
        } catch (e) {
            worker.terminate();
            throw e;
        }
        engine.model = modelName(where);
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

    /** `Engine.reload` in the worker: the model again on a new GPU device, from the cache. */
    reload({ onProgress } = {}) { return this.call('reload', [], { onProgress }); }

    async snapshot() {
        const id = await this.call('snapshot');
        return new Snapshot(
            this,
            () => this.call('snapshotBytes', [id]),
            // Freeing a snapshot of a closed engine has nothing left to free.
            async () => { if (!this.#closed) await this.call('freeSnapshot', [id]); },
            id,
        );
    }

    async restore(saved) {
        if (saved instanceof Blob) saved = await saved.arrayBuffer();
        if (isBytes(saved)) return this.call('restoreBytes', [new Uint8Array(saved)]);
        // Snapshot ids are per worker: another engine's id could name one of this engine's snapshots.
        if (!(saved instanceof Snapshot) || saved.engine !== this) throw new Error(OTHER_ENGINE);
        return this.call('restore', [saved.handle]);
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

// Model management, with WebLLM's names. They read and write this origin's Cache Storage on
// this thread: no GPU and no engine are needed, and a worker's engine sees the same cache.

/** Whether the model at `source` (its base URL) is cached whole: a load then fetches only its manifest. */
export async function hasModelInCache(source) {
    await initOnce();
    return RecurrentGemma.hasModelInCache(String(source));
}

/** Deletes every cached byte of the model at `source`: all its files' versions and partial downloads. */
export async function deleteModelAllInfoInCache(source) {
    await initOnce();
    return RecurrentGemma.deleteModelAllInfoInCache(String(source));
}

/** Every model with files in the cache: `[{ source, bytes, totalBytes, complete }]`. */
export async function listCachedModels() {
    await initOnce();
    return RecurrentGemma.listCachedModels();
}

/**
 * Downloads the model at `source` into the cache and checks every file, without a GPU: a later
 * load reads its weights from the cache. Resumes an interrupted download; resolves to the
 * model's `listCachedModels()` entry.
 */
export async function prefetchModel(source, { onProgress } = {}) {
    await initOnce();
    return RecurrentGemma.prefetchModel(String(source), onProgress);
}
