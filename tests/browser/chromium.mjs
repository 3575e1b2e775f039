// What the browser tests share: Debian's Chromium with WebGPU on SwiftShader (no GPU needed), and
// the CPU reference's greedy reply to compare the browser's with.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

// `--enable-unsafe-webgpu` is what gives headless Chromium on Linux a WebGPU adapter (SwiftShader).
const ARGS = ['--no-sandbox', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--enable-unsafe-webgpu'];
const executablePath = process.env.CHROMIUM ?? '/usr/bin/chromium';

/** A browser context with its own fresh profile (so Cache Storage persists across reloads within it). */
export function launchContext(options = {}) {
    const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'rg-chromium-'));
    return chromium.launchPersistentContext(profile, { executablePath, headless: true, args: ARGS, ...options });
}

/** A browser without a persistent profile. */
export function launchBrowser() {
    return chromium.launch({ executablePath, headless: true, args: ARGS });
}

/** The ids and text `rg generate --backend cpu` produces for `prompt` as a first chat turn, greedy
 * (`extra`: more of its flags, e.g. penalties). */
export function cpuReference(modelDir, prompt, maxTokens, extra = []) {
    const rg = process.env.RG ?? path.join(root, 'target/debug/rg');
    const run = spawnSync(rg, ['generate', modelDir, '--chat', '--prompt', prompt, '--max-tokens', String(maxTokens),
        '--backend', 'cpu', '--print-ids', ...extra], { encoding: 'utf8' });
    assert.equal(run.status, 0, run.stderr);
    // --print-ids writes `ids: 1,2,3` to stderr as its last line.
    const ids = run.stderr.trim().split('\n').at(-1).replace(/^ids:/, '').split(',').map(Number);
    return { ids, text: run.stdout.replace(/\n$/, '') };
}
