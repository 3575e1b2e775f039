// Tests the package's OpenAI-style API (`engine.chat.completions.create`) in a real Chromium, on
// the page's thread and in a worker, against the CPU reference (`rg generate --backend cpu`):
// non-streaming and streaming replies with usage, prefix reuse across a growing `messages` array,
// stop strings, penalties and logit_bias, structured output (response_format), abort, bad
// requests, and states kept as bytes
// (`snapshot().toBytes()` / `restore(bytes)`), including bytes of another model and damaged ones.
//
// Usage: node run.mjs completions   (after scripts/build-package.sh, scripts/demo-model.sh, cargo build --bin rg)
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { cpuReference, MODES, root } from './harness.mjs';

const modelDir = path.join(root, 'www/models/demo');
const PROMPT = 'Read me Psalms 23:1-3.';
const MAX_TOKENS = 16;
const TIMEOUT = 600_000;
// Short replies (about 20 tokens): SwiftShader decodes a constrained reply a step at a time.
const SCHEMA_PATH = path.join(root, 'tests/data/answer.schema.json');
const SCHEMA = JSON.parse(fs.readFileSync(SCHEMA_PATH, 'utf8'));
const SCHEMA_PROMPT = 'Describe a pet as JSON.';
const SCHEMA_MAX_TOKENS = 60;
const GRAMMAR = 'start: ("yes" | "no") " because " /[a-z]{1,8}/ "."';

/** What is wrong with `value` against the keywords the schemas in tests/data use (the JSON
 * Schema specification's meaning, as tests/structured.rs checks it natively). */
function violations(schema, value, at = '$') {
    const found = [];
    if (schema.enum && !schema.enum.some((e) => JSON.stringify(e) === JSON.stringify(value))) found.push(`${at}: not in the enum`);
    const type = schema.type;
    if (type === 'object') {
        if (value === null || typeof value !== 'object' || Array.isArray(value)) return [`${at}: not an object`];
        for (const key of schema.required ?? []) if (!(key in value)) found.push(`${at}: lacks ${key}`);
        for (const [key, item] of Object.entries(value)) {
            if (schema.properties?.[key]) found.push(...violations(schema.properties[key], item, `${at}.${key}`));
            else if (schema.additionalProperties === false) found.push(`${at}: extra ${key}`);
        }
    } else if (type === 'array') {
        if (!Array.isArray(value)) return [`${at}: not an array`];
        if (value.length < (schema.minItems ?? 0) || value.length > (schema.maxItems ?? Infinity)) found.push(`${at}: ${value.length} items`);
        value.forEach((item, i) => found.push(...violations(schema.items, item, `${at}[${i}]`)));
    } else if (type === 'string') {
        if (typeof value !== 'string') return [`${at}: not a string`];
        const length = [...value].length;
        if (length < (schema.minLength ?? 0) || length > (schema.maxLength ?? Infinity)) found.push(`${at}: ${length} characters`);
    } else if (type === 'integer') {
        if (!Number.isInteger(value)) return [`${at}: not an integer`];
        if (value < (schema.minimum ?? -Infinity) || value > (schema.maximum ?? Infinity)) found.push(`${at}: ${value} out of range`);
    } else if (type === 'boolean' && typeof value !== 'boolean') found.push(`${at}: not a boolean`);
    return found;
}

function assertValidJson(text, what) {
    let value;
    assert.doesNotThrow(() => { value = JSON.parse(text); }, `${what}: not JSON: ${text}`);
    assert.deepEqual(violations(SCHEMA, value), [], `${what}: ${text}`);
}

