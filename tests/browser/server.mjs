// A static file server for the browser tests: serves folders under URL prefixes on 127.0.0.1 with
// HTTP Range support (as CDNs and Hugging Face do), records every request, and can drop a
// connection part-way through a file once, to exercise resumed downloads.
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';

const TYPES = {
    '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.mjs': 'text/javascript',
    '.wasm': 'application/wasm', '.css': 'text/css', '.json': 'application/json', '.md': 'text/plain',
    '.ts': 'text/plain',
};

/** roots: { '/': dir, '/pkg/': dir, ... } (longest prefix wins). */
export async function startServer(roots) {
    const requests = [];
    const cuts = new Map(); // url path -> bytes to send before dropping the connection, once
    const prefixes = Object.keys(roots).sort((a, b) => b.length - a.length);
    const server = http.createServer((req, res) => {
        const url = new URL(req.url, 'http://127.0.0.1');
        const range = req.headers.range ?? null;
        requests.push({ path: url.pathname, range });
        const prefix = prefixes.find((p) => url.pathname.startsWith(p));
        let file = prefix && path.join(roots[prefix], decodeURIComponent(url.pathname.slice(prefix.length)));
        if (file && fs.existsSync(file) && fs.statSync(file).isDirectory()) file = path.join(file, 'index.html');
        if (!file || !fs.existsSync(file)) {
            res.writeHead(404).end('not found');
            return;
        }
        const size = fs.statSync(file).size;
        const headers = {
            'Content-Type': TYPES[path.extname(file)] ?? 'application/octet-stream',
            'Accept-Ranges': 'bytes',
            'Access-Control-Allow-Origin': '*',
            'Cache-Control': 'no-store',
        };
        let start = 0;
        let end = size - 1;
        let status = 200;
        const match = range && /^bytes=(\d+)-(\d*)$/.exec(range);
        if (match) {
            start = Number(match[1]);
            end = match[2] ? Math.min(Number(match[2]), size - 1) : size - 1;
            status = 206;
            headers['Content-Range'] = `bytes ${start}-${end}/${size}`;
        }
        headers['Content-Length'] = String(end - start + 1);
        res.writeHead(status, headers);
        const cut = cuts.get(url.pathname);
        if (cut !== undefined && !range) {
            cuts.delete(url.pathname);
            const stream = fs.createReadStream(file, { start, end: Math.min(end, start + cut - 1) });
            stream.pipe(res, { end: false });
            stream.on('end', () => setTimeout(() => res.socket.destroy(), 50));
            return;
        }
        fs.createReadStream(file, { start, end }).pipe(res);
    });
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
    const url = `http://127.0.0.1:${server.address().port}`;
    return {
        url,
        requests,
        /** The next plain GET of `urlPath` sends `bytes` bytes and then drops the connection. */
        cutOnce(urlPath, bytes) { cuts.set(urlPath, bytes); },
        close: () => new Promise((resolve) => { server.closeAllConnections(); server.close(resolve); }),
    };
}
