// What the browser client's Node tests share: a loopback server that records
// each request, a streaming handler, and two small await helpers.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import http from 'node:http';

/**
 * Serve `handler` on 127.0.0.1 for the duration of `body(baseUrl, seen)`.
 * `seen` records each request as `record(req, raw)` describes it (raw: the body's bytes).
 */
export async function withServer(handler, body, record) {
  const seen = [];
  const server = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const piece of req) chunks.push(piece);
    seen.push(record(req, Buffer.concat(chunks)));
    await handler(req, res);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  try {
    return await body(`http://127.0.0.1:${server.address().port}/v1`, seen);
  } finally {
    server.closeAllConnections();
    server.close();
  }
}

/** A handler that streams `pieces` (strings), then ends, with `x-request-id: requestId`. */
export function streamer(requestId) {
  return (...pieces) => (req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/event-stream', 'x-request-id': requestId });
    for (const piece of pieces) res.write(piece);
    res.end();
  };
}

export async function collect(iterable) {
  const out = [];
  for await (const item of iterable) out.push(item);
  return out;
}

/** The error `promise` rejects with. */
export async function failure(promise) {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  assert.fail('expected a rejection');
}
