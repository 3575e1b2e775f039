// A static file server for the browser tests: serves folders under URL prefixes on 127.0.0.1 with
// HTTP Range support (as CDNs and Hugging Face do) and records every request. It can be made to
// misbehave the ways real hosts and networks do: drop a connection part-way through a file, end a
// response cleanly but early, stall, answer a Range request from the wrong byte, serve its HTML
// index page for a file (a single-page-app fallback), serve a damaged file or an endless one.
// Like most CDNs it sends no Access-Control-Expose-Headers, so a page on another origin cannot
// read its Content-Range.
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';

const TYPES = {
    '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.mjs': 'text/javascript',
    '.wasm': 'application/wasm', '.css': 'text/css', '.json': 'application/json', '.md': 'text/plain',
    '.ts': 'text/plain',
};

/** roots: { '/': dir, '/pkg/': dir, ... } (longest prefix wins). */
export async function startServer(roots) {
    const requests = [];
    // url path -> misbehaviour; the `...Once` ones apply to the next plain GET (or Range GET) only.
    const cuts = new Map(); // bytes to send before dropping the connection
    const earlyEnds = new Map(); // bytes to send before ending the response cleanly
    const stalls = new Map(); // bytes to send before going silent with the connection open
    const wrongRanges = new Map(); // how many bytes before the asked-for offset to start a 206
    const htmlPaths = new Set(); // answered with an HTML page
    const corruptPaths = new Set(); // served with one byte flipped
    const endless = new Map(); // answered with this many spaces and no Content-Length
    const prefixes = Object.keys(roots).sort((a, b) => b.length - a.length);
    const server = http.createServer((req, res) => {
        const url = new URL(req.url, 'http://127.0.0.1');
        const range = req.headers.range ?? null;
        const entry = { path: url.pathname, range, status: 0, referer: req.headers.referer ?? null, cookie: req.headers.cookie ?? null };
        requests.push(entry);
        const send = (status, headers) => { entry.status = status; res.writeHead(status, headers); };
        const cors = { 'Access-Control-Allow-Origin': '*', 'Cache-Control': 'no-store' };
        if (htmlPaths.has(url.pathname)) {
            send(200, { ...cors, 'Content-Type': 'text/html; charset=utf-8' });
            res.end('<!doctype html><html><body>Welcome! This is the index page.</body></html>');
            return;
        }
        if (endless.has(url.pathname)) {
            send(200, { ...cors, 'Content-Type': 'application/json' });
            const total = endless.get(url.pathname);
            const block = Buffer.alloc(1 << 20, 0x20);
            let sent = 0;
            const pump = () => {
                while (sent < total) {
                    sent += block.length;
                    if (!res.write(block)) { res.once('drain', pump); return; }
                }
                res.end();
            };
            res.on('error', () => {});
            pump();
            return;
        }
        const prefix = prefixes.find((p) => url.pathname.startsWith(p));
        let file = prefix && path.join(roots[prefix], decodeURIComponent(url.pathname.slice(prefix.length)));
        if (file && fs.existsSync(file) && fs.statSync(file).isDirectory()) file = path.join(file, 'index.html');
        if (!file || !fs.existsSync(file)) {
            send(404, cors);
            res.end('not found');
            return;
        }
        const size = fs.statSync(file).size;
        const headers = {
            ...cors,
            'Content-Type': TYPES[path.extname(file)] ?? 'application/octet-stream',
            'Accept-Ranges': 'bytes',
        };
        let start = 0;
        let end = size - 1;
        let status = 200;
        const match = range && /^bytes=(\d+)-(\d*)$/.exec(range);
        if (match) {
            start = Number(match[1]);
            end = match[2] ? Math.min(Number(match[2]), size - 1) : size - 1;
            status = 206;
            if (wrongRanges.has(url.pathname)) {
                start = Math.max(0, start - wrongRanges.get(url.pathname));
                wrongRanges.delete(url.pathname);
            }
            headers['Content-Range'] = `bytes ${start}-${end}/${size}`;
        }
        const body = () => {
            if (!corruptPaths.has(url.pathname)) return fs.createReadStream(file, { start, end });
            const bytes = fs.readFileSync(file);
            bytes[size - 100] ^= 0xff;
            return Readable.from([bytes.subarray(start, end + 1)]);
        };
        const once = (map) => {
            const bytes = map.get(url.pathname);
            if (bytes === undefined || range) return undefined;
            map.delete(url.pathname);
            return bytes;
        };
        const cut = once(cuts);
        const earlyEnd = once(earlyEnds);
        const stall = once(stalls);
        if (earlyEnd === undefined) headers['Content-Length'] = String(end - start + 1);
        send(status, headers);
        res.on('error', () => {});
        if (cut !== undefined || stall !== undefined) {
            const stream = fs.createReadStream(file, { start, end: Math.min(end, start + (cut ?? stall) - 1) });
            stream.pipe(res, { end: false });
            if (cut !== undefined) stream.on('end', () => setTimeout(() => res.socket?.destroy(), 50));
            return;
        }
        if (earlyEnd !== undefined) {
            // No Content-Length (chunked): the browser sees a response that ends normally, short.
            fs.createReadStream(file, { start, end: Math.min(end, start + earlyEnd - 1) }).pipe(res);
            return;
        }
        body().pipe(res);
    });
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
    const url = `http://127.0.0.1:${server.address().port}`;
    const toggle = (set) => (urlPath, on = true) => { if (on) set.add(urlPath); else set.delete(urlPath); };
    return {
        url,
        requests,
        /** The next plain GET of `urlPath` sends `bytes` bytes and then drops the connection. */
        cutOnce(urlPath, bytes) { cuts.set(urlPath, bytes); },
        /** The next plain GET of `urlPath` sends `bytes` bytes and then ends cleanly (a short response). */
        endEarlyOnce(urlPath, bytes) { earlyEnds.set(urlPath, bytes); },
        /** The next plain GET of `urlPath` sends `bytes` bytes and then nothing more, the connection left open. */
        stallOnce(urlPath, bytes) { stalls.set(urlPath, bytes); },
        /** The next Range GET of `urlPath` is answered from `bytes` bytes before the offset asked for. */
        wrongRangeOnce(urlPath, bytes) { wrongRanges.set(urlPath, bytes); },
        /** While on, `urlPath` is answered with an HTML page (200, text/html), as a single-page app's fallback does. */
        serveHtml: toggle(htmlPaths),
        /** While on, `urlPath` is served with one byte flipped (100 bytes before its end). */
        corrupt: toggle(corruptPaths),
        /** `urlPath` is answered with `bytes` spaces and no Content-Length; `null` ends that. */
        endless(urlPath, bytes) { if (bytes === null) endless.delete(urlPath); else endless.set(urlPath, bytes); },
        close: () => new Promise((resolve) => { server.closeAllConnections(); server.close(resolve); }),
    };
}
