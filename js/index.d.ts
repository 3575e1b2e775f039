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

/** Where a model comes from: its base URL (manifest.json, tokenizer.json and the shards under it),
 * or the files of a folder the user picked (`<input type="file" webkitdirectory>`). */
export type ModelSource = string | URL | FileList;

export interface LoadOptions {
    onProgress?: (progress: LoadProgress) => void;
    /** Called once if the GPU device is lost (a driver reset, sleep, another tab taking the GPU),
     * even between calls: then `reload()`. Not called by `dispose()`. */
    onDeviceLost?: (reason: string) => void;
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
    /** OpenAI's, in [-2, 2]: subtracted once per earlier occurrence of a token in this reply. 0 is off. */
    frequencyPenalty?: number;
    /** OpenAI's, in [-2, 2]: subtracted once from every token already in this reply. 0 is off. */
    presencePenalty?: number;
    /** > 0: a token already in this reply has its logit divided by it (multiplied when negative). 1 is off. */
    repetitionPenalty?: number;
    /** Token id → a bias in [-100, 100] added to its logit (−100 bans it, +100 forces it). */
    logitBias?: Record<number | string, number>;
    /** Up to 16 strings that end the reply where they appear; the text stops before them. */
    stop?: string | string[];
    /** What the reply must be (JSON, JSON against a schema, a grammar's language); free text when
     * left out. The same shapes as `response_format` of a chat completion. */
    responseFormat?: ResponseFormat;
    /** Each piece of text as it is generated, with the reply's figures so far. */
    onToken?: (piece: string, live: LiveFigures) => void;
    /**
     * Aborting it stops the generation, like `engine.abort()`, even mid-prompt: the reply resolves
     * with what was generated (nothing, and the state as before the call, if the prompt was not
     * done). A signal aborted before the call rejects it with a DOMException named 'AbortError'.
     */
    signal?: AbortSignal;
}

/** A reply's figures while it streams (the second argument of `onToken`). */
export interface LiveFigures {
    promptTokens: number;
    generatedTokens: number;
    timeToFirstTokenSeconds: number;
    prefillTokensPerSecond: number;
    decodeTokensPerSecond: number;
}

export interface Reply {
    /** The reply's text, cut before a stop string. */
    text: string;
    tokenIds: number[];
    /** Tokens prefilled for this turn (only the new ones: the state carries the rest). */
    promptTokens: number;
    /** The reply was cut short by abort(). */
    stopped: boolean;
    finishReason: 'stop' | 'length' | 'abort';
    /** Tokens fed again after the reply so that the state holds it as its text tokenizes (the
     * way the next request's messages are read): 0 when it was sampled that way, as usual. */
    refedTokens: number;
}

/** OpenAI's chat message. Gemma has no system turn: a system message (or OpenAI's newer
 * `developer` message; only the first message may be either) is put in front of the first user
 * message, separated by a blank line. */
export interface ChatMessage {
    role: 'system' | 'developer' | 'user' | 'assistant';
    content: string | { type: 'text'; text: string }[];
}

/**
 * OpenAI's chat completion request (the fields WebLLM has too). Each request carries the whole
 * conversation; the engine prefills only what its state does not hold yet (the previous request
 * and its reply, extended; or the longest of its last few turns that the messages extend).
 * Values are checked before anything runs: a bad one rejects with an Error naming the field.
 */
export interface ChatCompletionRequest {
    messages: ChatMessage[];
    stream?: boolean;
    stream_options?: { include_usage?: boolean };
    /** Default 256. */
    max_tokens?: number;
    /** OpenAI's newer name for `max_tokens`; if both are given they must be equal. */
    max_completion_tokens?: number;
    /** Default 1 (OpenAI's); 0 is greedy. */
    temperature?: number;
    top_p?: number;
    /** Default: a random one. The same seed and request give the same reply. */
    seed?: number;
    stop?: string | string[];
    frequency_penalty?: number;
    presence_penalty?: number;
    repetition_penalty?: number;
    logit_bias?: Record<string, number>;
    /** Only 1. */
    n?: number;
    /** Echoed back; the loaded model answers whatever it says. */
    model?: string;
    /** Aborts the request (finish_reason 'abort'), on the page thread and with a worker alike. */
    signal?: AbortSignal;
    /** What the reply must be; free text when left out. JSON or a grammar's language is
     * guaranteed token by token (a reply cut by `max_tokens` may still be unfinished). */
    response_format?: ResponseFormat;
    /** Not supported yet: a request with `tools`, `tool_choice` (other than 'none'),
     * `functions`, `function_call`, `logprobs` (other than false) or `top_logprobs` is refused
     * with an Error naming the field, never answered as if it were honoured. */
    tools?: never;
}

