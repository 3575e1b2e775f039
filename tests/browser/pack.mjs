// Tests the package as a user gets it from npm: `npm pack` in pkg/ holds exactly the package's
// files; `npm install` of that tarball into an empty project (from the file, no registry) gives a
// package whose `exports` resolve in Node; and a plain page served from that project, importing
// 'recurrentgemma-web' through an import map (no bundler), loads the demo model and streams the
// greedy reply `rg generate --backend cpu` gives, on the page's thread and with `{ worker: true }`
// (the worker entry found inside node_modules).
//
// Usage: node run.mjs pack   (after scripts/build-package.sh, scripts/demo-model.sh, cargo build --bin rg)
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { cpuReference, MODES, root } from './harness.mjs';

const pkgDir = path.join(root, 'pkg');
const modelDir = path.join(root, 'www/models/demo');
const NAME = 'recurrentgemma-web';
// What the tarball must hold, no more, no less (npm adds package.json and README.md itself).
const FILES = ['README.md', 'index.d.ts', 'index.js', 'package.json', 'rgweb.d.ts', 'rgweb.js', 'rgweb_bg.wasm',
    'rgweb_bg.wasm.d.ts', 'worker.js'];
const PROMPT = 'Write a haiku about recurrent networks.';
const MAX_TOKENS = 8;
const TIMEOUT = 300_000;

// npm with no update check, no audit, no funding notes; its cache in a temp folder of its own.
const npmEnv = { ...process.env, npm_config_update_notifier: 'false', npm_config_audit: 'false', npm_config_fund: 'false' };
function npm(args, cwd) {
    return execFileSync('npm', args, { cwd, env: npmEnv, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** The custom sections' names of a wasm module. */
function customSections(file) {
    const bytes = fs.readFileSync(file);
    const leb = (i) => {
        let value = 0;
        for (let shift = 0; ; shift += 7) {
            const b = bytes[i++];
            value += (b & 0x7f) * 2 ** shift;
            if (b < 0x80) return [value, i];
        }
    };
    const names = [];
    for (let i = 8; i < bytes.length;) {
        const id = bytes[i];
        const [size, body] = leb(i + 1);
        if (id === 0) {
            const [length, start] = leb(body);
            names.push(bytes.subarray(start, start + length).toString('utf8'));
        }
        i = body + size;
    }
    return names;
}

/** `npm pack` of pkg/ into `dir`: the tarball's path, after checking what it holds. */
function pack(t, dir) {
    const [info] = JSON.parse(npm(['pack', '--json', '--pack-destination', dir], pkgDir));
    const files = info.files.map((f) => f.path).sort();
    assert.deepEqual(files, FILES, `the tarball holds exactly the package's files (it holds ${files.join(', ')})`);
    const manifest = JSON.parse(fs.readFileSync(path.join(pkgDir, 'package.json'), 'utf8'));
    const cargoVersion = /^version = "([^"]+)"/m.exec(fs.readFileSync(path.join(root, 'Cargo.toml'), 'utf8'))[1];
    assert.equal(info.name, NAME);
    assert.equal(manifest.version, cargoVersion, 'the package has the crate\'s version');
    assert.ok(!customSections(path.join(pkgDir, 'rgweb_bg.wasm')).includes('name'),
        'rgweb_bg.wasm went through wasm-opt (no name section left)');
    t.log(`npm pack: ${info.filename}, ${info.files.length} files, ${info.size} B packed, ${info.unpackedSize} B unpacked`);
    return path.join(dir, info.filename);
}

/** An empty project with the tarball installed; checks that Node resolves the package's exports. */
function install(t, tarball) {
    const app = t.tempDir('rg-pack-app-');
    fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'pack-test', private: true, type: 'module' }));
    npm(['install', '--offline', '--no-save', tarball], app);
    const installed = path.join(app, 'node_modules', NAME);
    assert.deepEqual(fs.readdirSync(installed).sort(), FILES, 'npm installed exactly the package\'s files');

    // Node's resolver, from inside the project: the exports map, and nothing outside it.
    fs.writeFileSync(path.join(app, 'resolve.mjs'), `
        const resolve = (specifier) => { try { return import.meta.resolve(specifier); } catch (e) { return e.code; } };
        const { default: manifest } = await import('${NAME}/package.json', { with: { type: 'json' } });
        console.log(JSON.stringify({
            main: resolve('${NAME}'), worker: resolve('${NAME}/worker.js'), manifest: resolve('${NAME}/package.json'),
            glue: resolve('${NAME}/rgweb.js'), name: manifest.name, version: manifest.version,
        }));`);
    const resolved = JSON.parse(execFileSync(process.execPath, ['resolve.mjs'], { cwd: app, encoding: 'utf8' }));
    const url = (file) => pathToFileURL(path.join(installed, file)).href;
    assert.equal(resolved.main, url('index.js'), `'${NAME}' resolves to index.js`);
    assert.equal(resolved.worker, url('worker.js'), `'${NAME}/worker.js' resolves to worker.js`);
    assert.equal(resolved.manifest, url('package.json'));
    assert.equal(resolved.glue, 'ERR_PACKAGE_PATH_NOT_EXPORTED', 'files outside exports are not importable by name');
    assert.equal(resolved.name, NAME);
    const manifest = JSON.parse(fs.readFileSync(path.join(installed, 'package.json'), 'utf8'));
    assert.equal(manifest.exports['.'].types, './index.d.ts');
    assert.ok(fs.existsSync(path.join(installed, manifest.types)), 'the types file is in the package');
    t.log(`installed in ${app}; Node resolves ${NAME} -> index.js, ${NAME}/worker.js, ${NAME}/package.json `
        + `(${resolved.version}); ${NAME}/rgweb.js is not exported`);

    // A plain page: the import map names what Node resolved, as a page without a bundler would.
    const imports = { [NAME]: `./${path.relative(app, new URL(resolved.main).pathname)}` };
    fs.writeFileSync(path.join(app, 'index.html'), `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8" /><title>recurrentgemma-web from npm</title><link rel="icon" href="data:," />
<script type="importmap">${JSON.stringify({ imports })}</script>
<script type="module">
    import * as engine from '${NAME}';
    window.recurrentgemma = engine;
    document.body.dataset.ready = 'true';
</script></head><body></body></html>
`);
    return app;
}

