// The browser client's request side, against a real HTTP server on loopback
// (Node's fetch is the same WHATWG fetch the browser has).
// Run: node --test tests/js/
import assert from 'node:assert/strict';
import { once } from 'node:events';
import http from 'node:http';
import { test } from 'node:test';

import { collect, failure, withServer as serve, streamer } from './helpers.mjs';

import { PixelgateError, generateImages, imageDataUrl, listModels, streamImages } from '../../proxy/static/pixelgate.js';

const LIMIT = { timeout: 10_000 };

/** An SSE event as the gateway writes it. */
function sse(type, fields = {}, name = type) {
  return `event: ${name}\ndata: ${JSON.stringify({ type, ...fields })}\n\n`;
}
const partial = (index, b64 = `P${index}`) => sse('image_generation.partial_image', { b64_json: b64, partial_image_index: index, output_format: 'png' });
const completed = (b64 = 'F') => sse('image_generation.completed', { b64_json: b64, output_format: 'png', usage: { total_tokens: 1 } });

/** Each request's method, url, headers and parsed JSON body. */
const json = (req, raw) => ({ method: req.method, url: req.url, headers: req.headers, body: raw.length ? JSON.parse(raw.toString('utf8')) : null });
const withServer = (handler, body) => serve(handler, body, json);
/** A handler that streams `pieces` (strings), then ends. */
const streams = streamer('req_1');

test('yields typed events per image; comments skipped; ends at [DONE]', LIMIT, () =>
  withServer(streams(': keep-alive\n\n', partial(0), partial(1), completed('A'), partial(0), completed('B'), 'data: [DONE]\n\n', completed('late')), async (baseUrl, seen) => {
    const body = { model: 'demo-image', prompt: 'a fox', n: 2, partial_images: 2 };
    const events = await collect(streamImages({ baseUrl, body }));
    assert.deepEqual(
      events.map((e) => [e.type, e.image, e.type === 'partial' ? e.index : null, e.data.b64_json]),
      [
        ['partial', 0, 0, 'P0'],
        ['partial', 0, 1, 'P1'],
        ['completed', 0, null, 'A'],
        ['partial', 1, 0, 'P0'],
        ['completed', 1, null, 'B'],
      ],
    );
    assert.equal(imageDataUrl(events[2].data), 'data:image/png;base64,A');
    const [request] = seen;
    assert.equal(request.method, 'POST');
    assert.equal(request.url, '/v1/images/generations');
    assert.deepEqual(request.body, { ...body, stream: true });
    assert.equal(request.headers['content-type'], 'application/json');
    assert.equal(request.headers.authorization, undefined);
  }));

test('the API key goes in Authorization: Bearer, only when set', LIMIT, () =>
  withServer(streams(completed()), async (baseUrl, seen) => {
    await collect(streamImages({ baseUrl, apiKey: ' sk-test ', body: { prompt: 'x' } }));
    await collect(streamImages({ baseUrl, apiKey: '', body: { prompt: 'x' } }));
    assert.equal(seen[0].headers.authorization, 'Bearer sk-test');
    assert.equal(seen[1].headers.authorization, undefined);
  }));

test('an HTTP error throws with the envelope message, code and status', LIMIT, () =>
  withServer(
    (req, res) => {
      res.writeHead(429, { 'Content-Type': 'application/json', 'x-request-id': 'req_429' });
      res.end(JSON.stringify({ error: { message: 'Rate limit exceeded for images per minute', type: 'requests', param: null, code: 'rate_limit_exceeded' } }));
    },
    async (baseUrl) => {
      const err = await failure(collect(streamImages({ baseUrl, body: { prompt: 'x' } })));
      assert.ok(err instanceof PixelgateError);
      assert.equal(err.message, 'Rate limit exceeded for images per minute');
      assert.equal(err.status, 429);
      assert.equal(err.code, 'rate_limit_exceeded');
      assert.equal(err.type, 'requests');
      assert.equal(err.requestId, 'req_429');
      const again = await failure(generateImages({ baseUrl, body: { prompt: 'x' } }));
      assert.equal(again.message, 'Rate limit exceeded for images per minute');
    },
  ));

