// The browser client's jobs: submitJob(), getJob(), cancelJob(), waitForJob()
// and imageSrc(). First against a loopback server that plays the gateway's
// job API step by step (to see every request and control every answer), then
// against the real gateway: `python -m pixelgate serve` with the demo
// provider, local storage and an SQLite job store in a temporary directory.
// Run: node --test tests/js/
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { failure, withServer as serve } from './helpers.mjs';

import {
  FINAL_JOB_STATES, PixelgateError, cancelJob, getJob, imageDataUrl, imageSrc, submitJob, waitForJob,
} from '../../proxy/static/pixelgate.js';

const LIMIT = { timeout: 20_000 };
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

/** Each request's method, url, headers and body (text). */
const record = (req, raw) => ({ method: req.method, url: req.url, headers: req.headers, body: raw.toString('utf8') });
const withServer = (handler, body) => serve(handler, body, record);

function json(res, status, body, headers = {}) {
  res.writeHead(status, { 'Content-Type': 'application/json', ...headers });
  res.end(JSON.stringify(body));
}

const job = (status, more = {}) => ({ id: 'imgjob_1', object: 'image.job', status, operation: 'generation', model: 'demo-image', created_at: 1, ...more });

/**
 * A job API that answers the submission with a queued job, then each GET with
 * the next of `states` (the last one repeated); DELETE answers `cancelled`.
 */
function jobServer(states) {
  let reads = 0;
  return (req, res) => {
    if (req.method === 'POST') return json(res, 202, job('queued'), { Location: '/v1/images/jobs/imgjob_1', 'x-request-id': 'req_job' });
    if (req.method === 'DELETE') return json(res, 200, job('cancelled', { finished_at: 2 }));
    const state = states[Math.min(reads, states.length - 1)];
    reads += 1;
    return json(res, 200, typeof state === 'string' ? job(state) : state);
  };
}

test('submitJob: a JSON POST with Prefer: respond-async, without `stream`; the queued job', LIMIT, () =>
  withServer(jobServer(['queued']), async (baseUrl, seen) => {
    const submitted = await submitJob({ baseUrl, apiKey: ' sk-job ', body: { model: 'demo-image', prompt: 'a fox', stream: true, response_format: 'url' } });
    assert.deepEqual(submitted, job('queued'));
    const [request] = seen;
    assert.equal(request.method, 'POST');
    assert.equal(request.url, '/v1/images/generations');
    assert.equal(request.headers.prefer, 'respond-async');
    assert.equal(request.headers.accept, 'application/json');
    assert.equal(request.headers['content-type'], 'application/json');
    assert.equal(request.headers.authorization, 'Bearer sk-job');
    assert.deepEqual(JSON.parse(request.body), { model: 'demo-image', prompt: 'a fox', response_format: 'url' });
  }));

test('submitJob of an edit: multipart to /images/edits, with Prefer', LIMIT, () =>
  withServer(jobServer(['queued']), async (baseUrl, seen) => {
    await submitJob({ baseUrl, operation: 'edit', images: new Blob([new Uint8Array([1, 2, 3])], { type: 'image/png' }), body: { prompt: 'x', n: 1 } });
    const [request] = seen;
    assert.equal(request.url, '/v1/images/edits');
    assert.equal(request.headers.prefer, 'respond-async');
    assert.match(request.headers['content-type'], /^multipart\/form-data; boundary=/);
    assert.match(request.body, /name="prompt"\r\n\r\nx\r\n/);
    assert.match(request.body, /name="image"; filename="image-1.png"/);
    assert.doesNotMatch(request.body, /name="stream"/);
    await assert.rejects(submitJob({ baseUrl, operation: 'edit', body: { prompt: 'x' } }), (err) => err instanceof TypeError && /submitJob needs `images`/.test(err.message));
    await assert.rejects(submitJob({ baseUrl, operation: 'upscale', body: {} }), TypeError);
    assert.equal(seen.length, 1);
  }));

