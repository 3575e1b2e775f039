// Measures a model load in headless Chromium through the package: time, wasm heap peak, GPU
// bytes, then (optionally) a few greedy tokens. Not a test: a measurement for BENCHMARKS.md.
//
// Usage: node load-model.mjs MODEL_DIR [TOKENS]   (after scripts/build-package.sh)
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { startServer } from './server.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const [modelDir, tokens = '0'] = process.argv.slice(2);
if (!modelDir || !fs.existsSync(path.join(modelDir, 'manifest.json'))) {
    console.error('usage: node load-model.mjs MODEL_DIR [TOKENS]');
    process.exit(2);
}
const server = await startServer({ '/pkg/': path.join(root, 'pkg'), '/model/': path.resolve(modelDir) });
const context = await chromium.launchPersistentContext(fs.mkdtempSync(path.join(os.tmpdir(), 'rg-load-')), {
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium', headless: true,
    args: ['--no-sandbox', '--disable-quic', '--no-first-run', '--disable-background-networking',
        '--disable-component-update', '--disable-sync', '--enable-unsafe-webgpu'],
});
try {
    const page = context.pages()[0] ?? await context.newPage();
    page.setDefaultTimeout(0);
    await page.goto(`${server.url}/pkg/package.json`);
    const result = await page.evaluate(async (maxTokens) => {
        const { Engine } = await import('/pkg/index.js');
        let last;
        const start = performance.now();
        const engine = await Engine.load('/model/', { onProgress: (p) => { last = p; } });
        const loadSeconds = (performance.now() - start) / 1000;
        let reply = null;
        if (maxTokens > 0) reply = await engine.chat('Hello!', { temperature: 0, maxTokens });
        const stats = await engine.stats();
        await engine.dispose();
        return { loadSeconds, progress: last, stats, reply };
    }, Number(tokens));
    const mib = (b) => (b / 2 ** 20).toFixed(1);
    console.log(JSON.stringify(result, null, 1));
    console.log(`load ${result.loadSeconds.toFixed(1)} s, ${mib(result.progress.bytesTotal)} MiB of weights, `
        + `wasm heap peak ${mib(result.progress.peakWasmBytes)} MiB, GPU ${mib(result.stats.gpuBytes)} MiB, `
        + `state ${mib(result.stats.stateBytes)} MiB, adapter ${result.stats.adapter}`);
} finally {
    await context.close();
    await server.close();
}