test('an HTTP error without an envelope throws with the status', LIMIT, () =>
  withServer(
    (req, res) => {
      res.writeHead(502, 'Bad Gateway', { 'Content-Type': 'text/html' });
      res.end('<h1>502</h1>');
    },
    async (baseUrl) => {
      const err = await failure(collect(streamImages({ baseUrl, body: { prompt: 'x' } })));
      assert.equal(err.message, 'HTTP 502 Bad Gateway');
      assert.equal(err.status, 502);
      assert.equal(err.code, null);
    },
  ));

test('an error event mid-stream throws its message after the events before it', LIMIT, () =>
  withServer(streams(partial(0), 'event: error\ndata: {"type":"error","error":{"message":"Upstream exploded","type":"server_error","param":null,"code":"boom"}}\n\n'), async (baseUrl) => {
    const got = [];
    const err = await failure((async () => {
      for await (const event of streamImages({ baseUrl, body: { prompt: 'x' } })) got.push(event.type);
    })());
    assert.deepEqual(got, ['partial']);
    assert.ok(err instanceof PixelgateError);
    assert.equal(err.message, 'Upstream exploded');
    assert.equal(err.code, 'boom');
    assert.equal(err.status, null);
    assert.equal(err.requestId, 'req_1');
  }));

test('an event with a top-level error (a cut event, closed by the gateway) throws', LIMIT, () =>
  withServer(
    streams(
      'event: image_generation.partial_image\ndata: {"type":"image_generation.partial_image","b64_json":"iVBO","error":{"message":"The upstream connection was lost","type":"server_error","param":null,"code":"upstream_protocol_error"}}\n\n',
      'event: error\ndata: {"type":"error","error":{"message":"second","code":"x"}}\n\n',
    ),
    async (baseUrl) => {
      const err = await failure(collect(streamImages({ baseUrl, body: { prompt: 'x' } })));
      assert.equal(err.message, 'The upstream connection was lost');
      assert.equal(err.code, 'upstream_protocol_error');
    },
  ));

test('malformed JSON, then an error event: the error event explains it', LIMIT, () =>
  withServer(streams('event: image_generation.partial_image\ndata: {"type":"image_gen\n\n', 'event: error\ndata: {"type":"error","error":{"message":"Cut mid-event"}}\n\n'), async (baseUrl) => {
    const err = await failure(collect(streamImages({ baseUrl, body: { prompt: 'x' } })));
    assert.equal(err.message, 'Cut mid-event');
  }));

test('malformed JSON alone throws invalid_event', LIMIT, () =>
  withServer(streams(completed(), 'data: {nope\n\n'), async (baseUrl) => {
    const err = await failure(collect(streamImages({ baseUrl, body: { prompt: 'x' } })));
    assert.equal(err.code, 'invalid_event');
  }));

test('a stream cut mid-event, or with no image, throws', LIMIT, async () => {
  await withServer(streams(partial(0), 'event: image_generation.completed\ndata: {"type":"image_generation.completed","b64_json":"AAA'), async (baseUrl) => {
    const err = await failure(collect(streamImages({ baseUrl, body: { prompt: 'x' } })));
    assert.equal(err.code, 'stream_truncated');
  });
  await withServer(streams(partial(0), ': keep-alive\n\n'), async (baseUrl) => {
    const err = await failure(collect(streamImages({ baseUrl, body: { prompt: 'x' } })));
    assert.equal(err.code, 'stream_incomplete');
  });
});

