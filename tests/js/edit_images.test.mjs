// The browser client's editImages(): the multipart request it sends and the
// stream it reads, against a real HTTP server on loopback (Node's fetch,
// FormData and Blob are the same WHATWG ones the browser has).
// Run: node --test tests/js/
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import http from 'node:http';
import { test } from 'node:test';

import { collect, failure, withServer as serve, streamer } from './helpers.mjs';

import { PixelgateError, editImages, imageDataUrl } from '../../proxy/static/pixelgate.js';

const LIMIT = { timeout: 10_000 };

/** An SSE event as the gateway writes it. */
function sse(type, fields = {}, name = type) {
  return `event: ${name}\ndata: ${JSON.stringify({ type, ...fields })}\n\n`;
}
const partial = (index, b64 = `P${index}`, kind = 'image_edit') => sse(`${kind}.partial_image`, { b64_json: b64, partial_image_index: index, output_format: 'png' });
const completed = (b64 = 'F', kind = 'image_edit') => sse(`${kind}.completed`, { b64_json: b64, output_format: 'png', usage: { total_tokens: 1 } });

const sha256 = (bytes) => createHash('sha256').update(bytes).digest('hex');

/**
 * Bytes that break careless encoders: NUL, CR/LF, a line that looks like a
 * multipart boundary, bytes that are not UTF-8. `length` is at least 256.
 */
function awkwardBytes(seed, length = 4096) {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i += 1) out[i] = (i * 131 + seed * 17) & 0xff;
  out.set(new TextEncoder().encode('\r\n--boundary\r\n\r\n'), 100);
  out.set([0x00, 0xff, 0xfe, 0x0d, 0x0a, 0x0d], 200);
  return out;
}

/**
 * One multipart part: its name, filename (null for a text field), Content-Type and bytes.
 * @typedef {{name: string, filename: string | null, type: string | null, bytes: Buffer}} Part
 */

/**
 * Split a multipart/form-data body by hand (not with a FormData parser, so the
 * test sees the exact bytes and part order the client put on the wire).
 * @returns {Part[]}
 */
function multipart(contentType, body) {
  const match = /boundary=(?:"([^"]+)"|([^;]+))/i.exec(contentType);
  assert.ok(match, `no boundary in ${contentType}`);
  const delimiter = Buffer.from(`--${match[1] ?? match[2]}`);
  const parts = [];
  let at = body.indexOf(delimiter);
  assert.equal(at, 0, 'the body starts with the first boundary');
  for (;;) {
    at += delimiter.length;
    if (body.subarray(at, at + 2).toString() === '--') break;
    assert.equal(body.subarray(at, at + 2).toString(), '\r\n');
    at += 2;
    const next = body.indexOf(Buffer.concat([Buffer.from('\r\n'), delimiter]), at);
    assert.ok(next !== -1, 'every part ends at a boundary');
    const part = body.subarray(at, next);
    const split = part.indexOf('\r\n\r\n');
    const headers = part.subarray(0, split).toString('utf8');
    const disposition = /content-disposition:\s*form-data;\s*name="([^"]*)"(?:;\s*filename="([^"]*)")?/i.exec(headers);
    assert.ok(disposition, headers);
    const type = /content-type:\s*(\S+)/i.exec(headers);
    parts.push({ name: disposition[1], filename: disposition[2] ?? null, type: type ? type[1] : null, bytes: part.subarray(split + 4) });
    at = next + 2;
  }
  return parts;
}

/** Each request's method, url, headers, raw body and multipart parts. */
function parts(req, raw) {
  const contentType = req.headers['content-type'] ?? '';
  return { method: req.method, url: req.url, headers: req.headers, raw, parts: contentType.startsWith('multipart/') ? multipart(contentType, raw) : null };
}
const withServer = (handler, body) => serve(handler, body, parts);
/** A handler that streams `pieces` (strings), then ends. */
const streams = streamer('req_edit');

/** The text fields of a request, in order. */
const textFields = (parts) => parts.filter((p) => p.filename === null).map((p) => [p.name, p.bytes.toString('utf8')]);