test('submitJob: an HTTP error throws the envelope; a synchronous answer is jobs_unsupported', LIMIT, async () => {
  await withServer(
    (req, res) => json(res, 400, { error: { message: 'A job cannot stream', type: 'invalid_request_error', param: 'stream', code: 'invalid_value' } }, { 'x-request-id': 'req_400' }),
    async (baseUrl) => {
      const err = await failure(submitJob({ baseUrl, body: { prompt: 'x' } }));
      assert.ok(err instanceof PixelgateError);
      assert.deepEqual([err.message, err.status, err.param, err.code, err.requestId], ['A job cannot stream', 400, 'stream', 'invalid_value', 'req_400']);
    },
  );
  await withServer((req, res) => json(res, 200, { created: 1, data: [{ b64_json: 'AA' }] }), async (baseUrl) => {
    const err = await failure(submitJob({ baseUrl, body: { prompt: 'x' } }));
    assert.ok(err instanceof PixelgateError);
    assert.equal(err.code, 'jobs_unsupported');
    assert.equal(err.status, 200);
  });
});

test('waitForJob polls with a growing, bounded interval and reports every state', LIMIT, () => {
  const result = { created: 1, data: [{ url: 'http://gw.example/files/abc?expires=1&sig=x' }, { b64_json: 'QUJD', output_format: 'webp' }], usage: { total_tokens: 3 } };
  const states = ['queued', 'queued', 'in_progress', 'in_progress', 'in_progress', job('completed', { result })];
  return withServer(jobServer(states), async (baseUrl, seen) => {
    const updates = [];
    const done = await waitForJob({ id: 'imgjob_1' }, { baseUrl, apiKey: 'sk-job', interval: 20, maxInterval: 45, onUpdate: (j) => updates.push(j.status) });
    assert.equal(done.status, 'completed');
    assert.deepEqual(updates, ['queued', 'queued', 'in_progress', 'in_progress', 'in_progress', 'completed']);
    assert.ok(seen.every((r) => r.method === 'GET' && r.url === '/v1/images/jobs/imgjob_1' && r.headers.authorization === 'Bearer sk-job'));
    assert.equal(seen.length, states.length);
    // The images, whether a URL or base64.
    assert.equal(imageSrc(done.result.data[0]), 'http://gw.example/files/abc?expires=1&sig=x');
    assert.equal(imageSrc(done.result.data[1]), 'data:image/webp;base64,QUJD');
    assert.equal(imageSrc({ b64_json: 'QUJD', url: '' }), imageDataUrl({ b64_json: 'QUJD' }));
    assert.deepEqual([...FINAL_JOB_STATES], ['completed', 'failed', 'cancelled']);
  });
});

test('waitForJob: the waits grow by 1.5 up to maxInterval', LIMIT, () =>
  withServer(jobServer(['queued', 'queued', 'queued', 'queued', 'queued', 'queued', 'completed']), async (baseUrl) => {
    const at = [];
    await waitForJob('imgjob_1', { baseUrl, interval: 40, maxInterval: 70, onUpdate: () => at.push(performance.now()) });
    const waits = at.slice(1).map((t, i) => t - at[i]);
    // 40, 60, then 70 each time (plus the request itself); unbounded, the last would be 40 * 1.5^5 = 304 ms.
    for (const [i, expected] of [40, 60, 70, 70, 70, 70].entries()) {
      assert.ok(waits[i] >= expected - 5 && waits[i] < expected + 200, `wait ${i}: ${waits[i]} ms, expected about ${expected}`);
    }
  }));

test('a failed job throws a PixelgateError from its error, status from error_status', LIMIT, () => {
  const error = { message: 'Rate limit exceeded for images per minute', type: 'requests', param: null, code: 'rate_limit_exceeded' };
  return withServer(jobServer(['in_progress', job('failed', { error, error_status: 429, finished_at: 3 })]), async (baseUrl) => {
    const updates = [];
    const err = await failure(waitForJob('imgjob_1', { baseUrl, interval: 5, onUpdate: (j) => updates.push(j.status) }));
    assert.ok(err instanceof PixelgateError);
    assert.equal(err.message, error.message);
    assert.equal(err.status, 429);
    assert.equal(err.code, 'rate_limit_exceeded');
    assert.equal(err.type, 'requests');
    assert.equal(err.job.id, 'imgjob_1');
    assert.equal(err.job.status, 'failed');
    assert.deepEqual(updates, ['in_progress', 'failed']);
  });
});

test('a cancelled job is final: waitForJob resolves to it', LIMIT, () =>
  withServer(jobServer(['in_progress', 'cancelled']), async (baseUrl) => {
    const done = await waitForJob('imgjob_1', { baseUrl, interval: 5 });
    assert.equal(done.status, 'cancelled');
  }));