async function exercise(t, context, server, reference, { worker, name: mode }) {
    const page = await context.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    // Counts the GPU buffers of the page's thread that are alive: made and not destroyed, by
    // their own destroy() or their device's (a disposed engine destroys its device). A dropped
    // buffer keeps its memory until the garbage collector runs, so dropping does not count.
    await page.addInitScript(() => {
        if (!self.GPUDevice) return;
        const live = new Map();
        const createBuffer = GPUDevice.prototype.createBuffer;
        GPUDevice.prototype.createBuffer = function (...args) {
            const buffer = createBuffer.apply(this, args);
            live.set(buffer, this);
            return buffer;
        };
        const destroy = GPUBuffer.prototype.destroy;
        GPUBuffer.prototype.destroy = function () {
            live.delete(this);
            return destroy.call(this);
        };
        const destroyDevice = GPUDevice.prototype.destroy;
        GPUDevice.prototype.destroy = function () {
            for (const [buffer, device] of live) if (device === this) live.delete(buffer);
            return destroyDevice.call(this);
        };
        self.__liveBuffers = () => live.size;
    });
    await page.goto(`${server.url}/embed/`);
    page.setDefaultTimeout(TIMEOUT);
    const out = await page.evaluate(async ({ worker, PROMPT, MAX_TOKENS, SCHEMA, SCHEMA_PROMPT, SCHEMA_MAX_TOKENS, GRAMMAR }) => {
        const { createEngine } = await import('/pkg/index.js');
        const engine = await createEngine('/models/demo/', { worker });
        const failure = (promise) => promise.then(() => 'no error', (e) => String(e?.message ?? e));
        const user = (content) => ({ role: 'user', content });
        const r = {};

        // Not streamed: OpenAI's object.
        const first = await engine.chat.completions.create({
            messages: [user(PROMPT)], temperature: 0, max_tokens: MAX_TOKENS,
        });
        r.first = first;

        // Streamed, with usage: the same text, piece by piece.
        await engine.reset();
        const chunks = [];
        for await (const chunk of await engine.chat.completions.create({
            messages: [user(PROMPT)], temperature: 0, max_tokens: MAX_TOKENS, stream: true,
            stream_options: { include_usage: true },
        })) chunks.push(chunk);
        r.chunks = chunks;

        // A growing conversation: only the new message is prefilled, and the reply is the one a
        // fresh prefill of the whole history gives.
        const history = [user(PROMPT), { role: 'assistant', content: first.choices[0].message.content },
            user('Read me Genesis 1:1.')];
        r.grown = await engine.chat.completions.create({ messages: history, temperature: 0, max_tokens: 16 });
        // "Fresh" is another engine, which has never seen these replies: the same session reset
        // could hide what it remembers of them.
        const newEngine = await createEngine('/models/demo/', { worker });
        r.fresh = await newEngine.chat.completions.create({ messages: history, temperature: 0, max_tokens: 16 });
        // Seeded too: the same seed from the reused state and from a fresh prefill. With top_p the
        // draw is among a few candidates; over all 256,000 (top_p 1) a draw lands so close to a
        // boundary that the decode and the prefill kernels' last-bit differences can flip it.
        const seeded = { temperature: 0.8, top_p: 0.9, seed: 42, max_tokens: 12 };
        const third = [...history, { role: 'assistant', content: r.fresh.choices[0].message.content }, user('And verse 2?')];
        r.seededGrown = await engine.chat.completions.create({ messages: third, ...seeded });
        await newEngine.reset();
        r.seededFresh = await newEngine.chat.completions.create({ messages: third, ...seeded });
        // A system message goes in front of the first user message.
        r.system = await engine.chat.completions.create({
            messages: [{ role: 'system', content: 'Answer briefly.' }, user(PROMPT)], temperature: 0, max_tokens: 4,
        });
        // OpenAI's newer names: a `developer` message is a system message, `max_completion_tokens` is `max_tokens`.
        r.developer = await engine.chat.completions.create({
            messages: [{ role: 'developer', content: 'Answer briefly.' }, user(PROMPT)], temperature: 0,
            max_completion_tokens: 4,
        });
        // Fields that ask for nothing are accepted.
        r.askingNothing = await engine.chat.completions.create({
            messages: [user(PROMPT)], temperature: 0, max_tokens: 4, logprobs: false, tool_choice: 'none',
        });

        // Stop strings: the text ends before the first one; the next turn continues from the visible text.
        const text = first.choices[0].message.content;
        r.stopAt = text.slice(Math.floor(text.length / 2), Math.floor(text.length / 2) + 3);
        r.stopped = await engine.chat.completions.create({
            messages: [user(PROMPT)], temperature: 0, max_tokens: MAX_TOKENS, stop: [r.stopAt, 'never-there'],
        });
        const afterStop = [user(PROMPT), { role: 'assistant', content: r.stopped.choices[0].message.content },
            user('Read me Genesis 1:1.')];
        r.afterStop = await engine.chat.completions.create({ messages: afterStop, temperature: 0, max_tokens: 12 });
        await newEngine.reset();
        r.afterStopFresh = await newEngine.chat.completions.create({ messages: afterStop, temperature: 0, max_tokens: 12 });
        await newEngine.dispose();

        // Penalties and logit_bias.
        const plain = { messages: [user(PROMPT)], temperature: 0, max_tokens: MAX_TOKENS };
        r.penalized = await engine.chat.completions.create({ ...plain, frequency_penalty: 1.5, presence_penalty: 0.5 });
        r.repetition = await engine.chat.completions.create({ ...plain, repetition_penalty: 1.5 });
        await engine.reset();
        const firstId = (await engine.chat(PROMPT, { temperature: 0, maxTokens: 1 })).tokenIds[0];
        await engine.reset();
        r.firstId = firstId;
        r.banned = await engine.chat.completions.create({ ...plain, max_tokens: 4, logit_bias: { [firstId]: -100 } });
        r.bannedIds = (await engine.chat(PROMPT, { temperature: 0, maxTokens: 4, logitBias: { [firstId]: -100 } })).tokenIds;
        await engine.reset();

        // Abort: interruptGenerate() mid-stream ends it with finish_reason 'abort'.
        const long = await engine.chat.completions.create({ ...plain, max_tokens: 2000, stream: true });
        const aborted = [];
        for await (const chunk of long) {
            aborted.push(chunk);
            if (aborted.length === 4) engine.interruptGenerate();
        }
        r.abortedFinish = aborted.at(-1).choices[0].finish_reason;
        r.abortedPieces = aborted.length;
        // Breaking out of the loop stops the reply too, and the engine takes the next request.
        for await (const chunk of await engine.chat.completions.create({ ...plain, max_tokens: 2000, stream: true })) {
            if (chunk.choices[0]?.delta.content) break;
        }
        r.afterBreak = (await engine.chat.completions.create({ ...plain, max_tokens: 2 })).choices[0].finish_reason;
        // A request's own AbortSignal (in a worker too, where a signal cannot be posted).
        const controller = new AbortController();
        const signalled = [];
        for await (const chunk of await engine.chat.completions.create({ ...plain, max_tokens: 2000, stream: true, signal: controller.signal })) {
            signalled.push(chunk);
            if (signalled.length === 3) controller.abort();
        }
        r.signalFinish = signalled.at(-1).choices[0].finish_reason;
        r.signalPieces = signalled.length;
        r.preAborted = await failure(engine.chat.completions.create({ ...plain, signal: AbortSignal.abort() }));
        r.afterSignal = (await engine.chat.completions.create({ ...plain, max_tokens: 2 })).choices[0].finish_reason;
        // An abort in the same tick as the call, before its body has run: the call is stopped
        // before its prefill (on the page thread it used to set the last call's flag, and be lost).
        const sameTick = engine.chat.completions.create({ ...plain, max_tokens: 2000 });
        engine.abort();
        const sameTickReply = await sameTick;
        r.sameTick = [sameTickReply.choices[0].finish_reason, sameTickReply.usage.completion_tokens];
        r.afterSameTick = (await engine.chat.completions.create({ ...plain, max_tokens: 2 })).choices[0].finish_reason;

        // GPU memory on the page's thread: a growing conversation keeps a state per saved turn (the
        // last 3), and a freed snapshot gives its buffers back at once.
        r.liveBuffers = [];
        if (!worker) {
            await engine.reset();
            const conversation = [];
            for (let turn = 1; turn <= 8; turn++) {
                conversation.push(user(`Read me Psalms ${turn}:1.`));
                const reply = await engine.chat.completions.create({ messages: conversation, temperature: 0, max_tokens: 3 });
                conversation.push({ role: 'assistant', content: reply.choices[0].message.content });
                r.liveBuffers.push(self.__liveBuffers());
            }
            const snapshot = await engine.snapshot();
            r.withSnapshot = self.__liveBuffers();
            await snapshot.free();
            r.afterFree = self.__liveBuffers();
        }

        // Bad requests: an Error naming the field, before anything runs.
        const bad = {
            'messages': { messages: [] },
            'messages[0].role': { messages: [{ role: 'tool', content: 'x' }] },
            'messages[0].content': { messages: [{ role: 'user', content: 5 }] },
            'messages[1]': { messages: [user('a'), { role: 'system', content: 'b' }] },
            'last message': { messages: [user('a'), { role: 'assistant', content: 'b' }] },
            'alternate': { messages: [user('a'), user('b')] },
            'temperature': { messages: [user('a')], temperature: -1 },
            'top_p': { messages: [user('a')], top_p: 2 },
            'max_tokens': { messages: [user('a')], max_tokens: 0 },
            'frequency_penalty': { messages: [user('a')], frequency_penalty: 3 },
            'presence_penalty': { messages: [user('a')], presence_penalty: -2.5 },
            'repetition_penalty': { messages: [user('a')], repetition_penalty: 0 },
            'logit_bias': { messages: [user('a')], logit_bias: { x: 1 } },
            'logit_bias[': { messages: [user('a')], logit_bias: { 5: 101 } },
            'stop': { messages: [user('a')], stop: Array(17).fill('x') },
            'n': { messages: [user('a')], n: 2 },
            'stream': { messages: [user('a')], stream: 'yes' },
            'max_completion_tokens': { messages: [user('a')], max_tokens: 4, max_completion_tokens: 5 },
            'messages[1] is a system': { messages: [user('a'), { role: 'developer', content: 'b' }] },
            'response_format.type': { messages: [user('a')], response_format: { type: 'xml' } },
            'response_format.json_schema': { messages: [user('a')], response_format: { type: 'json_schema' } },
            'response_format.schema': { messages: [user('a')], response_format: { type: 'json_object', schema: '{' } },
            // Reads as a format, but does not compile: refused when the call starts.
            'response_format:': {
                messages: [user('a')], response_format: { type: 'grammar', grammar: 'start: missing_rule' },
            },
            // Not built yet: refused, never ignored.
            'tools': { messages: [user('a')], tools: [{ type: 'function', function: { name: 'f' } }] },
            'tool_choice': { messages: [user('a')], tool_choice: 'required' },
            'logprobs': { messages: [user('a')], logprobs: true },
            'top_logprobs': { messages: [user('a')], top_logprobs: 2 },
        };
        r.bad = {};
        for (const [field, request] of Object.entries(bad)) r.bad[field] = await failure(engine.chat.completions.create(request));
        r.badStream = await failure(engine.chat.completions.create({ messages: [], stream: true }));

        // Structured output: JSON against a schema (OpenAI's shape and WebLLM's, streamed and
        // not) and a grammar's language, at temperature 1; greedy, the CPU reference's reply.
        await engine.reset();
        const ask = [user(SCHEMA_PROMPT)];
        const jsonSchema = { type: 'json_schema', json_schema: { name: 'pet', schema: SCHEMA, strict: true } };
        r.schemaGreedy = await engine.chat.completions.create({
            messages: ask, temperature: 0, max_tokens: SCHEMA_MAX_TOKENS, response_format: jsonSchema,
        });
        const webllm = { type: 'json_object', schema: JSON.stringify(SCHEMA) };
        let streamedText = '';
        let streamedFinish = null;
        for await (const chunk of await engine.chat.completions.create({
            messages: ask, temperature: 1, seed: 4, max_tokens: SCHEMA_MAX_TOKENS, response_format: webllm, stream: true,
        })) {
            streamedText += chunk.choices[0]?.delta.content ?? '';
            streamedFinish = chunk.choices[0]?.finish_reason ?? streamedFinish;
        }
        r.schemaStreamed = { text: streamedText, finish: streamedFinish };
        r.grammar = await engine.chat.completions.create({
            messages: [user('Is it?')], temperature: 1, seed: 5, max_tokens: 40,
            response_format: { type: 'grammar', grammar: GRAMMAR },
        });
        // The same request unconstrained, for the decode rates the log compares.
        r.unconstrained = await engine.chat.completions.create({ messages: ask, temperature: 1, seed: 1, max_tokens: 16 });
        r.simple = await engine.chat('Ready?', { responseFormat: { type: 'grammar', grammar: 'start: "ok" | "not yet"' } });

        // A state kept as bytes: restored after other work, the conversation continues exactly.
        await engine.reset();
        const turn1 = [user(PROMPT)];
        const a1 = await engine.chat.completions.create({ messages: turn1, temperature: 0, max_tokens: 10 });
        const snapshot = await engine.snapshot();
        const bytes = await snapshot.toBytes();
        await snapshot.free();
        r.bytesKind = Object.prototype.toString.call(bytes);
        r.bytesLength = bytes.length;
        const turn2 = [...turn1, { role: 'assistant', content: a1.choices[0].message.content }, user('Read me Genesis 1:1.')];
        const uninterrupted = await engine.chat.completions.create({ messages: turn2, temperature: 1, seed: 3, max_tokens: 10 });
        await engine.reset();
        await engine.chat('Something else entirely.', { maxTokens: 3 });
        await engine.restore(bytes);
        const afterRestore = await engine.chat.completions.create({ messages: turn2, temperature: 1, seed: 3, max_tokens: 10 });
        r.restoredEqual = afterRestore.choices[0].message.content === uninterrupted.choices[0].message.content;
        // The bytes as a Blob (as IndexedDB or a file input gives them) restore the same.
        await engine.reset();
        await engine.restore(new Blob([bytes]));
        const fromBlob = await engine.chat.completions.create({ messages: turn2, temperature: 1, seed: 3, max_tokens: 10 });
        r.blobEqual = fromBlob.choices[0].message.content === uninterrupted.choices[0].message.content;
        r.restoredPrefill = [afterRestore.usage.extra.prefilled_tokens, afterRestore.usage.prompt_tokens];
        // Damaged bytes, another model's, another version: refused, and the state stays.
        const tokensBefore = (await engine.stats()).conversationTokens;
        const damaged = bytes.slice();
        damaged[damaged.length - 100] ^= 1;
        r.damaged = await failure(engine.restore(damaged));
        r.truncated = await failure(engine.restore(bytes.slice(0, 1000)));
        const version = bytes.slice();
        version[8] = 9;
        r.version = await failure(engine.restore(version));
        // Another model's identity, with a checksum that matches (as real bytes of another model would).
        const other = bytes.slice(0, bytes.length - 32);
        other[12] ^= 0xff;
        const sum = new Uint8Array(await crypto.subtle.digest('SHA-256', other));
        const otherModel = new Uint8Array(bytes.length);
        otherModel.set(other);
        otherModel.set(sum, other.length);
        r.otherModel = await failure(engine.restore(otherModel));
        r.stateKept = (await engine.stats()).conversationTokens === tokensBefore;
        r.modelId = engine.modelId;

        // A conversation whose state is gone: prefillMessages brings the engine to it without a
        // reply; the next request prefills only its new message and replies as a new engine does.
        const kept = [user(PROMPT), { role: 'assistant', content: a1.choices[0].message.content }];
        const nextTurn = [...kept, user('And verse 2?')];
        const progress = [];
        r.prefilled = await engine.prefillMessages(kept, { onProgress: (p) => progress.push(p) });
        r.prefillProgress = progress.at(-1);
        r.prefillTokens = (await engine.stats()).conversationTokens;
        const continued = await engine.chat.completions.create({ messages: nextTurn, temperature: 0, max_tokens: 8 });
        r.afterPrefill = [continued.usage.extra.prefilled_tokens, continued.usage.prompt_tokens];
        const other2 = await createEngine('/models/demo/', { worker });
        const fresh = await other2.chat.completions.create({ messages: nextTurn, temperature: 0, max_tokens: 8 });
        await other2.dispose();
        r.prefillEqual = continued.choices[0].message.content === fresh.choices[0].message.content;
        r.prefillBad = await failure(engine.prefillMessages([user('a')]));
        await engine.dispose();
        return r;
    }, { worker, PROMPT, MAX_TOKENS, SCHEMA, SCHEMA_PROMPT, SCHEMA_MAX_TOKENS, GRAMMAR });

    // Not streamed: OpenAI's shape, and the CPU reference's greedy text.
    const first = out.first;
    assert.match(first.id, /^chatcmpl-[0-9a-f]{24}$/);
    assert.equal(first.object, 'chat.completion');
    assert.ok(Number.isInteger(first.created) && first.model.endsWith('/models/demo/'));
    assert.equal(first.choices.length, 1);
    assert.equal(first.choices[0].message.role, 'assistant');
    assert.equal(first.choices[0].message.content, reference.text, `${mode}: the reply is the CPU reference's`);
    assert.equal(first.choices[0].finish_reason, reference.ids.length === MAX_TOKENS ? 'length' : 'stop');
    const usage = first.usage;
    assert.equal(usage.completion_tokens, reference.ids.length);
    assert.equal(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens);
    assert.equal(usage.extra.prefilled_tokens, usage.prompt_tokens, 'a first request prefills all of it');
    for (const key of ['prefill_tokens_per_s', 'decode_tokens_per_s', 'time_to_first_token_s', 'e2e_latency_s', 'state_bytes']) {
        assert.ok(usage.extra[key] > 0, `${mode}: usage.extra.${key} = ${usage.extra[key]}`);
    }
    t.log(`${mode}: non-streamed reply equals the CPU reference; usage ${JSON.stringify(usage)}`);

    // Streamed: a role chunk, content chunks, a finish chunk, then usage with no choices.
    const chunks = out.chunks;
    assert.deepEqual(chunks[0].choices[0].delta, { role: 'assistant', content: '' });
    assert.ok(chunks.every((c) => c.id === chunks[0].id && c.object === 'chat.completion.chunk'));
    const text = chunks.map((c) => c.choices[0]?.delta.content ?? '').join('');
    assert.equal(text, reference.text, `${mode}: the streamed text equals the CPU reference's`);
    assert.equal(chunks.at(-2).choices[0].finish_reason, first.choices[0].finish_reason);
    assert.deepEqual(chunks.at(-1).choices, []);
    assert.equal(chunks.at(-1).usage.completion_tokens, usage.completion_tokens);
    assert.ok(chunks.slice(1, -2).every((c) => c.choices[0].finish_reason === null && c.choices[0].delta.content));
    t.log(`${mode}: streamed ${chunks.length} chunks`);

    // Prefix reuse.
    assert.equal(out.grown.choices[0].message.content, out.fresh.choices[0].message.content, `${mode}: reuse = fresh prefill`);
    assert.equal(out.grown.usage.prompt_tokens, out.fresh.usage.prompt_tokens);
    const held = usage.prompt_tokens + usage.completion_tokens;
    assert.equal(out.grown.usage.extra.prefilled_tokens, out.grown.usage.prompt_tokens - held,
        `${mode}: only the new message was prefilled`);
    assert.equal(out.fresh.usage.extra.prefilled_tokens, out.fresh.usage.prompt_tokens);
    assert.equal(out.seededGrown.choices[0].message.content, out.seededFresh.choices[0].message.content,
        `${mode}: seeded, reuse = fresh prefill`);
    assert.ok(out.seededGrown.usage.extra.prefilled_tokens < out.seededGrown.usage.prompt_tokens / 2);
    assert.ok(out.system.usage.prompt_tokens > usage.prompt_tokens + 2, `${mode}: the system message is in the prompt`);
    t.log(`${mode}: prefix reuse prefilled ${out.grown.usage.extra.prefilled_tokens} of ${out.grown.usage.prompt_tokens} tokens`);

    // Stop strings.
    const cut = reference.text.slice(0, reference.text.indexOf(out.stopAt));
    assert.equal(out.stopped.choices[0].message.content, cut, `${mode}: cut before ${JSON.stringify(out.stopAt)}`);
    assert.equal(out.stopped.choices[0].finish_reason, 'stop');
    assert.equal(out.afterStop.choices[0].message.content, out.afterStopFresh.choices[0].message.content,
        `${mode}: after a stop string the next turn equals a fresh prefill of the visible conversation`);
    t.log(`${mode}: stop ${JSON.stringify(out.stopAt)} cut the reply to ${JSON.stringify(cut)}`);

    // Penalties and logit_bias: as the CPU reference with the same settings.
    assert.equal(out.penalized.choices[0].message.content, reference.penalized.text, `${mode}: frequency/presence penalties`);
    assert.equal(out.repetition.choices[0].message.content, reference.repetition.text, `${mode}: repetition penalty`);
    assert.notEqual(reference.penalized.text, reference.text, 'the penalties change this reply');
    assert.equal(out.firstId, reference.ids[0]);
    assert.notEqual(out.bannedIds[0], out.firstId, `${mode}: a banned token is never drawn`);
    assert.deepEqual(out.bannedIds, reference.banned.ids, `${mode}: logitBias as the CPU reference`);
    t.log(`${mode}: penalties and logit_bias equal the CPU reference`);

    assert.equal(out.abortedFinish, 'abort', `${mode}: interruptGenerate() → finish_reason 'abort'`);
    assert.ok(out.abortedPieces < 100);
    assert.ok(['stop', 'length'].includes(out.afterBreak), `${mode}: usable after breaking out of a stream`);
    if (!worker) {
        const [, , , full, ...later] = out.liveBuffers;
        assert.ok(later.every((n) => n === full), `live GPU buffers after turns 1-8: ${out.liveBuffers}`);
        assert.ok(out.withSnapshot > out.afterFree && out.afterFree === full, `a freed snapshot: ${out.withSnapshot} → ${out.afterFree}`);
        t.log(`${mode}: live GPU buffers after turns 1-8: ${out.liveBuffers.join(', ')}; a snapshot freed ${out.withSnapshot - out.afterFree}`);
    }
    assert.equal(out.signalFinish, 'abort', `${mode}: request.signal aborts the reply`);
    assert.ok(out.signalPieces < 2000, `${mode}: the aborted reply ended early`);
    assert.match(out.preAborted, /aborted before the request started/, `${mode}: an aborted signal starts nothing`);
    assert.ok(['stop', 'length'].includes(out.afterSignal), `${mode}: usable after a signalled abort`);
    assert.equal(out.sameTick[0], 'abort', `${mode}: an abort in the same tick as the call stops it`);
    // On the page thread before its prefill; a worker has started it by the time the abort arrives.
    if (!worker) assert.equal(out.sameTick[1], 0, `${mode}: before it drew a token`);
    assert.ok(['stop', 'length'].includes(out.afterSameTick), `${mode}: and the next call is not aborted`);

    assert.deepEqual(out.developer.choices[0].message, out.system.choices[0].message, `${mode}: developer = system`);
    assert.equal(out.developer.usage.completion_tokens, out.system.usage.completion_tokens);
    assert.ok(out.askingNothing.usage.completion_tokens >= 1, `${mode}: logprobs false, tool_choice none`);
    for (const [field, message] of Object.entries(out.bad)) {
        assert.ok(message !== 'no error' && message.includes(field), `${mode}: a bad ${field} → ${message}`);
    }
    assert.match(out.badStream, /messages/);
    t.log(`${mode}: ${Object.keys(out.bad).length} bad requests refused, each naming its field`);

    // Structured output.
    assert.equal(out.schemaGreedy.choices[0].message.content, reference.schema.text, `${mode}: greedy under a schema = the CPU reference`);
    const constrained = [out.schemaGreedy];
    for (const [i, reply] of constrained.entries()) {
        assertValidJson(reply.choices[0].message.content, `${mode}: reply ${i} under the schema`);
        assert.equal(reply.choices[0].finish_reason, 'stop', `${mode}: reply ${i} ended by itself`);
        assert.ok(reply.usage.extra.mask_median_s > 0 && reply.usage.extra.mask_p99_s >= reply.usage.extra.mask_median_s);
    }
    assertValidJson(out.schemaStreamed.text, `${mode}: the streamed reply`);
    assert.equal(out.schemaStreamed.finish, 'stop');
    const yesNo = out.grammar.choices[0].message.content;
    assert.match(yesNo, /^(yes|no) because [a-z]{1,8}\.$/, `${mode}: in the grammar's language`);
    assert.equal(out.unconstrained.usage.extra.mask_median_s, 0);
    assert.ok(['ok', 'not yet'].includes(out.simple.text) && out.simple.finishReason === 'stop', `${mode}: chat() with responseFormat`);
    const rate = (replies) => replies.reduce((sum, r) => sum + r.usage.extra.decode_tokens_per_s, 0) / replies.length;
    const ms = (s) => (s * 1e3).toFixed(3);
    const medians = constrained.map((r) => r.usage.extra.mask_median_s).sort((a, b) => a - b);
    const p99s = constrained.map((r) => r.usage.extra.mask_p99_s).sort((a, b) => a - b);
    t.log(`${mode}: replies under the schema valid (greedy = CPU reference, streamed), the grammar's ${JSON.stringify(yesNo)}; `
        + `decode ${rate(constrained).toFixed(1)} tok/s constrained (${constrained[0].usage.completion_tokens} tokens) vs ${rate([out.unconstrained]).toFixed(1)} free; `
        + `mask median ${ms(medians[Math.floor(medians.length / 2)])} ms, p99 up to ${ms(p99s.at(-1))} ms`);

    assert.equal(out.bytesKind, '[object Uint8Array]');
    assert.ok(out.restoredEqual, `${mode}: a state restored from bytes continues exactly`);
    assert.ok(out.blobEqual, `${mode}: the same bytes as a Blob restore the same`);
    assert.ok(out.restoredPrefill[0] < out.restoredPrefill[1] / 2, `${mode}: after restore(bytes) only the new turn is prefilled`);
    assert.ok(out.prefilled > 0 && out.prefillTokens === out.prefilled, `${mode}: prefillMessages fed ${out.prefilled} tokens`);
    assert.deepEqual(out.prefillProgress, { fed: out.prefilled, total: out.prefilled }, `${mode}: its progress ends at the whole history`);
    assert.equal(out.afterPrefill[0], out.afterPrefill[1] - out.prefilled, `${mode}: then only the new message is prefilled`);
    assert.ok(out.prefillEqual, `${mode}: and the reply is a new engine's`);
    assert.match(out.prefillBad, /must be the assistant's reply/);
    assert.match(out.damaged, /damaged/);
    assert.match(out.truncated, /damaged|short|past its end/);
    assert.match(out.version, /format version 9/);
    assert.match(out.otherModel, /another model/);
    assert.ok(out.stateKept, `${mode}: refused bytes left the state as it was`);
    // The identity is the manifest's bytes as fetched, not this build's reading of them: a build
    // that learns a new manifest field still admits the states an older build saved.
    const manifestSha256 = crypto.createHash('sha256').update(fs.readFileSync(path.join(modelDir, 'manifest.json'))).digest('hex');
    assert.equal(out.modelId, manifestSha256, `${mode}: modelId is the sha256 of manifest.json as served`);
    t.log(`${mode}: a ${out.bytesLength}-byte state restored exactly (prefilled ${out.restoredPrefill.join(' of ')}); damaged, `
        + 'cut, other-version and other-model bytes refused');
    assert.deepEqual(errors, [], `${mode}: no uncaught errors`);
    await page.close();
}

export default MODES.map((mode) => ({
    name: `completions (${mode.name})`,
    needs: ['rg', 'demo', 'package'],
    async run(t) {
        const reference = await cpuReference(modelDir, PROMPT, MAX_TOKENS);
        reference.penalized = await cpuReference(modelDir, PROMPT, MAX_TOKENS, ['--frequency-penalty', '1.5', '--presence-penalty', '0.5']);
        reference.repetition = await cpuReference(modelDir, PROMPT, MAX_TOKENS, ['--repetition-penalty', '1.5']);
        reference.banned = await cpuReference(modelDir, PROMPT, 4, ['--logit-bias', `${reference.ids[0]}=-100`]);
        reference.schema = await cpuReference(modelDir, SCHEMA_PROMPT, SCHEMA_MAX_TOKENS, ['--json-schema', SCHEMA_PATH]);
        const server = await t.serve({ '/pkg/': path.join(root, 'pkg'), '/embed/': path.join(root, 'www/embed'), '/models/': path.join(root, 'www/models') });
        await exercise(t, await t.browser(), server, reference, mode);
    },
}));