test('one image and a mask: a multipart POST to /images/edits, the files byte for byte', LIMIT, () =>
  withServer(streams(partial(0), partial(1), completed('A')), async (baseUrl, seen) => {
    const photo = new File([awkwardBytes(1)], 'harbour photo.png', { type: 'image/png' });
    const mask = new Blob([awkwardBytes(2, 512)], { type: 'image/png' });
    const events = await collect(editImages({
      baseUrl,
      apiKey: ' sk-edit ',
      images: photo,
      mask,
      body: { prompt: 'add a red boat', model: 'demo-image', n: 1, size: '256x256', partial_images: 2 },
    }));
    assert.deepEqual(
      events.map((e) => [e.type, e.image, e.type === 'partial' ? e.index : null, e.data.b64_json, e.data.type]),
      [
        ['partial', 0, 0, 'P0', 'image_edit.partial_image'],
        ['partial', 0, 1, 'P1', 'image_edit.partial_image'],
        ['completed', 0, null, 'A', 'image_edit.completed'],
      ],
    );
    assert.equal(imageDataUrl(events[2].data), 'data:image/png;base64,A');

    const [request] = seen;
    assert.equal(request.method, 'POST');
    assert.equal(request.url, '/v1/images/edits');
    assert.match(request.headers['content-type'], /^multipart\/form-data; boundary=/);
    assert.equal(request.headers.accept, 'text/event-stream');
    assert.equal(request.headers.authorization, 'Bearer sk-edit');
    // A known length: no chunked upload.
    assert.equal(Number(request.headers['content-length']), request.raw.length);
    assert.deepEqual(textFields(request.parts), [
      ['prompt', 'add a red boat'], ['model', 'demo-image'], ['n', '1'], ['size', '256x256'], ['partial_images', '2'], ['stream', 'true'],
    ]);
    const files = request.parts.filter((p) => p.filename !== null);
    assert.deepEqual(files.map((p) => [p.name, p.filename, p.type]), [
      ['image', 'harbour photo.png', 'image/png'],
      ['mask', 'mask.png', 'image/png'],
    ]);
    assert.equal(sha256(files[0].bytes), sha256(awkwardBytes(1)));
    assert.equal(sha256(files[1].bytes), sha256(awkwardBytes(2, 512)));
  }));

test('several images go as repeated image[] parts, in order; fields as text', LIMIT, () =>
  withServer(streams(partial(0), completed('A'), partial(0), completed('B'), 'data: [DONE]\n\n'), async (baseUrl, seen) => {
    const inputs = [
      new File([awkwardBytes(3)], 'first.png', { type: 'image/png' }),
      new Blob([awkwardBytes(4, 1000)], { type: 'image/jpeg' }),
      new Blob([awkwardBytes(5, 300)], { type: 'image/webp' }),
      new Blob([awkwardBytes(6, 256)]),
    ];
    // Any iterable of Blobs will do (a FileList is one).
    const iterable = { *[Symbol.iterator]() { yield* inputs; } };
    const events = await collect(editImages({
      baseUrl,
      images: iterable,
      mask: null,
      body: { prompt: 'x', n: 2, stream: false, input_fidelity: 'high', background: undefined, quality: null, flag: false },
    }));
    assert.deepEqual(events.map((e) => [e.type, e.image]), [['partial', 0], ['completed', 0], ['partial', 1], ['completed', 1]]);
    const [request] = seen;
    assert.equal(request.headers.authorization, undefined);
    // `stream` is the client's to set; null and undefined are left out; false is "false".
    assert.deepEqual(textFields(request.parts), [['prompt', 'x'], ['n', '2'], ['stream', 'true'], ['input_fidelity', 'high'], ['flag', 'false']]);
    const files = request.parts.filter((p) => p.filename !== null);
    assert.deepEqual(files.map((p) => [p.name, p.filename]), [
      ['image[]', 'first.png'], ['image[]', 'image-2.jpg'], ['image[]', 'image-3.webp'], ['image[]', 'image-4.png'],
    ]);
    assert.deepEqual(files.map((p) => sha256(p.bytes)), [awkwardBytes(3), awkwardBytes(4, 1000), awkwardBytes(5, 300), awkwardBytes(6, 256)].map(sha256));
  }));