test('aborting waitForJob stops polling at once; with cancelOnAbort it DELETEs the job first', LIMIT, () =>
  withServer(jobServer(['in_progress']), async (baseUrl, seen) => {
    // Without cancelOnAbort: polling stops, nothing else is sent.
    let abort = new AbortController();
    let polls = 0;
    let waiting = waitForJob('imgjob_1', { baseUrl, signal: abort.signal, interval: 60_000, onUpdate: () => { polls += 1; } });
    while (polls === 0) await new Promise((r) => setTimeout(r, 5));
    let t0 = performance.now();
    abort.abort();
    let err = await failure(waiting);
    assert.equal(err.name, 'AbortError');
    assert.ok(performance.now() - t0 < 200, 'the wait between polls was not cut short');
    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(seen.map((r) => r.method), ['GET']);

    // With it: the job is cancelled at the gateway, then the abort reason is thrown.
    seen.length = 0;
    abort = new AbortController();
    polls = 0;
    waiting = waitForJob('imgjob_1', { baseUrl, apiKey: 'sk-job', signal: abort.signal, interval: 60_000, cancelOnAbort: true, onUpdate: () => { polls += 1; } });
    while (polls === 0) await new Promise((r) => setTimeout(r, 5));
    const reason = new Error('stop it');
    t0 = performance.now();
    abort.abort(reason);
    err = await failure(waiting);
    assert.equal(err, reason);
    assert.ok(performance.now() - t0 < 1000);
    assert.deepEqual(seen.map((r) => [r.method, r.url, r.headers.authorization]), [
      ['GET', '/v1/images/jobs/imgjob_1', 'Bearer sk-job'],
      ['DELETE', '/v1/images/jobs/imgjob_1', 'Bearer sk-job'],
    ]);

    // Already aborted: no request at all.
    seen.length = 0;
    err = await failure(waitForJob('imgjob_1', { baseUrl, signal: AbortSignal.abort() }));
    assert.equal(err.name, 'AbortError');
    assert.equal(seen.length, 0);
  }));

test('getJob and cancelJob: the path is escaped; a 404 throws job_not_found', LIMIT, () =>
  withServer(
    (req, res) => json(res, 404, { error: { message: "No job 'imgjob_x/y'", type: 'invalid_request_error', param: 'job_id', code: 'job_not_found' } }),
    async (baseUrl, seen) => {
      for (const call of [getJob, cancelJob]) {
        const err = await failure(call('imgjob_x/y', { baseUrl }));
        assert.ok(err instanceof PixelgateError);
        assert.deepEqual([err.status, err.code, err.param], [404, 'job_not_found', 'job_id']);
      }
      assert.deepEqual(seen.map((r) => [r.method, r.url]), [['GET', '/v1/images/jobs/imgjob_x%2Fy'], ['DELETE', '/v1/images/jobs/imgjob_x%2Fy']]);
      await assert.rejects(getJob('', { baseUrl }), TypeError);
      await assert.rejects(waitForJob(undefined, { baseUrl }), TypeError);
    },
  ));

// --- The real gateway -------------------------------------------------------

const PYTHON = process.env.PIXELGATE_PYTHON || path.join(ROOT, '.venv', 'bin', 'python');

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/**
 * Run `body(baseUrl)` against `python -m pixelgate serve`: the demo provider
 * (`demo-image`, and `slow-image` with a 60 s latency), local storage and an
 * SQLite job store, all in a temporary directory.
 */
