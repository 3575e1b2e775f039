// How the browser tests start Debian's Chromium with WebGPU on SwiftShader (no GPU needed).
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