/**
 * - `{ type: 'json_object' }`: any JSON object; with `schema` (JSON text, WebLLM's shape), one
 *   valid against that schema;
 * - `{ type: 'json_schema', json_schema: { name, schema, strict } }`: OpenAI's shape;
 * - `{ type: 'grammar', grammar }`: a grammar in llguidance's Lark syntax
 *   (https://github.com/guidance-ai/llguidance/blob/main/docs/syntax.md).
 *
 * JSON is written with one space after `,` and `:` and no other whitespace, unless the schema
 * says otherwise in llguidance's `x-guidance` key. A schema or grammar that does not compile, or
 * exceeds the engine's limits (256 KiB of text, llguidance's parser budgets), rejects the
 * request with an Error naming `response_format`; the engine stays usable.
 */
export type ResponseFormat =
    | { type: 'text' }
    | { type: 'json_object'; schema?: string }
    | { type: 'json_schema'; json_schema: { name?: string; schema: object; strict?: boolean } }
    | { type: 'grammar'; grammar: string };

export interface CompletionUsage {
    /** The whole conversation's tokens, as OpenAI counts them. */
    prompt_tokens: number;
    completion_tokens: number;
    total_tokens: number;
    extra: {
        prefill_tokens_per_s: number;
        decode_tokens_per_s: number;
        time_to_first_token_s: number;
        e2e_latency_s: number;
        /** Tokens this request actually ran through the model: the state held the rest. */
        prefilled_tokens: number;
        /** The conversation's state: fixed, however long the conversation. */
        state_bytes: number;
        /** With `response_format`: the median and 99th-percentile time to compute one step's
         * allowed tokens (0 without). */
        mask_median_s: number;
        mask_p99_s: number;
    };
}

export type FinishReason = 'stop' | 'length' | 'abort';

export interface ChatCompletion {
    id: string;
    object: 'chat.completion';
    created: number;
    model: string;
    choices: [{ index: 0; message: { role: 'assistant'; content: string }; finish_reason: FinishReason; logprobs: null }];
    usage: CompletionUsage;
}

export interface ChatCompletionChunk {
    id: string;
    object: 'chat.completion.chunk';
    created: number;
    model: string;
    /** Empty in the last chunk of `stream_options.include_usage`, which carries `usage`. */
    choices: { index: 0; delta: { role?: 'assistant'; content?: string }; finish_reason: FinishReason | null; logprobs: null }[];
    usage?: CompletionUsage;
}

export interface ChatCompletions {
    create(request: ChatCompletionRequest & { stream: true }): Promise<AsyncIterable<ChatCompletionChunk>>;
    create(request: ChatCompletionRequest & { stream?: false }): Promise<ChatCompletion>;
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
    /** The manifest's sha256, in hex (as `modelId`). */
    modelId: string;
    /** The GPU device is gone (a driver reset, sleep, another tab): load the model again. */
    deviceLost: boolean;
    /** A GPU error (a lost device among them) makes every call fail: load the model again. */
    broken: boolean;
}

export interface Snapshot {
    /** The state, the token ids it holds, a format version and the model's identity. */
    toBytes(): Promise<Uint8Array>;
    free(): void | Promise<void>;
}

/**
 * One call at a time: a call made while a reply is being generated is rejected ("busy"), and the
 * reply goes on. After `dispose()` (or, for a `WorkerEngine`, after its worker failed) every call
 * still waiting and every later one is rejected with an Error that says so.
 */