test('a JSON answer to a stream request gives completed events', LIMIT, () =>
  withServer(
    (req, res) => {
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ created: 1, data: [{ b64_json: 'A' }, { b64_json: 'B' }], output_format: 'webp' }));
    },
    async (baseUrl) => {
      const events = await collect(streamImages({ baseUrl, body: { prompt: 'x', n: 2 } }));
      assert.deepEqual(events.map((e) => [e.type, e.image, imageDataUrl(e.data)]), [
        ['completed', 0, 'data:image/webp;base64,A'],
        ['completed', 1, 'data:image/webp;base64,B'],
      ]);
    },
  ));

/** A server that sends one partial image and waits; `gone` resolves (with the time) when the client closes. */
function oneEventThenWait() {
  let closed;
  const gone = new Promise((resolve) => (closed = resolve));
  const handler = (req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/event-stream' });
    res.write(partial(0));
    res.on('close', () => closed(performance.now()));
  };
  return { handler, gone };
}

test('aborting closes the connection and throws the AbortError', LIMIT, async () => {
  const { handler, gone } = oneEventThenWait();
  await withServer(
    handler,
    async (baseUrl) => {
      const abort = new AbortController();
      let aborted = 0;
      const err = await failure((async () => {
        for await (const event of streamImages({ baseUrl, body: { prompt: 'x' }, signal: abort.signal })) {
          assert.equal(event.type, 'partial');
          aborted = performance.now();
          abort.abort();
        }
      })());
      assert.equal(err.name, 'AbortError');
      const at = await gone;
      assert.ok(at - aborted < 2000);
    },
  );
});

test('leaving the loop early closes the connection', LIMIT, async () => {
  const { handler, gone } = oneEventThenWait();
  await withServer(
    handler,
    async (baseUrl) => {
      for await (const event of streamImages({ baseUrl, body: { prompt: 'x' } })) {
        assert.equal(event.type, 'partial');
        break;
      }
      assert.ok((await gone) > 0); // resolves only when the connection closed
    },
  );
});

test('an unreachable server throws network_error', LIMIT, async () => {
  const server = http.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address();
  server.close();
  await once(server, 'close');
  const err = await failure(collect(streamImages({ baseUrl: `http://127.0.0.1:${port}/v1`, body: { prompt: 'x' } })));
  assert.ok(err instanceof PixelgateError);
  assert.equal(err.code, 'network_error');
});

test('listModels and generateImages', LIMIT, () =>
  withServer(
    (req, res) => {
      res.writeHead(200, { 'Content-Type': 'application/json' });
      if (req.url === '/v1/models') res.end(JSON.stringify({ object: 'list', data: [{ id: 'demo-image' }, { id: 'other' }] }));
      else res.end(JSON.stringify({ created: 1, data: [{ b64_json: 'A' }] }));
    },
    async (baseUrl, seen) => {
      assert.deepEqual(await listModels({ baseUrl: `${baseUrl}/`, apiKey: 'k' }), ['demo-image', 'other']);
      assert.equal(seen[0].method, 'GET');
      assert.equal(seen[0].headers.authorization, 'Bearer k');
      const answer = await generateImages({ baseUrl, body: { prompt: 'x', stream: true } });
      assert.equal(answer.data[0].b64_json, 'A');
      assert.equal(seen[1].body.stream, false);
    },
  ));

test('a 2xx answer that is not JSON throws invalid_response', LIMIT, () =>
  withServer(
    (req, res) => {
      res.writeHead(200, { 'Content-Type': 'text/html', 'x-request-id': 'req_html' });
      res.end('<!doctype html><p>a captive portal</p>');
    },
    async (baseUrl) => {
      for (const call of [() => generateImages({ baseUrl, body: { prompt: 'x' } }), () => collect(streamImages({ baseUrl, body: { prompt: 'x' } }))]) {
        const err = await failure(call());
        assert.ok(err instanceof PixelgateError);
        assert.equal(err.code, 'invalid_response');
        assert.equal(err.requestId, 'req_html');
      }
    },
  ));
