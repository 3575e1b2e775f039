// The chat page runs its model in the package's worker (dist/pkg/worker.js), where a test's init
// scripts do not reach. For the tests that must reach into it, this serves a copy of the built
// package whose worker first runs the hooks below, before the engine's code:
// - every GPUDevice it makes is kept in `self.__devices` (a test destroys one: a lost device);
// - every GPU buffer it makes or destroys is counted and the counts are posted on the
//   BroadcastChannel 'rg-test-gpu' ({ created, live }), which the page can listen to;
// - while Cache Storage holds a cache named 'rg-test-fail-shard-puts', every cache put of a shard
//   fails with a QuotaExceededError (the storage filling up mid-load).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export const FAIL_SHARD_PUTS = 'rg-test-fail-shard-puts';

/** Keeps every GPUDevice made in this global scope in `__devices` (a page's init script, or the worker's hooks). */
export function collectDevices() {
    globalThis.__devices = [];
    const requestDevice = GPUAdapter.prototype.requestDevice;
    GPUAdapter.prototype.requestDevice = async function (...args) {
        const device = await requestDevice.apply(this, args);
        globalThis.__devices.push(device);
        return device;
    };
}

const HOOKS = `// Test hooks (tests/browser/worker-hooks.mjs), run before the package's worker.
(() => {
    if (self.GPUAdapter) {
        (${collectDevices})();
        const channel = new BroadcastChannel('rg-test-gpu');
        const buffers = new Map();
        let created = 0;
        const post = () => channel.postMessage({
            created,
            live: [...buffers].filter(([buffer, device]) => !buffer.destroyed && !device.destroyed).length,
        });
        const createBuffer = GPUDevice.prototype.createBuffer;
        GPUDevice.prototype.createBuffer = function (...args) {
            const buffer = createBuffer.apply(this, args);
            buffers.set(buffer, this);
            created += 1;
            post();
            return buffer;
        };
        for (const kind of [GPUBuffer, GPUDevice]) {
            const destroy = kind.prototype.destroy;
            kind.prototype.destroy = function () {
                this.destroyed = true;
                post();
                return destroy.call(this);
            };
        }
    }
    const put = Cache.prototype.put;
    Cache.prototype.put = async function (request, response) {
        if (String(request.url ?? request).includes('.safetensors') && await caches.has(${JSON.stringify(FAIL_SHARD_PUTS)})) {
            throw new DOMException('the quota is full', 'QuotaExceededError');
        }
        return put.call(this, request, response);
    };
})();
`;

/** A copy of `dist/pkg` whose worker runs the hooks first; serve it at '/pkg/'. */
export function hookedPackage(dist) {
    const copy = fs.mkdtempSync(path.join(os.tmpdir(), 'rg-pkg-hooked-'));
    fs.cpSync(path.join(dist, 'pkg'), copy, { recursive: true });
    const worker = path.join(copy, 'worker.js');
    // Import declarations are hoisted: the package's modules are evaluated first (they only
    // define things), then these hooks, then the worker's own code.
    fs.writeFileSync(worker, HOOKS + fs.readFileSync(worker, 'utf8'));
    return copy;
}

/** The engine's worker (the page's only one), waiting for it to start if need be. */
export async function engineWorker(page, timeout = 60_000) {
    for (const started = Date.now(); ; await new Promise((resolve) => setTimeout(resolve, 100))) {
        const workers = page.workers().filter((w) => w.url().includes('/pkg/worker.js'));
        if (workers.length) return workers.at(-1);
        if (Date.now() - started > timeout) throw new Error('the engine worker never started');
    }
}

/** Waits until the page has no engine worker left (a failed load ends its worker, and the GPU device with it;
 * the browser reports the end of a terminated worker some seconds later). */
export async function noEngineWorker(page, timeout = 60_000) {
    for (const started = Date.now(); ; await new Promise((resolve) => setTimeout(resolve, 100))) {
        const workers = page.workers().filter((w) => w.url().includes('/pkg/worker.js'));
        if (!workers.length) return;
        if (Date.now() - started > timeout) throw new Error(`${workers.length} engine worker(s) still running`);
    }
}