export interface RecurrentGemmaEngine {
    /** `chat(message)`: the simple layer; `chat.completions.create(request)`: OpenAI's API. */
    chat: ((message: string, options?: GenerateOptions) => Promise<Reply>) & { completions: ChatCompletions };
    /** The sha256 of the model's `manifest.json` as fetched, in hex: what a saved state is tied
     * to. The file's bytes, not this build's reading of them, so a later build of the engine
     * still admits the states an earlier one saved of the same model. */
    readonly modelId: string;
    /** The URL the model was loaded from (or "local folder"): `model` in completions. */
    readonly model: string;
    generate(prompt: string, options?: GenerateOptions): Promise<Reply>;
    /** Brings the state to `messages` (ending with the assistant's reply) without replying, for a
     * conversation whose saved state is lost or refused; its next request prefills only the new
     * message. Resolves to the tokens prefilled, or null when aborted (the state is then as it was). */
    prefillMessages(
        messages: ChatMessage[],
        options?: { onProgress?: (progress: { fed: number; total: number }) => void; signal?: AbortSignal },
    ): Promise<number | null>;
    regenerate(options?: GenerateOptions): Promise<Reply>;
    /** The reply as an async iterator of text pieces; breaking out of the loop aborts it. */
    stream(message: string, options?: GenerateOptions): AsyncGenerator<string, Reply | undefined>;
    streamGenerate(prompt: string, options?: GenerateOptions): AsyncGenerator<string, Reply | undefined>;
    abort(): void;
    /** WebLLM's name for `abort()`: the reply in progress ends with finish_reason 'abort'. */
    interruptGenerate(): void;
    reset(): Promise<void>;
    /** Loads the model again on a new GPU device after a lost one (`onDeviceLost`), from the
     * cache: nothing is downloaded again. The state starts empty: `restore()` saved bytes, or
     * `prefillMessages()`; snapshot objects taken before are gone. */
    reload(options?: { onProgress?: (progress: LoadProgress) => void }): Promise<void>;
    snapshot(): Promise<Snapshot>;
    /** A snapshot this engine took, or a state's bytes (`toBytes()`, after a reload too): one of
     * another engine, another model, another format version or damaged bytes is rejected, and the
     * state stays. */
    restore(saved: Snapshot | Uint8Array | ArrayBuffer | Blob): Promise<void>;
    stats(): Promise<Stats>;
    gpuBytes(): Promise<number>;
    /** Frees the GPU memory (and ends the worker in worker mode); the reply in progress is rejected. */
    dispose(): Promise<void>;
}

/** The model on the calling thread. */
export declare class Engine {
    static load(source: ModelSource, options?: LoadOptions): Promise<Engine>;
    /** Bytes of model files this origin keeps in Cache Storage. */
    static cachedBytes(): Promise<number>;
    static clearCache(): Promise<void>;
}
export interface Engine extends RecurrentGemmaEngine {}

/** The same engine in a dedicated Web Worker. */
export declare class WorkerEngine {
    static load(source: ModelSource, options?: LoadOptions & { workerUrl?: string | URL }): Promise<WorkerEngine>;
}
export interface WorkerEngine extends RecurrentGemmaEngine {}

export declare function createEngine(
    source: ModelSource,
    options?: LoadOptions & { worker?: boolean; workerUrl?: string | URL },
): Promise<RecurrentGemmaEngine>;

/** A model with files in this origin's Cache Storage. */
export interface CachedModel {
    /** Its base URL, ending in `/`. */
    source: string;
    /** Bytes its cached files take (every version and partial download kept). */
    bytes: number;
    /** Bytes its files take in all, from its cached manifest; null without one. */
    totalBytes: number | null;
    /** Whether every file its manifest names is cached whole. */
    complete: boolean;
}

/** Whether the model at `source` is cached whole: a load then fetches only its manifest. */
export declare function hasModelInCache(source: string): Promise<boolean>;
/** Deletes every cached byte of the model at `source`. */
export declare function deleteModelAllInfoInCache(source: string): Promise<void>;
/** Every model with files in the cache. */
export declare function listCachedModels(): Promise<CachedModel[]>;
/** Downloads and checks the model at `source` into the cache without a GPU or an engine. */
export declare function prefetchModel(
    source: string,
    options?: { onProgress?: (progress: LoadProgress) => void },
): Promise<CachedModel>;