async function withGateway(body) {
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'pixelgate-js-jobs-'));
  const port = await freePort();
  const config = {
    server: { host: '127.0.0.1', port, shutdown_timeout: 1 },
    providers: {
      demo: { adapter: 'demo', options: { latency_ms: 200 } },
      slow: { adapter: 'demo', options: { latency_ms: 60_000 } },
    },
    models: { 'demo-image': [{ provider: 'demo' }], 'slow-image': [{ provider: 'slow' }] },
    storage: { local: { path: path.join(tmp, 'images') }, signing_keys: ['js-test-key-0123456789abcdefghijklmnopqrstuvwxyz'] },
    jobs: { path: path.join(tmp, 'jobs.sqlite3'), poll_interval: 0.2 },
  };
  const file = path.join(tmp, 'pixelgate.yaml');
  writeFileSync(file, JSON.stringify(config)); // JSON is YAML
  let log = '';
  const proc = spawn(PYTHON, ['-m', 'pixelgate', 'serve', '--config', file], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
  proc.stderr.on('data', (chunk) => { log += chunk; });
  const exited = new Promise((resolve) => proc.once('exit', resolve));
  const url = `http://127.0.0.1:${port}`;
  try {
    const deadline = Date.now() + 15_000;
    for (;;) {
      if (proc.exitCode !== null) assert.fail(`the gateway exited (${proc.exitCode}):\n${log}`);
      try {
        if ((await fetch(`${url}/readyz`)).ok) break;
      } catch {
        // Not listening yet.
      }
      if (Date.now() > deadline) assert.fail(`the gateway did not get ready:\n${log}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    return await body(`${url}/v1`, url);
  } finally {
    proc.kill('SIGTERM');
    const timer = setTimeout(() => proc.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
    rmSync(tmp, { recursive: true, force: true });
  }
}

const gateway = existsSync(PYTHON) ? test : test.skip;

gateway('against the gateway: a job with URLs completes; its URL serves the PNG; a slow job is cancelled', LIMIT, () =>
  withGateway(async (baseUrl, origin) => {
    const submitted = await submitJob({ baseUrl, body: { model: 'demo-image', prompt: 'a lighthouse', size: '256x256', response_format: 'url' } });
    assert.equal(submitted.status, 'queued');
    assert.match(submitted.id, /^imgjob_/);
    const updates = [];
    const done = await waitForJob(submitted.id, { baseUrl, interval: 50, onUpdate: (j) => updates.push(j.status) });
    assert.equal(done.status, 'completed');
    assert.equal(updates.at(-1), 'completed');
    assert.ok(updates.every((s, i) => i === 0 || ['queued', 'in_progress', 'completed'].indexOf(s) >= ['queued', 'in_progress', 'completed'].indexOf(updates[i - 1])), updates.join());
    const [item] = done.result.data;
    const src = imageSrc(item);
    assert.ok(src.startsWith(`${origin}/files/`), src);
    assert.match(src, /[?&]expires=\d+&sig=/);
    const image = await fetch(src);
    assert.equal(image.status, 200);
    assert.equal(image.headers.get('content-type'), 'image/png');
    assert.deepEqual([...new Uint8Array(await image.arrayBuffer()).subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
    assert.deepEqual(await getJob(submitted.id, { baseUrl }).then((j) => j.status), 'completed');

    // A base64 job: imageSrc gives a data: URL.
    const b64 = await waitForJob(await submitJob({ baseUrl, body: { model: 'demo-image', prompt: 'a fox', size: '256x256' } }), { baseUrl, interval: 50 });
    assert.match(imageSrc(b64.result.data[0]), /^data:image\/png;base64,iVBORw0KGgo/);

    // A slow job, cancelled by aborting the wait (cancelOnAbort), then read: cancelled.
    const slow = await submitJob({ baseUrl, body: { model: 'slow-image', prompt: 'a slow fox', size: '256x256' } });
    const abort = new AbortController();
    const seen = [];
    const waiting = waitForJob(slow.id, {
      baseUrl, signal: abort.signal, interval: 50, cancelOnAbort: true,
      onUpdate: (j) => { seen.push(j.status); if (j.status === 'in_progress') abort.abort(); },
    });
    const err = await failure(waiting);
    assert.equal(err.name, 'AbortError');
    assert.equal(seen.at(-1), 'in_progress');
    const cancelled = await waitForJob(slow.id, { baseUrl, interval: 50 });
    assert.equal(cancelled.status, 'cancelled');

    // A job of an unknown model is refused at submission, as a synchronous request would be.
    const refused = await failure(submitJob({ baseUrl, body: { model: 'no-such-model', prompt: 'x' } }));
    assert.ok(refused instanceof PixelgateError);
    assert.ok(refused.status >= 400 && refused.status < 500, String(refused.status));

    // cancelJob on a queued or running job: the job, cancelled or cancelling.
    const another = await submitJob({ baseUrl, body: { model: 'slow-image', prompt: 'x', size: '256x256' } });
    const after = await cancelJob(another.id, { baseUrl });
    assert.equal(after.id, another.id);
    assert.ok(after.status === 'cancelled' || after.cancel_requested, JSON.stringify(after));
    assert.equal((await waitForJob(another.id, { baseUrl, interval: 50 })).status, 'cancelled');
  }));
