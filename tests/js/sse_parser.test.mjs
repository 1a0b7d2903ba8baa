// The browser client's SSE parser, fed the same streams split every way.
// Run: node --test tests/js/
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { SSEParser } from '../../proxy/static/pixelgate.js';

const encoder = new TextEncoder();
const LIMIT = { timeout: 30_000 };

/** Events as written, one line per array item; `eol` joins the lines. */
const LINES = [
  '\uFEFF: keep-alive', // a BOM, then a comment
  '',
  'event: image_generation.partial_image',
  'data: {"type":"image_generation.partial_image","b64_json":"iVBORw0KGgo=","partial_image_index":0}',
  'id: 7',
  'retry: 1000',
  '',
  ': keep-alive',
  '',
  'data: first line',
  'data:second line, no space',
  'data:  two spaces keep one',
  'data',
  'unknown: field',
  '',
  'event: only-an-event-type', // no data: never dispatched, and its type does not leak
  '',
  'data: caf\u00e9 \u20ac \ud83d\uddbc \u6f22\u5b57', // 2-, 3- and 4-byte UTF-8
  'data:',
  '',
  'event: error',
  'data: {"type":"error","error":{"message":"Rate limit: 5 \u2192 0","code":"x"}}',
  '',
  'data: [DONE]',
  '',
];

const EXPECTED = [
  {
    event: 'image_generation.partial_image',
    data: '{"type":"image_generation.partial_image","b64_json":"iVBORw0KGgo=","partial_image_index":0}',
  },
  { event: 'message', data: 'first line\nsecond line, no space\n two spaces keep one\n' },
  { event: 'message', data: 'caf\u00e9 \u20ac \ud83d\uddbc \u6f22\u5b57\n' },
  { event: 'error', data: '{"type":"error","error":{"message":"Rate limit: 5 \u2192 0","code":"x"}}' },
  { event: 'message', data: '[DONE]' },
];

const FORMS = { LF: '\n', CRLF: '\r\n', CR: '\r' };

/** Each line followed by `eol`. @param {string[]} lines @param {string} eol */
function stream(lines, eol) {
  return lines.map((line) => line + eol).join('');
}

/** Events with long data replaced by length and a checksum, for readable failures. */
function digest(events) {
  return events.map(({ event, data }) => {
    if (data.length < 200) return { event, data };
    let sum = 0;
    for (let i = 0; i < data.length; i++) sum = (Math.imul(sum, 31) + data.charCodeAt(i)) | 0;
    return { event, length: data.length, head: data.slice(0, 40), tail: data.slice(-40), sum };
  });
}

/** @param {Uint8Array} bytes @param {number[]} cuts sorted offsets */
function parseSplit(bytes, cuts) {
  const parser = new SSEParser();
  const events = [];
  let start = 0;
  for (const cut of [...cuts, bytes.length]) {
    events.push(...parser.push(bytes.subarray(start, cut)));
    start = cut;
  }
  const truncated = parser.end();
  return { events, truncated };
}

/** A small deterministic PRNG (mulberry32), so failures reproduce. */
function random(seed) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomCuts(length, count, rand) {
  const cuts = new Set();
  while (cuts.size < Math.min(count, length - 1)) cuts.add(1 + Math.floor(rand() * (length - 1)));
  return [...cuts].sort((a, b) => a - b);
}

for (const [form, eol] of Object.entries(FORMS)) {
  test(`${form}: one chunk`, LIMIT, () => {
    const bytes = encoder.encode(stream(LINES, eol));
    assert.deepEqual(parseSplit(bytes, []), { events: EXPECTED, truncated: false });
  });

  test(`${form}: split at every byte offset`, LIMIT, () => {
    const bytes = encoder.encode(stream(LINES, eol));
    for (let cut = 0; cut <= bytes.length; cut++) {
      assert.deepEqual(parseSplit(bytes, [cut]), { events: EXPECTED, truncated: false }, `split at ${cut}`);
    }
  });

  test(`${form}: split at every pair of byte offsets`, LIMIT, () => {
    const bytes = encoder.encode(stream(LINES, eol));
    for (let a = 0; a <= bytes.length; a++) {
      for (let b = a; b <= bytes.length; b += 7) {
        assert.deepEqual(parseSplit(bytes, [a, b]).events, EXPECTED, `split at ${a} and ${b}`);
      }
    }
  });

  test(`${form}: one byte at a time, and random multi-splits`, LIMIT, () => {
    const bytes = encoder.encode(stream(LINES, eol));
    const every = Array.from({ length: bytes.length - 1 }, (_, i) => i + 1);
    assert.deepEqual(parseSplit(bytes, every).events, EXPECTED);
    const rand = random(7);
    for (let round = 0; round < 200; round++) {
      const cuts = randomCuts(bytes.length, 1 + Math.floor(rand() * 40), rand);
      assert.deepEqual(parseSplit(bytes, cuts).events, EXPECTED, `cuts ${cuts}`);
    }
  });
}

test('mixed line endings in one stream', LIMIT, () => {
  const text = 'data: a\r\ndata: b\rdata: c\n\r\n: note\r\rdata: d\n\n';
  const expected = [
    { event: 'message', data: 'a\nb\nc' },
    { event: 'message', data: 'd' },
  ];
  const bytes = encoder.encode(text);
  for (let cut = 0; cut <= bytes.length; cut++) assert.deepEqual(parseSplit(bytes, [cut]).events, expected);
});

