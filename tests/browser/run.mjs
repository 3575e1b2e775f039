// Runs the browser tests in one process: each case in its own Chromium and servers (harness.mjs),
// up to `--jobs` at a time, each line of output prefixed with its case's name, and a table of
// how long each case took at the end. Exits non-zero if any case failed or could not start.
//
// Usage: node run.mjs [--jobs N] [FILE[:CASE] ...]
//   FILE is a test file without `.mjs` (completions, app, conversations, package, downloads, csp,
//   pack); no FILE runs them all. `:CASE` picks cases whose name contains CASE.
//   --jobs defaults to $RG_BROWSER_JOBS or 2.
import { missingNeeds, TestContext } from './harness.mjs';

// In the order they start: the longest first, so that the two lanes end close together.
const FILES = ['completions', 'app', 'conversations', 'package', 'downloads', 'models', 'csp', 'pack'];

function parseArgs(argv) {
    let jobs = Number(process.env.RG_BROWSER_JOBS ?? 2);
    const picks = [];
    for (let i = 0; i < argv.length; i++) {
        if (argv[i] === '--jobs') jobs = Number(argv[++i]);
        else if (argv[i].startsWith('--jobs=')) jobs = Number(argv[i].slice('--jobs='.length));
        else picks.push(argv[i]);
    }
    if (!Number.isInteger(jobs) || jobs < 1) throw new Error(`--jobs must be a whole number ≥ 1, not ${jobs}`);
    return { jobs, picks: picks.length ? picks : FILES };
}

async function casesOf(picks) {
    const cases = [];
    for (const pick of picks) {
        const [file, filter] = pick.split(':');
        if (!FILES.includes(file)) throw new Error(`no browser test file ${file}.mjs (have: ${FILES.join(', ')})`);
        const chosen = (await import(`./${file}.mjs`)).default.filter((c) => !filter || c.name.includes(filter));
        if (!chosen.length) throw new Error(`${file}.mjs has no case matching ${filter}`);
        cases.push(...chosen);
    }
    return cases;
}

const seconds = (ms) => `${(ms / 1000).toFixed(1)} s`;

async function runCase(testCase) {
    const started = Date.now();
    const missing = missingNeeds(testCase.needs ?? []);
    if (missing.length) return { name: testCase.name, ms: 0, error: missing.join('; ') };
    const t = new TestContext(testCase.name);
    t.log('started');
    let error = null;
    try {
        await testCase.run(t);
        t.log(`all passed (${seconds(Date.now() - started)})`);
    } catch (e) {
        error = e;
        console.error(`[${testCase.name}] FAILED:`, e);
    } finally {
        await t.close();
    }
    return { name: testCase.name, ms: Date.now() - started, error };
}

async function main() {
    const { jobs, picks } = parseArgs(process.argv.slice(2));
    const cases = await casesOf(picks);
    const started = Date.now();
    const results = [];
    let next = 0;
    const worker = async () => {
        while (next < cases.length) results.push(await runCase(cases[next++]));
    };
    await Promise.all(Array.from({ length: Math.min(jobs, cases.length) }, worker));
    console.log(`\nbrowser tests, ${jobs} at a time, ${seconds(Date.now() - started)} in all:`);
    for (const r of results) console.log(`  ${r.error ? 'FAILED' : 'passed'}  ${seconds(r.ms).padStart(8)}  ${r.name}`);
    const failed = results.filter((r) => r.error);
    for (const r of failed) console.log(`\n${r.name}: ${r.error?.message ?? r.error}`);
    process.exitCode = failed.length ? 1 : 0;
}

main().catch((e) => {
    console.error(e);
    process.exitCode = 1;
});