async function generate(t, context, server, expected, { worker, name: mode }) {
    const page = await context.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
    await page.goto(`${server.url}/`);
    await page.waitForSelector('body[data-ready="true"]', { state: 'attached', timeout: 60_000 });
    const reply = await page.evaluate(async ({ worker, prompt, maxTokens }) => {
        const engine = await window.recurrentgemma.createEngine('/models/demo/', { worker });
        const pieces = engine.stream(prompt, { temperature: 0, maxTokens });
        let text = '';
        let next;
        while (!(next = await pieces.next()).done) text += next.value;
        const stats = await engine.stats();
        await engine.dispose();
        return { text, ids: next.value.tokenIds, format: stats.weightFormat };
    }, { worker, prompt: PROMPT, maxTokens: MAX_TOKENS });
    assert.deepEqual(reply.ids, expected.ids, `${mode}: the reply's ids equal the CPU reference's`);
    assert.equal(reply.text, expected.text, `${mode}: the streamed text equals rg's`);
    assert.deepEqual(errors, [], `${mode}: no errors on the page`);
    await page.close();
    t.log(`${mode}: the installed package's reply equals the CPU reference (${reply.ids.length} tokens, ${reply.format})`);
}

export default [{
    name: 'pack',
    needs: ['rg', 'demo', 'package'],
    async run(t) {
        const app = install(t, pack(t, t.tempDir('rg-pack-')));
        const expected = await cpuReference(modelDir, PROMPT, MAX_TOKENS);
        assert.equal(expected.ids.length, MAX_TOKENS);
        const server = await t.serve({ '/': app, '/models/': path.join(root, 'www/models') });
        const context = await t.browser();
        for (const mode of MODES) await generate(t, context, server, expected, mode);
        // Everything the page ran came from the installed package; the worker too.
        const served = new Set(server.requests.filter((r) => r.status === 200).map((r) => r.path));
        for (const file of ['index.js', 'rgweb.js', 'rgweb_bg.wasm', 'worker.js']) {
            assert.ok(served.has(`/node_modules/${NAME}/${file}`), `the page loaded ${file} from node_modules`);
        }
        assert.deepEqual(server.requests.filter((r) => r.status !== 200 && r.status !== 206).map((r) => `${r.path} ${r.status}`), [],
            'no request failed');
    },
}];
