// Type declarations for recurrentgemma-web (js/index.js).

/** Progress of a model load, reported as bytes stream in. */
export interface LoadProgress {
    stage: 'manifest' | 'tokenizer' | 'weights' | 'ready';
    bytesDone: number;
    bytesTotal: number;
    /** Of bytesDone, how many came from Cache Storage. */
    bytesFromCache: number;
    /** Every weight byte so far came from the cache. */
    fromCache: boolean;
    shardsDone: number;
    shardsTotal: number;
    seconds: number;
    bytesPerSecond: number;
    etaSeconds: number | null;
    /** Whether verified files are being cached. */
    cache: 'on' | 'unavailable' | 'quota-exceeded';
    /** Things worth telling the user (a damaged cached shard fetched again, a resumed download). */
    notes: string[];
    peakWasmBytes: number;
}

export interface LoadOptions {
    onProgress?: (progress: LoadProgress) => void;
}

/**
 * Options of a generation. Each value is checked before anything changes: one out of range (NaN,
 * a negative or fractional count, top-p outside (0, 1]) rejects the call with an Error naming it.
 */
export interface GenerateOptions {
    /** A finite number >= 0; 0 (the default) is greedy. */
    temperature?: number;
    /** A whole number >= 0; 0 (the default) turns top-k off. */
    topK?: number;
    /** In (0, 1]; 1 (the default) turns top-p off. */
    topP?: number;
    /** A whole number >= 0. Default 0. */
    seed?: number;
    /** Longest reply, in tokens: a whole number >= 1. Default 256. */
    maxTokens?: number;
    /** Each piece of text as it is generated. */
    onToken?: (piece: string) => void;
    /**
     * Aborting it stops the generation, like `engine.abort()`, even mid-prompt: the reply resolves
     * with what was generated (nothing, and the state as before the call, if the prompt was not
     * done). A signal aborted before the call rejects it with a DOMException named 'AbortError'.
     */
    signal?: AbortSignal;
}

export interface Reply {
    text: string;
    tokenIds: number[];
    /** Tokens prefilled for this turn (only the new ones: the state carries the rest). */
    promptTokens: number;
    /** The reply was cut short by abort(). */
    stopped: boolean;
}

export interface Stats {
    prefillTokensPerSecond: number;
    decodeTokensPerSecond: number;
    /** From the start of the last reply until its first token was known (the prefill). */
    timeToFirstTokenSeconds: number;
    promptTokens: number;
    generatedTokens: number;
    conversationTokens: number;
    weightBytes: number;
    /** How the model's matrices are stored: `"int8"` or `"int4"`. */
    weightFormat: string;
    /** The conversation state: fixed, however long the conversation. */
    stateBytes: number;
    /** Every GPU buffer the engine holds. */
    gpuBytes: number;
    wasmBytes: number;
    loadSeconds: number;
    bytesFromCache: number;
    vocabSize: number;
    adapter: string;
}

export interface Snapshot {
    free(): void | Promise<void>;
}

/**
 * One call at a time: a call made while a reply is being generated is rejected ("busy"), and the
 * reply goes on. After `dispose()` (or, for a `WorkerEngine`, after its worker failed) every call
 * still waiting and every later one is rejected with an Error that says so.
 */
export interface RecurrentGemmaEngine {
    chat(message: string, options?: GenerateOptions): Promise<Reply>;
    generate(prompt: string, options?: GenerateOptions): Promise<Reply>;
    regenerate(options?: GenerateOptions): Promise<Reply>;
    /** The reply as an async iterator of text pieces; breaking out of the loop aborts it. */
    stream(message: string, options?: GenerateOptions): AsyncGenerator<string, Reply | undefined>;
    streamGenerate(prompt: string, options?: GenerateOptions): AsyncGenerator<string, Reply | undefined>;
    abort(): void;
    reset(): Promise<void>;
    snapshot(): Promise<Snapshot>;
    /** Only a snapshot this engine took: one of another engine or model is rejected, and the state stays. */
    restore(snapshot: Snapshot): Promise<void>;
    stats(): Promise<Stats>;
    gpuBytes(): Promise<number>;
    /** Frees the GPU memory (and ends the worker in worker mode); the reply in progress is rejected. */
    dispose(): Promise<void>;
}

/** The model on the calling thread. */
export declare class Engine {
    static load(baseUrl: string | URL, options?: LoadOptions): Promise<Engine>;
    /** Bytes of model files this origin keeps in Cache Storage. */
    static cachedBytes(): Promise<number>;
    static clearCache(): Promise<void>;
}
export interface Engine extends RecurrentGemmaEngine {}

/** The same engine in a dedicated Web Worker. */
export declare class WorkerEngine {
    static load(baseUrl: string | URL, options?: LoadOptions & { workerUrl?: string | URL }): Promise<WorkerEngine>;
}
export interface WorkerEngine extends RecurrentGemmaEngine {}

export declare function createEngine(
    baseUrl: string | URL,
    options?: LoadOptions & { worker?: boolean; workerUrl?: string | URL },
): Promise<RecurrentGemmaEngine>;
