// What every browser test is given: its log, the HTTP servers and Chromium browsers it starts
// (all closed when it ends, passed or failed), scratch folders, the CPU reference's replies
// (computed once per process), and the two ways the package runs a model.
//
// A test file exports its cases: `export default [{ name, needs, run }]`, where `run(t)` gets a
// `TestContext` and `needs` names the built things it reads (see NEEDS). `run.mjs` runs them.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { launchBrowser, launchContext, root } from './chromium.mjs';
import { startServer } from './server.mjs';

export { root };

/** The package's two ways to run a model: on the page's thread and in its worker. */
export const MODES = [{ worker: false, name: 'page thread' }, { worker: true, name: 'worker' }];

/** Built things a test reads, each with the files that show it is there and how to build it. */
export const NEEDS = {
    rg: { files: ['target/debug/rg'], build: 'cargo build --bin rg' },
    demo: { files: ['www/models/demo/manifest.json'], build: 'bash scripts/demo-model.sh target/debug/rg' },
    site: { files: ['dist/index.html', 'dist/models/demo/manifest.json'], build: 'bash scripts/build-site.sh' },
    package: { files: ['pkg/index.js', 'pkg/package.json', 'pkg/rgweb_bg.wasm'], build: 'bash scripts/build-package.sh' },
};

/** Names of the needs whose files are missing, with how to build each. */
export function missingNeeds(needs) {
    return needs.flatMap((need) => {
        const missing = NEEDS[need].files.filter((file) => !fs.existsSync(path.join(root, file)));
        return missing.length ? [`${missing.join(', ')} missing: run ${NEEDS[need].build}`] : [];
    });
}

const references = new Map();

/** The ids and text `rg generate --backend cpu` produces for `prompt` as a first chat turn, greedy
 * (`extra`: more of its flags, e.g. penalties). Each distinct call runs once per process. */
export function cpuReference(modelDir, prompt, maxTokens, extra = []) {
    const args = ['generate', modelDir, '--chat', '--prompt', prompt, '--max-tokens', String(maxTokens),
        '--backend', 'cpu', '--print-ids', ...extra];
    const key = JSON.stringify(args);
    if (!references.has(key)) references.set(key, runReference(args));
    return references.get(key);
}

// Not spawnSync: the tests running beside this one keep driving their browsers meanwhile.
function runReference(args) {
    const rg = process.env.RG ?? path.join(root, 'target/debug/rg');
    return new Promise((resolve, reject) => {
        const child = spawn(rg, args);
        let stdout = '';
        let stderr = '';
        child.stdout.on('data', (d) => { stdout += d; });
        child.stderr.on('data', (d) => { stderr += d; });
        child.on('error', reject);
        child.on('close', (status) => {
            try {
                assert.equal(status, 0, stderr);
                // --print-ids writes `ids: 1,2,3` to stderr as its last line.
                const ids = stderr.trim().split('\n').at(-1).replace(/^ids:/, '').split(',').map(Number);
                resolve({ ids, text: stdout.replace(/\n$/, '') });
            } catch (e) {
                reject(e);
            }
        });
    });
}

/** One running test case: what it starts through here is closed or removed when it ends. */
export class TestContext {
    constructor(name) {
        this.name = name;
        this.screenshots = process.env.SCREENSHOTS ?? path.join(root, 'target/screenshots');
        fs.mkdirSync(this.screenshots, { recursive: true });
        this.cleanups = [];
    }

    log(message) {
        console.log(`[${this.name}] ${message}`);
    }

    /** A static server (server.mjs) over `roots`, closed at the end. */
    async serve(roots) {
        const server = await startServer(roots);
        this.cleanups.push(() => server.close());
        return server;
    }

    /** A Chromium with its own fresh profile (Cache Storage and IndexedDB persist across its
     * reloads), closed at the end; `close()` it earlier where the test needs to. */
    async browser(options = {}) {
        const context = await launchContext(options);
        this.cleanups.push(() => context.close());
        return context;
    }

    /** A Chromium without a persistent profile, closed at the end. */
    async bareBrowser() {
        const browser = await launchBrowser();
        this.cleanups.push(() => browser.close());
        return browser;
    }

    /** A scratch folder, removed at the end. */
    tempDir(prefix = 'rg-test-') {
        const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
        this.cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
        return dir;
    }

    /** Closes everything, the last started first; a close that fails does not hide the test's error. */
    async close() {
        for (const cleanup of this.cleanups.reverse()) {
            try {
                await cleanup();
            } catch (e) {
                console.error(`[${this.name}] cleanup: ${e?.message ?? e}`);
            }
        }
        this.cleanups = [];
    }
}
