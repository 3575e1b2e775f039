// Measures a model load in headless Chromium through the package: time, wasm heap peak, GPU
// bytes; then the same load again (from Cache Storage), and optionally a chat of TOKENS greedy
// tokens, and the time to read the cached shards alone (what a reload cannot beat). Not a test: a
// measurement for BENCHMARKS.md.
//
// Usage: node load-model.mjs MODEL_DIR [TOKENS]   (after scripts/build-package.sh; RG_PKG=DIR
// measures another build of the package, such as an earlier commit's, in the same way)
import fs from 'node:fs';
import path from 'node:path';
import { launchContext, root } from './chromium.mjs';
import { startServer } from './server.mjs';

const [modelDir, tokens = '0'] = process.argv.slice(2);
if (!modelDir || !fs.existsSync(path.join(modelDir, 'manifest.json'))) {
    console.error('usage: node load-model.mjs MODEL_DIR [TOKENS]');
    process.exit(2);
}
const pkg = path.resolve(process.env.RG_PKG ?? path.join(root, 'pkg'));
const server = await startServer({ '/pkg/': pkg, '/model/': path.resolve(modelDir) });
const context = await launchContext();
try {
    const page = context.pages()[0] ?? await context.newPage();
    page.setDefaultTimeout(0);
    await page.goto(`${server.url}/pkg/package.json`);
    const result = await page.evaluate(async (maxTokens) => {
        const { Engine } = await import('/pkg/index.js');
        const loads = [];
        let engine;
        for (const attempt of [0, 1]) {
            let last;
            // When each stage began, and when the last weight byte was in (seconds since the start).
            const marks = {};
            const start = performance.now();
            const onProgress = (p) => {
                const now = (performance.now() - start) / 1000;
                marks[p.stage] ??= now;
                if (p.bytesDone === p.bytesTotal && p.stage === 'weights') marks.weightsIn ??= now;
                last = p;
            };
            engine = await Engine.load('/model/', { onProgress });
            loads.push({ seconds: (performance.now() - start) / 1000, progress: last, marks });
            if (attempt === 0) await engine.dispose();
        }
        // What a reload cannot beat: reading the same bytes out of Cache Storage and nothing else.
        const readStart = performance.now();
        let readBytes = 0;
        const cache = await caches.open('recurrentgemma-models-v1');
        for (const request of await cache.keys()) {
            if (!request.url.includes('.safetensors')) continue;
            const reader = (await cache.match(request)).body.getReader();
            for (let chunk; !(chunk = await reader.read()).done;) readBytes += chunk.value.length;
        }
        const read = { seconds: (performance.now() - readStart) / 1000, bytes: readBytes };
        // The same bytes read whole, an entry at a time (how a reload reads them).
        const wholeStart = performance.now();
        for (const request of await cache.keys()) {
            if (request.url.includes('.safetensors')) await (await cache.match(request)).arrayBuffer();
        }
        read.wholeSeconds = (performance.now() - wholeStart) / 1000;
        const before = await engine.stats();
        let reply = null;
        if (maxTokens > 0) reply = await engine.chat('Tell me a long story.', { temperature: 0, maxTokens });
        const after = await engine.stats();
        await engine.dispose();
        return { loads, read, before, after, replyTokens: reply?.tokenIds.length ?? 0 };
    }, Number(tokens));
    const mib = (b) => (b / 2 ** 20).toFixed(1);
    console.log(JSON.stringify(result, null, 1));
    for (const [i, load] of result.loads.entries()) {
        console.log(`load ${i + 1}: ${load.seconds.toFixed(1)} s, ${mib(load.progress.bytesTotal)} MiB of weights `
            + `(${mib(load.progress.bytesFromCache)} MiB from cache), wasm heap peak ${mib(load.progress.peakWasmBytes)} MiB; `
            + `stages began at ${Object.entries(load.marks).map(([stage, s]) => `${stage} ${s.toFixed(1)} s`).join(', ')}`);
    }
    const { read, before, after } = result;
    console.log(`${pkg}: reading the cached shards alone: ${read.seconds.toFixed(1)} s for ${mib(read.bytes)} MiB `
        + `(${read.wholeSeconds.toFixed(1)} s read whole); the reload took ${(result.loads[1].seconds / read.seconds).toFixed(2)}× that`);
    console.log(`GPU ${mib(before.gpuBytes)} MiB, state ${mib(before.stateBytes)} MiB at ${before.conversationTokens} tokens; `
        + `GPU ${mib(after.gpuBytes)} MiB, state ${mib(after.stateBytes)} MiB at ${after.conversationTokens} tokens; `
        + `prefill ${after.prefillTokensPerSecond.toFixed(1)} tok/s, decode ${after.decodeTokensPerSecond.toFixed(2)} tok/s`);
} finally {
    await context.close();
    await server.close();
}