test('an array of one image is sent as `image`', LIMIT, () =>
  withServer(streams(completed()), async (baseUrl, seen) => {
    await collect(editImages({ baseUrl, images: [new Blob([awkwardBytes(7)], { type: 'image/png' })], body: { prompt: 'x' } }));
    assert.deepEqual(seen[0].parts.filter((p) => p.filename !== null).map((p) => [p.name, p.filename]), [['image', 'image-1.png']]);
  }));

test('image_generation.* event types are accepted on edits too', LIMIT, () =>
  withServer(streams(': keep-alive\n\n', partial(0, 'G0', 'image_generation'), completed('G', 'image_generation')), async (baseUrl) => {
    const events = await collect(editImages({ baseUrl, images: new Blob([awkwardBytes(8)]), body: { prompt: 'x' } }));
    assert.deepEqual(events.map((e) => [e.type, e.data.b64_json]), [['partial', 'G0'], ['completed', 'G']]);
  }));

test('the object\'s type decides, whatever the event: line says', LIMIT, () =>
  withServer(streams(sse('image_edit.partial_image', { b64_json: 'P', partial_image_index: 2 }, 'message'), sse('image_edit.completed', { b64_json: 'F' }, 'whatever'), sse('image_edit.something_new', {})), async (baseUrl) => {
    const events = await collect(editImages({ baseUrl, images: new Blob([awkwardBytes(9)]), body: { prompt: 'x' } }));
    assert.deepEqual(events.map((e) => [e.type, e.type === 'partial' ? e.index : null]), [['partial', 2], ['completed', null], ['other', null]]);
    assert.equal(events[2].name, 'image_edit.something_new');
  }));

test('an HTTP error throws with the envelope message, param, code and status', LIMIT, () =>
  withServer(
    (req, res) => {
      res.writeHead(400, { 'Content-Type': 'application/json', 'x-request-id': 'req_400' });
      res.end(JSON.stringify({ error: { message: 'The mask is 10x10 but the first image is 64x64; they must be the same size.', type: 'invalid_request_error', param: 'mask', code: 'invalid_value' } }));
    },
    async (baseUrl) => {
      const err = await failure(collect(editImages({ baseUrl, images: new Blob([awkwardBytes(10)]), mask: new Blob([awkwardBytes(11)]), body: { prompt: 'x' } })));
      assert.ok(err instanceof PixelgateError);
      assert.match(err.message, /^The mask is 10x10/);
      assert.equal(err.status, 400);
      assert.equal(err.param, 'mask');
      assert.equal(err.code, 'invalid_value');
      assert.equal(err.requestId, 'req_400');
    },
  ));

test('an error event mid-stream throws its message after the events before it', LIMIT, () =>
  withServer(streams(partial(0), 'event: error\ndata: {"type":"error","error":{"message":"The editor gave up","type":"server_error","param":null,"code":"boom"}}\n\n'), async (baseUrl) => {
    const got = [];
    const err = await failure((async () => {
      for await (const event of editImages({ baseUrl, images: new Blob([awkwardBytes(12)]), body: { prompt: 'x' } })) got.push(event.type);
    })());
    assert.deepEqual(got, ['partial']);
    assert.ok(err instanceof PixelgateError);
    assert.equal(err.message, 'The editor gave up');
    assert.equal(err.code, 'boom');
    assert.equal(err.status, null);
    assert.equal(err.requestId, 'req_edit');
  }));

test('a stream cut mid-event, or with no image, throws', LIMIT, async () => {
  await withServer(streams(partial(0), 'event: image_edit.completed\ndata: {"type":"image_edit.completed","b64_json":"AA'), async (baseUrl) => {
    const err = await failure(collect(editImages({ baseUrl, images: new Blob([awkwardBytes(13)]), body: { prompt: 'x' } })));
    assert.equal(err.code, 'stream_truncated');
  });
  await withServer(streams(partial(0)), async (baseUrl) => {
    const err = await failure(collect(editImages({ baseUrl, images: new Blob([awkwardBytes(14)]), body: { prompt: 'x' } })));
    assert.equal(err.code, 'stream_incomplete');
  });
});

