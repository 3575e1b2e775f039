// Measures a model load in headless Chromium through the package: time, wasm heap peak, GPU
// bytes; then the same load again (from Cache Storage), and optionally a chat of TOKENS greedy
// tokens. Not a test: a measurement for BENCHMARKS.md.
//
// Usage: node load-model.mjs MODEL_DIR [TOKENS]   (after scripts/build-package.sh)
import fs from 'node:fs';
import path from 'node:path';
import { launchContext, root } from './chromium.mjs';
import { startServer } from './server.mjs';

const [modelDir, tokens = '0'] = process.argv.slice(2);
if (!modelDir || !fs.existsSync(path.join(modelDir, 'manifest.json'))) {
    console.error('usage: node load-model.mjs MODEL_DIR [TOKENS]');
    process.exit(2);
}
const server = await startServer({ '/pkg/': path.join(root, 'pkg'), '/model/': path.resolve(modelDir) });
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
            const start = performance.now();
            engine = await Engine.load('/model/', { onProgress: (p) => { last = p; } });
            loads.push({ seconds: (performance.now() - start) / 1000, progress: last });
            if (attempt === 0) await engine.dispose();
        }
        const before = await engine.stats();
        let reply = null;
        if (maxTokens > 0) reply = await engine.chat('Tell me a long story.', { temperature: 0, maxTokens });
        const after = await engine.stats();
        await engine.dispose();
        return { loads, before, after, replyTokens: reply?.tokenIds.length ?? 0 };
    }, Number(tokens));
    const mib = (b) => (b / 2 ** 20).toFixed(1);
    console.log(JSON.stringify(result, null, 1));
    for (const [i, load] of result.loads.entries()) {
        console.log(`load ${i + 1}: ${load.seconds.toFixed(1)} s, ${mib(load.progress.bytesTotal)} MiB of weights `
            + `(${mib(load.progress.bytesFromCache)} MiB from cache), wasm heap peak ${mib(load.progress.peakWasmBytes)} MiB`);
    }
    const { before, after } = result;
    console.log(`GPU ${mib(before.gpuBytes)} MiB, state ${mib(before.stateBytes)} MiB at ${before.conversationTokens} tokens; `
        + `GPU ${mib(after.gpuBytes)} MiB, state ${mib(after.stateBytes)} MiB at ${after.conversationTokens} tokens; `
        + `prefill ${after.prefillTokensPerSecond.toFixed(1)} tok/s, decode ${after.decodeTokensPerSecond.toFixed(2)} tok/s`);
} finally {
    await context.close();
    await server.close();
}
