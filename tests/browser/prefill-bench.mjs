// Measures what a user waits for in headless Chromium through the package: a prompt of about
// PROMPT_TOKENS tokens prefilled, then GEN greedy tokens streamed; prints the prefill rate, the
// time to the first token and the decode rate from the engine's stats (after a warm-up reply).
// Not a test: a measurement for BENCHMARKS.md, run before and after a change on the same machine.
//
// Usage: node prefill-bench.mjs MODEL_DIR [PROMPT_TOKENS=512] [GEN=32]   (after scripts/build-package.sh)
import fs from 'node:fs';
import path from 'node:path';
import { launchContext, root } from './chromium.mjs';
import { startServer } from './server.mjs';

const [modelDir, promptTokens = '512', gen = '32'] = process.argv.slice(2);
if (!modelDir || !fs.existsSync(path.join(modelDir, 'manifest.json'))) {
    console.error('usage: node prefill-bench.mjs MODEL_DIR [PROMPT_TOKENS] [GEN]');
    process.exit(2);
}
const pkg = process.env.PKG ? path.resolve(process.env.PKG) : path.join(root, 'pkg');
const server = await startServer({ '/pkg/': pkg, '/model/': path.resolve(modelDir) });
const context = await launchContext();
try {
    const page = context.pages()[0] ?? await context.newPage();
    page.setDefaultTimeout(0);
    await page.goto(`${server.url}/pkg/package.json`);
    const result = await page.evaluate(async ({ promptTokens, gen }) => {
        const { Engine } = await import('/pkg/index.js');
        const engine = await Engine.load('/model/');
        // Warm-up: pipelines and first-use allocations on both paths.
        await engine.generate('Once upon a time, in a land far away, there lived a', { temperature: 0, maxTokens: 4 });
        await engine.reset();
        // About promptTokens tokens of text: the sentence is 10 tokens long.
        const prompt = 'The quick brown fox jumps over the lazy dog. '.repeat(Math.ceil(promptTokens / 10));
        const start = performance.now();
        let firstPiece = null;
        const reply = await engine.generate(prompt, {
            temperature: 0, maxTokens: gen, onToken: () => { firstPiece ??= performance.now(); },
        });
        const seconds = (performance.now() - start) / 1000;
        const stats = await engine.stats();
        await engine.dispose();
        return { stats, seconds, firstPieceSeconds: firstPiece && (firstPiece - start) / 1000, replyTokens: reply.tokenIds.length };
    }, { promptTokens: Number(promptTokens), gen: Number(gen) });
    const { stats } = result;
    console.log(JSON.stringify({
        promptTokens: stats.promptTokens,
        prefillTokensPerSecond: stats.prefillTokensPerSecond,
        timeToFirstTokenSeconds: stats.timeToFirstTokenSeconds ?? stats.promptTokens / stats.prefillTokensPerSecond,
        firstTextSeconds: result.firstPieceSeconds,
        decodeTokensPerSecond: stats.decodeTokensPerSecond,
        generatedTokens: stats.generatedTokens,
        totalSeconds: result.seconds,
        adapter: stats.adapter,
    }));
} finally {
    await context.close();
    await server.close();
}