test('a JSON answer to a stream request gives completed events', LIMIT, () =>
  withServer(
    (req, res) => {
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ created: 1, data: [{ b64_json: 'A' }, { b64_json: 'B' }], output_format: 'jpeg' }));
    },
    async (baseUrl) => {
      const events = await collect(editImages({ baseUrl, images: new Blob([awkwardBytes(15)]), body: { prompt: 'x', n: 2 } }));
      assert.deepEqual(events.map((e) => [e.type, e.image, imageDataUrl(e.data)]), [
        ['completed', 0, 'data:image/jpeg;base64,A'],
        ['completed', 1, 'data:image/jpeg;base64,B'],
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

test('aborting mid-stream closes the connection and throws the AbortError', LIMIT, async () => {
  const { handler, gone } = oneEventThenWait();
  await withServer(handler, async (baseUrl) => {
    const abort = new AbortController();
    let aborted = 0;
    const err = await failure((async () => {
      for await (const event of editImages({ baseUrl, images: new Blob([awkwardBytes(16)]), body: { prompt: 'x' }, signal: abort.signal })) {
        assert.equal(event.type, 'partial');
        aborted = performance.now();
        abort.abort();
      }
    })());
    assert.equal(err.name, 'AbortError');
    const at = await gone;
    assert.ok(at - aborted < 2000);
  });
});

test('a reason given to abort() is what is thrown', LIMIT, async () => {
  const { handler, gone } = oneEventThenWait();
  await withServer(handler, async (baseUrl) => {
    const abort = new AbortController();
    const reason = new Error('the user closed the dialog');
    const err = await failure((async () => {
      for await (const event of editImages({ baseUrl, images: new Blob([awkwardBytes(17)]), body: { prompt: 'x' }, signal: abort.signal })) {
        assert.equal(event.type, 'partial');
        abort.abort(reason);
      }
    })());
    assert.equal(err, reason);
    assert.ok((await gone) > 0);
  });
});

test('leaving the loop early closes the connection', LIMIT, async () => {
  const { handler, gone } = oneEventThenWait();
  await withServer(handler, async (baseUrl) => {
    for await (const event of editImages({ baseUrl, images: new Blob([awkwardBytes(18)]), body: { prompt: 'x' } })) {
      assert.equal(event.type, 'partial');
      break;
    }
    assert.ok((await gone) > 0); // resolves only when the connection closed
  });
});

test('an already aborted signal sends nothing', LIMIT, () =>
  withServer(streams(completed()), async (baseUrl, seen) => {
    const abort = new AbortController();
    abort.abort();
    const err = await failure(collect(editImages({ baseUrl, images: new Blob([awkwardBytes(19)]), body: { prompt: 'x' }, signal: abort.signal })));
    assert.equal(err.name, 'AbortError');
    assert.equal(seen.length, 0);
  }));

test('bad arguments throw a TypeError before any request', LIMIT, () =>
  withServer(streams(completed()), async (baseUrl, seen) => {
    const image = new Blob([awkwardBytes(20)]);
    const cases = [
      [{ images: [] }, /at least one File or Blob/],
      [{ images: undefined }, /at least one File or Blob/],
      [{ images: 'photo.png' }, /at least one File or Blob/],
      [{ images: [image, 'photo.png'] }, /images\[1\] is not a File or Blob/],
      [{ images: image, mask: 'mask.png' }, /`mask` is not a Blob/],
      [{ images: image, body: { prompt: 'x', provider: { only: ['demo'] } } }, /`provider` is an object/],
    ];
    for (const [args, message] of cases) {
      const err = await failure(collect(editImages({ baseUrl, body: { prompt: 'x' }, ...args })));
      assert.ok(err instanceof TypeError, String(err));
      assert.match(err.message, message);
    }
    assert.equal(seen.length, 0);
  }));

test('an unreachable server throws network_error', LIMIT, async () => {
  const server = http.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address();
  server.close();
  await once(server, 'close');
  const err = await failure(collect(editImages({ baseUrl: `http://127.0.0.1:${port}/v1`, images: new Blob([awkwardBytes(21)]), body: { prompt: 'x' } })));
  assert.ok(err instanceof PixelgateError);
  assert.equal(err.code, 'network_error');
});
