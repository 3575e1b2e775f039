// Compiles every WGSL module the engine builds — each kernel with the shared prefixes and, for
// the matrix kernels, once per weight format, exactly as `rg shaders` writes them from
// src/gpu/kernels.rs — with Chromium's own WebGPU (Tint, on SwiftShader without a GPU) and builds
// its compute pipeline with an automatic layout. Tint applies WGSL's uniformity rules more
// strictly than naga, so this is what proves the native-tested kernels also run in the browser.
// Prints one line per module and "N passed, M failed"; exits non-zero on any failure, and unless
// every kernel file of shaders/ is in some module.
//
// Usage: node shaders.mjs   (after cargo build --bin rg; RG=path overrides target/debug/rg)
import { createServer } from 'node:http';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { launchContext, root } from './chromium.mjs';

const moduleDir = mkdtempSync(join(tmpdir(), 'rg-shaders-'));
const rg = process.env.RG ?? join(root, 'target/debug/rg');
const run = spawnSync(rg, ['shaders', moduleDir], { encoding: 'utf8' });
if (run.status !== 0) throw new Error(`rg shaders failed: ${run.stderr}`);
const kernels = readdirSync(moduleDir).sort()
  .map((f) => ({ name: f.replace(/\.wgsl$/, ''), code: readFileSync(join(moduleDir, f), 'utf8') }));

// Every kernel file (not a prefix) must be in some module: a listing that misses one, or finds
// none, must fail the run rather than pass with less compiled.
const prefixes = /^(common|matrix_rows|gemv|format_.*)\.wgsl$/;
const kernelFiles = readdirSync(join(root, 'shaders')).filter((f) => f.endsWith('.wgsl') && !prefixes.test(f))
  .map((f) => f.replace(/\.wgsl$/, ''));

// WebGPU needs a secure context: serve a blank page on loopback.
const server = createServer((_, res) => res.end('<!doctype html><title>shaders</title>'));
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const url = `http://127.0.0.1:${server.address().port}/`;

const context = await launchContext();
let failed = 0;
try {
  const page = await context.newPage();
  await page.goto(url);
  const results = await page.evaluate(async (kernels) => {
    if (!navigator.gpu) return [{ name: 'navigator.gpu', error: 'WebGPU is not available' }];
    const adapter = await navigator.gpu.requestAdapter();
    if (!adapter) return [{ name: 'adapter', error: 'no WebGPU adapter' }];
    const device = await adapter.requestDevice();
    const out = [];
    for (const { name, code } of kernels) {
      device.pushErrorScope('validation');
      const module = device.createShaderModule({ code, label: name });
      const info = await module.getCompilationInfo();
      const messages = info.messages.filter((m) => m.type === 'error')
        .map((m) => `${m.lineNum}:${m.linePos} ${m.message}`);
      let error = messages.join('; ');
      if (!error) {
        try {
          await device.createComputePipelineAsync({ layout: 'auto', compute: { module, entryPoint: 'main' } });
        } catch (e) {
          error = String(e.message || e);
        }
      }
      const scoped = await device.popErrorScope();
      if (!error && scoped) error = scoped.message;
      out.push({ name, error });
    }
    return out;
  }, kernels);
  for (const { name, error } of results) {
    if (error) failed += 1;
    console.log(`${error ? 'FAIL' : 'ok  '} ${name}${error ? `: ${error}` : ''}`);
  }
  const passed = results.length - failed;
  console.log(`${passed} passed, ${failed} failed`);
  const compiled = new Set(results.filter((r) => !r.error).map((r) => r.name.split('.')[0]));
  const missing = kernelFiles.filter((k) => !compiled.has(k));
  if (kernels.length === 0 || passed !== kernels.length || missing.length) {
    console.log(`FAIL ${kernels.length} modules from rg shaders, compiled ${passed}`
      + `${missing.length ? `; kernels of shaders/ not compiled: ${missing.join(', ')}` : ''}`);
    failed += 1;
  }
} finally {
  await context.close();
  server.close();
}
process.exit(failed ? 1 : 0);