test('a CR at the end of a chunk, then an empty chunk, then its LF', LIMIT, () => {
  const parser = new SSEParser();
  assert.deepEqual(parser.push(encoder.encode('data: x\r')), []);
  assert.deepEqual(parser.push(new Uint8Array(0)), []);
  assert.deepEqual(parser.push(encoder.encode('\n\r')), [{ event: 'message', data: 'x' }]);
  // The LF after that CR is part of the same line end: not another blank line.
  assert.deepEqual(parser.push(encoder.encode('\ndata: y\n\n')), [{ event: 'message', data: 'y' }]);
});

test('a CR line end cut inside a multi-byte character that follows it', LIMIT, () => {
  // "data: a\r" then "é" split across chunks: the decoder yields "" for the first half.
  const bytes = encoder.encode('data: a\r\ndata: \u00e9\r\n\r\n');
  const events = [];
  const parser = new SSEParser();
  const i = bytes.indexOf(0xc3);
  for (const piece of [bytes.subarray(0, 8), bytes.subarray(8, i + 1), bytes.subarray(i + 1)]) events.push(...parser.push(piece));
  assert.deepEqual(events, [{ event: 'message', data: 'a\n\u00e9' }]);
});

test('strings can be fed instead of bytes', LIMIT, () => {
  const parser = new SSEParser();
  const text = stream(LINES, '\r\n').slice(1); // no BOM: it is the decoder that drops it
  const events = [];
  for (let i = 0; i < text.length; i += 5) events.push(...parser.push(text.slice(i, i + 5)));
  assert.deepEqual(events, EXPECTED);
});

test('an event cut off by the end of the stream is discarded and reported', LIMIT, () => {
  for (const tail of ['data: {"type":"image_generation.completed","b64_json":"AAAA', 'data: x\n', 'event: e\n']) {
    const parser = new SSEParser();
    assert.deepEqual(parser.push(encoder.encode(`data: whole\n\n${tail}`)), [{ event: 'message', data: 'whole' }]);
    assert.equal(parser.pending, true);
    assert.equal(parser.end(), true, tail);
  }
  const clean = new SSEParser();
  clean.push(encoder.encode('data: whole\n\n: keep-alive\n'));
  assert.equal(clean.end(), false);
});

// A multi-megabyte data line, with multi-byte characters inside it so that
// splits land inside UTF-8 sequences too.
const BIG_PAYLOAD = 'iVBORw0KGgoAAAANSUhEUgAA\u00e9\u20ac\ud83d\uddbc'.repeat(80_000); // ~2.9 MB of UTF-8
const BIG_LINES = [
  ': keep-alive',
  '',
  'event: image_generation.partial_image',
  `data: {"b64_json":"${BIG_PAYLOAD}"}`,
  '',
  'event: image_generation.completed',
  'data: {"b64_json":"short"}',
  '',
  'data: [DONE]',
  '',
];
const BIG_EXPECTED = [
  { event: 'image_generation.partial_image', data: `{"b64_json":"${BIG_PAYLOAD}"}` },
  { event: 'image_generation.completed', data: '{"b64_json":"short"}' },
  { event: 'message', data: '[DONE]' },
];

/** Equal to BIG_EXPECTED; compared whole, reported as digests. */
function assertBig(events, expected, message) {
  const same = events.length === BIG_EXPECTED.length && events.every((e, i) => e.event === BIG_EXPECTED[i].event && e.data === BIG_EXPECTED[i].data);
  if (!same) assert.deepEqual(digest(events), expected, message);
}

for (const [form, eol] of Object.entries({ LF: '\n', CRLF: '\r\n' })) {
  test(`${form}: a multi-MB data line split at every offset near its edges, and in random chunks`, LIMIT, () => {
    const bytes = encoder.encode(stream(BIG_LINES, eol));
    assert.ok(bytes.length > 2_500_000);
    const expected = digest(BIG_EXPECTED);
    const bigStart = bytes.indexOf(0x7b); // the "{" that starts the big line's JSON
    const edges = [];
    for (let k = 0; k <= 40; k++) edges.push(bigStart - 20 + k);
    for (let k = 0; k <= 100; k++) edges.push(bytes.length - 100 + k);
    for (let k = 0; k <= 12; k++) edges.push(Math.floor(bytes.length / 2) + k); // a 4-byte character is in here
    for (const cut of edges) {
      assertBig(parseSplit(bytes, [cut]).events, expected, `split at ${cut}`);
    }
    const rand = random(42);
    for (let round = 0; round < 5; round++) {
      const cuts = randomCuts(bytes.length, 500, rand);
      assertBig(parseSplit(bytes, cuts).events, expected, `cuts ${cuts.slice(0, 10)}...`);
    }
  });
}

test('a 16 MB line fed in 1 KiB chunks takes linear time', LIMIT, () => {
  const payload = 'A'.repeat(16 * 1024 * 1024);
  const bytes = encoder.encode(`data: ${payload}\r\n\r\n`);
  const parser = new SSEParser();
  const events = [];
  const started = performance.now();
  for (let i = 0; i < bytes.length; i += 1024) events.push(...parser.push(bytes.subarray(i, i + 1024)));
  const elapsed = performance.now() - started;
  assert.equal(events.length, 1);
  assert.equal(events[0].data.length, payload.length);
  assert.ok(events[0].data === payload);
  // Re-scanning or re-joining the buffer on each chunk would copy ~128 GB here.
  assert.ok(elapsed < 3000, `${elapsed.toFixed(0)} ms`);
});
