// The embedding example: load a model, stream a chat reply, stop it, free the GPU memory.
// Plain JavaScript; `../pkg/` is the package that `scripts/build-package.sh` builds.
import { createEngine } from '../pkg/index.js';

const $ = (id) => document.getElementById(id);
let engine = null;

if (new URLSearchParams(location.search).has('worker')) $('use-worker').checked = true;

function showProgress(p) {
    $('progress').max = Math.max(p.bytesTotal, 1);
    $('progress').value = p.bytesDone;
    const mb = (bytes) => (bytes / 1e6).toFixed(1);
    $('progress-text').textContent = `${p.stage}: ${mb(p.bytesDone)} / ${mb(p.bytesTotal)} MB`
        + (p.fromCache ? ' (from cache)' : ` at ${mb(p.bytesPerSecond)} MB/s`);
}

$('load').onclick = async () => {
    $('load').disabled = true;
    try {
        engine = await createEngine($('model-url').value, { worker: $('use-worker').checked, onProgress: showProgress });
        // For experimenting from the console: `await engine.chat('Hi', { onToken: console.log })`.
        window.engine = engine;
        $('output').dataset.state = 'ready';
        $('send').disabled = false;
        $('dispose').disabled = false;
    } catch (e) {
        $('output').textContent = `Could not load the model: ${e.message}`;
        $('output').dataset.state = 'error';
        $('load').disabled = false;
    }
};

$('send').onclick = async () => {
    $('send').disabled = true;
    $('stop').disabled = false;
    $('output').textContent = '';
    $('output').dataset.state = 'generating';
    const options = { maxTokens: Number($('max-tokens').value), temperature: Number($('temperature').value) };
    try {
        // The reply streams in piece by piece; textContent never interprets it as HTML.
        const pieces = engine.stream($('prompt').value, options);
        let next;
        while (!(next = await pieces.next()).done) $('output').textContent += next.value;
        const reply = next.value;
        $('output').dataset.tokenIds = reply.tokenIds.join(',');
        $('output').dataset.stopped = String(reply.stopped);
        const s = await engine.stats();
        $('stats').textContent = `prefill ${s.prefillTokensPerSecond.toFixed(1)} tok/s · decode `
            + `${s.decodeTokensPerSecond.toFixed(1)} tok/s · ${s.conversationTokens} tokens in the conversation · `
            + `state ${s.stateBytes} B · GPU ${s.gpuBytes} B`;
        $('stats').dataset.gpuBytes = String(s.gpuBytes);
        $('output').dataset.state = 'done';
    } catch (e) {
        $('output').textContent += `\n[error: ${e.message}]`;
        $('output').dataset.state = 'error';
    } finally {
        $('send').disabled = false;
        $('stop').disabled = true;
    }
};

$('stop').onclick = () => engine.abort();

$('dispose').onclick = async () => {
    await engine.dispose();
    $('stats').dataset.gpuBytes = String(await engine.gpuBytes().catch(() => 0));
    engine = null;
    window.engine = null;
    $('send').disabled = true;
    $('dispose').disabled = true;
    $('load').disabled = false;
    $('output').dataset.state = 'disposed';
};
