// Compiles every WGSL kernel (shaders/common.wgsl [+ int8_rows.wgsl] + the kernel, as
// src/gpu/kernels.rs does) with Chromium's own WebGPU (Tint, on SwiftShader without a GPU) and
// builds its compute pipeline with an automatic layout. Tint applies WGSL's uniformity rules more
// strictly than naga, so this is what proves the native-tested kernels also run in the browser.
// Prints one line per kernel and "N passed, M failed"; exits non-zero on any failure, and unless
// every kernel of shaders/ compiled — as many as src/gpu/kernels.rs lists in Kernel::ALL.
import { createServer } from 'node:http';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { launchContext } from './chromium.mjs';

const shaderDir = new URL('../../shaders/', import.meta.url).pathname;
const read = (f) => readFileSync(join(shaderDir, f), 'utf8');
const prefixes = ['common.wgsl', 'int8_rows.wgsl'];
const [common, int8Rows] = prefixes.map(read);
// As Kernel::module_source: the int8 matrix kernels (those that call tile_partials) also get
// int8_rows.wgsl.
const kernels = readdirSync(shaderDir)
  .filter((f) => f.endsWith('.wgsl') && !prefixes.includes(f))
  .sort()
  .map((f) => {
    const own = read(f);
    const rows = own.includes('tile_partials(') ? int8Rows : '';
    return { name: f, code: `${common}\n${rows}\n${own}` };
  });

// The kernels the engine builds: a kernel file missing from shaders/, or a listing that finds
// none, must fail the run rather than pass with nothing compiled.
const kernelsRs = readFileSync(new URL('../../src/gpu/kernels.rs', import.meta.url), 'utf8');
const listed = Number(/pub const ALL: \[Kernel; (\d+)\]/.exec(kernelsRs)?.[1] ?? 0);

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
  const names = new Set(results.filter((r) => !r.error).map((r) => r.name));
  const missing = kernels.filter((k) => !names.has(k.name)).map((k) => k.name);
  if (listed === 0 || kernels.length !== listed || passed !== listed || missing.length) {
    console.log(`FAIL expected ${listed} kernels (Kernel::ALL), found ${kernels.length} in shaders/, compiled ${passed}`
      + `${missing.length ? `; not compiled: ${missing.join(', ')}` : ''}`);
    failed += 1;
  }
} finally {
  await context.close();
  server.close();
}
process.exit(failed ? 1 : 0);
