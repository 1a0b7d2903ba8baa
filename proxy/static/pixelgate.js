/**
 * pixelgate.js: a small browser client for Pixelgate, or for any server that
 * speaks the OpenAI Images API, with streamed partial images.
 *
 * No dependencies, no build step; it runs in browsers and in Node >= 18.
 * Copy the file, or import it from a running gateway at `/static/pixelgate.js`.
 *
 *   import { streamImages, editImages, PixelgateError, imageDataUrl } from './pixelgate.js';
 *
 *   const abort = new AbortController();
 *   try {
 *     for await (const ev of streamImages({
 *       baseUrl: '/v1',
 *       body: { model: 'demo-image', prompt: 'a lighthouse', partial_images: 2 },
 *       signal: abort.signal,
 *     })) {
 *       img.src = imageDataUrl(ev.data);  // partials sharpen in place, then the final image
 *     }
 *   } catch (err) {
 *     if (abort.signal.aborted) return;  // cancelled: the request is closed
 *     show(err.message);                 // a PixelgateError: the OpenAI envelope's message
 *   }
 *
 * `editImages()` streams `POST /v1/images/edits` the same way, from files:
 *
 *   for await (const ev of editImages({
 *     images: input.files,               // File, Blob, FileList or an array: up to 16
 *     mask,                              // optional PNG Blob: transparent where to edit
 *     body: { model: 'demo-image', prompt: 'add a red boat', partial_images: 2 },
 *     signal: abort.signal,
 *   })) img.src = imageDataUrl(ev.data);
 *
 * Jobs (a gateway with a `jobs` section): `submitJob()` queues a generation
 * or an edit and answers at once; `waitForJob()` polls it to its end.
 *
 *   const job = await submitJob({ body: { model: 'demo-image', prompt: 'a lighthouse', response_format: 'url' } });
 *   const done = await waitForJob(job.id, { signal: abort.signal, onUpdate: (j) => show(j.status) });
 *   if (done.status === 'completed') img.src = imageSrc(done.result.data[0]);  // a URL, or base64 as a data: URL
 *
 * @module pixelgate
 */

const LF = 0x0a;
const CR = 0x0d;
const COLON = 0x3a;
const SPACE = 0x20;

/**
 * One server-sent event, as dispatched by the SSE rules.
 * @typedef {object} SSEMessage
 * @property {string} event  The `event:` field; "message" when the event has none.
 * @property {string} data   The `data:` lines joined with "\n".
 */

/**
 * An incremental parser for `text/event-stream` (the WHATWG SSE rules).
 *
 * Feed it chunks as they arrive, split anywhere (inside a UTF-8 sequence or a
 * CRLF included); it returns the events each chunk completes. Lines may end in
 * LF, CRLF or CR. Comment lines (`: keep-alive`) are skipped; `id:`, `retry:`
 * and unknown fields are ignored (this client never reconnects). Each chunk is
 * scanned once: an unfinished line is kept as a list of pieces and joined when
 * its end arrives, so a multi-megabyte `data:` line costs linear time.
 *
 * Feed either bytes or strings to one parser, not both.
 */
export class SSEParser {
  #decoder = new TextDecoder('utf-8');
  /** @type {string[]} Pieces of the line being received. */
  #line = [];
  /** The last character seen was a CR: an LF right after it belongs to that line end. */
  #afterCR = false;
  /** @type {string[]} The current event's data lines. */
  #data = [];
  #event = '';

  /**
   * Parse the next chunk of the stream.
   * @param {Uint8Array | string} chunk  Bytes (decoded as UTF-8, a leading BOM dropped) or text.
   * @returns {SSEMessage[]} The events this chunk completes, in order.
   */
  push(chunk) {
    return this.#feed(typeof chunk === 'string' ? chunk : this.#decoder.decode(chunk, { stream: true }));
  }

  /**
   * True while part of an event has been received but not its end.
   * @returns {boolean}
   */
  get pending() {
    return this.#line.length > 0 || this.#data.length > 0 || this.#event !== '';
  }

  /**
   * End the stream. An unfinished event is discarded, as the SSE rules say;
   * the return value tells whether there was one (a truncated stream).
   * @returns {boolean} True if the stream ended in the middle of an event.
   */
  end() {
    // Flushing the decoder can only add U+FFFD to the current line, never end one.
    this.#feed(this.#decoder.decode());
    const truncated = this.pending;
    this.#line = [];
    this.#data = [];
    this.#event = '';
    this.#afterCR = false;
    return truncated;
  }

  /**
   * @param {string} text
   * @returns {SSEMessage[]}
   */
  #feed(text) {
    /** @type {SSEMessage[]} */
    const out = [];
    const n = text.length;
    if (n === 0) return out;
    let i = 0;
    if (this.#afterCR) {
      this.#afterCR = false;
      if (text.charCodeAt(0) === LF) i = 1;
    }
    let lf = text.indexOf('\n', i);
    let cr = text.indexOf('\r', i);
    while (i < n) {
      if (lf !== -1 && lf < i) lf = text.indexOf('\n', i);
      if (cr !== -1 && cr < i) cr = text.indexOf('\r', i);
      const end = lf === -1 ? cr : cr === -1 ? lf : Math.min(lf, cr);
      if (end === -1) {
        this.#line.push(text.slice(i));
        break;
      }
      let line = text.slice(i, end);
      if (this.#line.length > 0) {
        this.#line.push(line);
        line = this.#line.join('');
        this.#line = [];
      }
      i = end + 1;
      if (text.charCodeAt(end) === CR) {
        if (i === n) this.#afterCR = true;
        else if (text.charCodeAt(i) === LF) i += 1;
      }
      this.#processLine(line, out);
    }
    return out;
  }

  /**
   * @param {string} line
   * @param {SSEMessage[]} out
   */
  #processLine(line, out) {
    if (line === '') {
      if (this.#data.length > 0) out.push({ event: this.#event || 'message', data: this.#data.join('\n') });
      this.#data = [];
      this.#event = '';
      return;
    }
    if (line.charCodeAt(0) === COLON) return;
    const colon = line.indexOf(':');
    if (colon === -1) {
      this.#field(line, '');
    } else {
      const skip = line.charCodeAt(colon + 1) === SPACE ? 2 : 1;
      this.#field(line.slice(0, colon), line.slice(colon + skip));
    }
  }

  /**
   * @param {string} name
   * @param {string} value
   */
  #field(name, value) {
    if (name === 'data') this.#data.push(value);
    else if (name === 'event') this.#event = value;
    // `id`, `retry` and unknown fields: ignored.
  }
}

/**
 * A failed request or stream, with the OpenAI error envelope's fields.
 *
 * `status` is the HTTP status for errors before the stream (null for errors
 * the stream reports, and for network failures; for a failed job, the job's
 * `error_status`: what the synchronous call would have answered); `code` is
 * the envelope's code, or one of this client's: `network_error`,
 * `stream_truncated`, `stream_incomplete`, `invalid_event`,
 * `invalid_response`, `jobs_unsupported`.
 */
export class PixelgateError extends Error {
  /**
   * @param {string} message
   * @param {object} [info]
   * @param {number | null} [info.status]
   * @param {string | null} [info.code]
   * @param {string | null} [info.type]
   * @param {string | null} [info.param]
   * @param {string | null} [info.requestId]  The gateway's `x-request-id`, for support.
   * @param {Job | null} [info.job]  For a failed job: the job, as the gateway last answered it.
   * @param {unknown} [info.cause]
   */
  constructor(message, { status = null, code = null, type = null, param = null, requestId = null, job = null, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'PixelgateError';
    this.status = status;
    this.code = code;
    this.type = type;
    this.param = param;
    this.requestId = requestId;
    this.job = job;
  }
}

/**
 * An event's JSON object, as the server sent it (OpenAI's fields).
 * @typedef {object} ImageData
 * @property {string} [type]           "image_generation.partial_image" or "image_generation.completed";
 *   "image_edit.partial_image" or "image_edit.completed" for edits.
 * @property {string} [b64_json]       The image, base64-encoded.
 * @property {string} [url]            Instead of `b64_json`, for `response_format: "url"`: where to fetch it.
 * @property {number} [partial_image_index]
 * @property {string} [size]           "1024x1024", ...
 * @property {string} [quality]
 * @property {string} [background]
 * @property {string} [output_format]  "png", "jpeg" or "webp".
 * @property {number} [created_at]
 * @property {object} [usage]          Tokens, on completed events.
 */

/**
 * What `streamImages` and `editImages` yield. `image` is the 0-based image the event is for
 * (images stream one after the other: partials of an image, then its
 * completed event); `index` is a partial's `partial_image_index`.
 * @typedef {{type: 'partial', image: number, index: number, data: ImageData}} PartialEvent
 * @typedef {{type: 'completed', image: number, data: ImageData}} CompletedEvent
 * @typedef {{type: 'other', name: string, image: number, data: any}} OtherEvent
 * @typedef {PartialEvent | CompletedEvent | OtherEvent} ImageEvent
 */

/**
 * Options shared by every call.
 * @typedef {object} CallOptions
 * @property {string} [baseUrl]  The API root, with its `/v1`: "https://gw.example.com/v1"; default "/v1".
 * @property {string} [apiKey]   Sent as `Authorization: Bearer <apiKey>` when non-empty.
 * @property {AbortSignal} [signal]  Aborting it closes the request (and the gateway's upstream request).
 * @property {typeof fetch} [fetch]  A fetch implementation; default the global one.
 */

/**
 * Generate images with `stream: true` and yield the events as they arrive.
 *
 * Throws a `PixelgateError` with the server's message for an HTTP error, an
 * `event: error` frame or any event whose data has a top-level `error`; and
 * when the stream ends in the middle of an event or before any image. Ends at
 * the end of the stream or at `data: [DONE]`. When `signal` aborts, it throws
 * the signal's reason (an `AbortError` DOMException unless you gave one).
 * Leaving the loop early (`break`) cancels the request too.
 *
 * @param {CallOptions & {body: object}} options  `body`: the generations request
 *   (`model`, `prompt`, `n`, `size`, `quality`, `partial_images`, ...); `stream` is set for you.
 * @returns {AsyncGenerator<ImageEvent, void, undefined>}
 */
export async function* streamImages({ body, signal, ...options }) {
  const response = await request('images/generations', {
    ...options,
    signal,
    method: 'POST',
    accept: 'text/event-stream',
    body: JSON.stringify({ ...body, stream: true }),
  });
  yield* imageEvents(response, signal);
}

/**
 * The input files of an edit: one `File` or `Blob`, or any iterable of them
 * (an array, an `<input type=file>`'s `FileList`).
 * @typedef {Blob | Iterable<Blob>} EditImages
 */

/**
 * Edit images with `stream: true` (`POST /v1/images/edits`, as
 * multipart/form-data) and yield the events as they arrive: the same events,
 * errors, cancellation and end of stream as `streamImages`. Both
 * `image_edit.*` and `image_generation.*` event types are accepted.
 *
 * One image is sent as the part `image`, several as repeated `image[]` parts,
 * in order (as OpenAI's SDKs send them); each file's bytes go as they are,
 * under its `name` when it is a `File` (a `Blob` gets "image-1.png", ...).
 * The mask applies to the first image: a PNG of its dimensions whose
 * transparent pixels mark where to edit. `body`'s values are sent as text
 * fields: numbers as digits, booleans as "true"/"false"; `null` and
 * `undefined` are left out.
 *
 * Throws a `TypeError` before any request when there is no image, when an
 * image or the mask is not a `Blob`, or when a field's value is an object.
 *
 * @param {CallOptions & {images: EditImages, mask?: Blob | null, body: object}} options
 *   `body`: the edit's fields (`prompt`, `model`, `n`, `size`, `quality`,
 *   `partial_images`, `input_fidelity`, ...); `stream` is set for you.
 * @returns {AsyncGenerator<ImageEvent, void, undefined>}
 */
export async function* editImages({ images, mask, body, signal, ...options }) {
  const response = await request('images/edits', {
    ...options,
    signal,
    method: 'POST',
    accept: 'text/event-stream',
    body: editForm(images, mask, { ...body, stream: true }, 'editImages'),
  });
  yield* imageEvents(response, signal);
}

/**
 * Generate images without streaming. Resolves to the ImagesResponse:
 * `{created, data: [{b64_json}], size, quality, usage, ...}`.
 * @param {CallOptions & {body: object}} options
 * @returns {Promise<{created: number, data: Array<{b64_json?: string, url?: string}>, [key: string]: any}>}
 */
export async function generateImages({ body, ...options }) {
  const response = await request('images/generations', {
    ...options,
    method: 'POST',
    accept: 'application/json',
    body: JSON.stringify({ ...body, stream: false }),
  });
  return readJson(response, options.signal);
}

/**
 * Edit images without streaming (`POST /v1/images/edits`, multipart, `stream`
 * set to false): the files and fields as `editImages` sends them. Resolves to
 * the ImagesResponse, as `generateImages` does.
 * @param {CallOptions & {images: EditImages, mask?: Blob | null, body: object}} options
 * @returns {Promise<{created: number, data: Array<{b64_json?: string, url?: string}>, [key: string]: any}>}
 */
export async function editImagesOnce({ images, mask, body, ...options }) {
  const response = await request('images/edits', {
    ...options,
    method: 'POST',
    accept: 'application/json',
    body: editForm(images, mask, { ...body, stream: false }, 'editImagesOnce'),
  });
  return readJson(response, options.signal);
}

/**
 * An async job, as `GET /v1/images/jobs/{id}` answers it.
 * @typedef {object} Job
 * @property {string} id             "imgjob_...".
 * @property {'image.job'} object
 * @property {JobStatus} status
 * @property {'generation' | 'edit'} operation
 * @property {string | null} model
 * @property {number} created_at     Unix time; `started_at` and `finished_at` once they happen.
 * @property {number} [started_at]
 * @property {number} [finished_at]
 * @property {boolean} [cancel_requested]  Cancelled, and not stopped yet.
 * @property {number} [partial_images]  Progress of a job that asked for `partial_images`: those received so far.
 * @property {{created?: number, data: ImageData[], usage?: object, [key: string]: any} | null} [result]
 *   Completed: the ImagesResponse the synchronous call would have answered
 *   (`data[i].url`, signed when the job was read, or `data[i].b64_json`); null once expired.
 * @property {ErrorFields} [error]   Failed: the OpenAI error (also set, with `result: null`, when a result expired).
 * @property {number} [error_status] Failed: the HTTP status the synchronous call would have answered.
 */

/**
 * `queued` and `in_progress` are on the way; `completed`, `failed` and `cancelled` are final.
 * @typedef {'queued' | 'in_progress' | 'completed' | 'failed' | 'cancelled'} JobStatus
 */

/** The states a job ends in. */
export const FINAL_JOB_STATES = Object.freeze(['completed', 'failed', 'cancelled']);

/**
 * Submit a generation or an edit as an async job (`Prefer: respond-async`):
 * the gateway checks the request as it would a synchronous one (its errors
 * throw here, as `PixelgateError`s), queues it and answers `202` at once.
 * Resolves to the job, `queued`; follow it with `waitForJob` or `getJob`.
 *
 * `body` is the request (`model`, `prompt`, `n`, `size`, `response_format`,
 * ...); `stream` is dropped (a job never streams). An edit (`operation:
 * "edit"`) sends `images` and `mask` as `editImages` does. Throws a
 * `PixelgateError` with code `jobs_unsupported` when the server answered
 * without a job (a gateway without a `jobs` section runs the request at once).
 *
 * @param {CallOptions & {operation?: 'generation' | 'edit', body: object, images?: EditImages, mask?: Blob | null}} options
 * @returns {Promise<Job>}
 */
export async function submitJob({ operation = 'generation', body, images, mask, signal, ...options }) {
  if (operation !== 'generation' && operation !== 'edit') {
    throw new TypeError(`submitJob: \`operation\` is "generation" or "edit", not ${JSON.stringify(operation)}.`);
  }
  const { stream: _stream, ...fields } = /** @type {Record<string, unknown>} */ (body ?? {});
  const edit = operation === 'edit';
  const response = await request(edit ? 'images/edits' : 'images/generations', {
    ...options,
    signal,
    method: 'POST',
    accept: 'application/json',
    headers: { Prefer: 'respond-async' },
    body: edit ? editForm(images, mask, fields, 'submitJob') : JSON.stringify(fields),
  });
  const job = await readJson(response, signal);
  if (!isJob(job)) {
    // A server that ignored the preference: it ran the request and answered with its result.
    throw new PixelgateError('The server answered without a job: it does not run async jobs (a gateway needs a `jobs` section).', {
      status: response.status,
      code: 'jobs_unsupported',
      requestId: response.headers.get('x-request-id'),
    });
  }
  return job;
}

/**
 * A job as it stands (`GET /v1/images/jobs/{id}`). Another key's job, or one
 * that expired, is a `PixelgateError` with status 404 (`job_not_found`).
 * @param {string} id
 * @param {CallOptions} [options]
 * @returns {Promise<Job>}
 */
export async function getJob(id, options = {}) {
  const response = await request(jobPath(id), { ...options, method: 'GET', accept: 'application/json' });
  return readJson(response, options.signal);
}

/**
 * Cancel a job (`DELETE /v1/images/jobs/{id}`): the job as it stands then.
 * A queued job is `cancelled` at once; a running one may still be
 * `in_progress`, with `cancel_requested`, until it stops (the provider's job
 * is cancelled too where the provider can). A final job stays as it was.
 * @param {string} id
 * @param {CallOptions} [options]
 * @returns {Promise<Job>}
 */
export async function cancelJob(id, options = {}) {
  const response = await request(jobPath(id), { ...options, method: 'DELETE', accept: 'application/json' });
  return readJson(response, options.signal);
}

/**
 * Poll a job until it is final, and resolve to it: `completed` (with its
 * `result`) or `cancelled`. A `failed` job throws a `PixelgateError` made from
 * the job's `error` (its `status` the job's `error_status`, its `job` the job).
 *
 * Polls at once, then after `interval` ms, each wait 1.5 times the last, up to
 * `maxInterval`. `onUpdate` is called with every job read (the first one
 * included), so a page can show `queued` → `in_progress` → ... as it happens.
 * Errors reading the job (HTTP, network) throw.
 *
 * When `signal` aborts, polling stops at once and the promise rejects with the
 * signal's reason; with `cancelOnAbort: true` it sends `DELETE` for the job
 * first (best effort: a failure to cancel is not reported). Without it the job
 * runs on, and can be read later.
 *
 * @param {string | {id: string}} job  The job's id, or the job.
 * @param {CallOptions & {interval?: number, maxInterval?: number, onUpdate?: (job: Job) => void, cancelOnAbort?: boolean}} [options]
 * @returns {Promise<Job>}
 */
export async function waitForJob(job, { signal, interval = 500, maxInterval = 5000, onUpdate, cancelOnAbort = false, ...options } = {}) {
  const id = typeof job === 'string' ? job : job?.id;
  if (typeof id !== 'string' || !id) throw new TypeError('waitForJob needs a job id.');
  let wait = Math.max(0, interval);
  try {
    for (;;) {
      throwIfAborted(signal);
      const current = await getJob(id, { ...options, signal });
      onUpdate?.(current);
      if (current.status === 'failed') throw jobError(current);
      if (FINAL_JOB_STATES.includes(current.status)) return current;
      await sleep(wait, signal);
      wait = Math.min(Math.max(wait * 1.5, 1), Math.max(maxInterval, interval));
    }
  } catch (err) {
    if (signal?.aborted && cancelOnAbort) await cancelJob(id, options).catch(() => {});
    throw err;
  }
}

/**
 * The `src` for an `<img>` of a response item or an event: its `url` when the
 * server gave one (`response_format: "url"`), else its base64 as a `data:` URL.
 * @param {ImageData} item
 * @returns {string}
 */
export function imageSrc(item) {
  return typeof item.url === 'string' && item.url ? item.url : imageDataUrl(item);
}

/**
 * The model names the server offers (`GET /v1/models`).
 * @param {CallOptions} [options]
 * @returns {Promise<string[]>}
 */
export async function listModels(options = {}) {
  const response = await request('models', { ...options, method: 'GET', accept: 'application/json' });
  const list = await readJson(response, options.signal);
  return (list.data ?? []).map((/** @type {{id: string}} */ model) => model.id);
}

/**
 * A `data:` URL for an event's or a response item's base64 image, for
 * `<img src>`. An item that may carry a `url` instead: `imageSrc`.
 * @param {ImageData} data
 * @returns {string}
 */
export function imageDataUrl(data) {
  const format = data.output_format === 'jpeg' || data.output_format === 'webp' ? data.output_format : 'png';
  return `data:image/${format};base64,${data.b64_json ?? ''}`;
}

/**
 * A 2xx answer to a streamed request, as image events: the SSE stream, or
 * the ImagesResponse of a server that ignores `stream`.
 * @param {Response} response
 * @param {AbortSignal | undefined} signal
 * @returns {AsyncGenerator<ImageEvent, void, undefined>}
 */
async function* imageEvents(response, signal) {
  if (!(response.headers.get('content-type') || '').includes('text/event-stream')) {
    // A server that ignores `stream`: one completed event per image.
    const { data = [], ...meta } = await readJson(response, signal);
    for (const [image, item] of data.entries()) yield { type: 'completed', image, data: { ...meta, ...item } };
    return;
  }
  if (!response.body) throw new PixelgateError('The response has no body.', { code: 'stream_incomplete' });
  const requestId = response.headers.get('x-request-id');
  const reader = response.body.getReader();
  const parser = new SSEParser();
  let images = 0;
  let done = false;
  /** @type {PixelgateError | null} An unparsable event; an error event right after it explains it better. */
  let malformed = null;
  try {
    while (!done) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch (err) {
        if (signal?.aborted) throw signal.reason ?? err;
        throw new PixelgateError('The connection was lost during the stream.', { code: 'network_error', requestId, cause: err });
      }
      if (chunk.done) break;
      for (const message of parser.push(chunk.value)) {
        if (message.data === '[DONE]') {
          done = true;
          break;
        }
        let data;
        try {
          data = JSON.parse(message.data);
        } catch (err) {
          malformed ??= new PixelgateError('The server sent an event that is not valid JSON.', { code: 'invalid_event', requestId, cause: err });
          continue;
        }
        const error = streamError(message.event, data, requestId);
        if (error) throw error;
        if (malformed) throw malformed;
        const event = toImageEvent(message.event, data, images);
        if (event.type === 'completed') images += 1;
        yield event;
      }
    }
    if (malformed) throw malformed;
    if (parser.end() && !done) {
      throw new PixelgateError('The stream ended in the middle of an event.', { code: 'stream_truncated', requestId });
    }
    if (images === 0) {
      throw new PixelgateError('The stream ended before any image was completed.', { code: 'stream_incomplete', requestId });
    }
  } finally {
    // Closes the connection when the caller leaves the loop early or on error; harmless at the end.
    reader.cancel().catch(() => {});
  }
}

/**
 * The multipart body of an edit: the text fields in `fields`' order, then the
 * images, then the mask.
 * @param {EditImages} images
 * @param {Blob | null | undefined} mask
 * @param {Record<string, unknown>} fields
 * @param {string} caller  The function named in errors.
 * @returns {FormData}
 */
function editForm(images, mask, fields, caller) {
  const files = images instanceof Blob ? [images] : images != null && typeof images === 'object' && Symbol.iterator in images ? [...images] : null;
  if (!files || files.length === 0) throw new TypeError(`${caller} needs \`images\`: at least one File or Blob.`);
  for (const [i, file] of files.entries()) {
    if (!(file instanceof Blob)) throw new TypeError(`${caller}: images[${i}] is not a File or Blob.`);
  }
  if (mask != null && !(mask instanceof Blob)) throw new TypeError(`${caller}: \`mask\` is not a Blob.`);
  const form = new FormData();
  for (const [name, value] of Object.entries(fields)) {
    if (value === null || value === undefined) continue;
    if (typeof value === 'object') throw new TypeError(`${caller}: \`${name}\` is an object; a form field takes text, a number or a boolean.`);
    form.append(name, String(value));
  }
  const field = files.length > 1 ? 'image[]' : 'image';
  for (const [i, file] of files.entries()) form.append(field, file, fileName(file, `image-${i + 1}`));
  if (mask) form.append('mask', mask, fileName(mask, 'mask'));
  return form;
}

/**
 * A `File`'s own name, else `stem` with the extension its type suggests.
 * @param {Blob} blob
 * @param {string} stem
 * @returns {string}
 */
function fileName(blob, stem) {
  if (typeof File !== 'undefined' && blob instanceof File && blob.name) return blob.name;
  const ext = { 'image/jpeg': 'jpg', 'image/webp': 'webp' }[blob.type] ?? 'png';
  return `${stem}.${ext}`;
}

/**
 * Fetch `path` under `baseUrl`; resolve to the response if it is a 2xx.
 * @param {string} path
 * @param {CallOptions & {method: string, accept: string, headers?: Record<string, string>, body?: string | FormData}} options
 *   A string body is JSON; a FormData one gets fetch's multipart Content-Type, with its boundary.
 *   `headers`: more request headers (`Prefer`).
 * @returns {Promise<Response>}
 */
async function request(path, { baseUrl = '/v1', apiKey, signal, fetch: fetchImpl = globalThis.fetch, method, accept, headers: extra, body }) {
  const url = `${String(baseUrl).replace(/\/+$/, '')}/${path}`;
  /** @type {Record<string, string>} */
  const headers = { ...extra, Accept: accept };
  if (typeof body === 'string') headers['Content-Type'] = 'application/json';
  if (apiKey && apiKey.trim()) headers.Authorization = `Bearer ${apiKey.trim()}`;
  let response;
  try {
    response = await fetchImpl(url, { method, headers, body, signal });
  } catch (err) {
    if (signal?.aborted) throw signal.reason ?? err;
    throw new PixelgateError(`Could not reach ${url}: ${errorText(err)}`, { code: 'network_error', cause: err });
  }
  if (!response.ok) throw await httpError(response, signal);
  return response;
}

/**
 * A 2xx response's JSON body.
 * @param {Response} response
 * @param {AbortSignal | undefined} signal
 * @returns {Promise<any>}
 */
async function readJson(response, signal) {
  try {
    return await response.json();
  } catch (err) {
    if (signal?.aborted) throw signal.reason ?? err;
    throw new PixelgateError('The server sent a response that is not valid JSON.', {
      status: response.status,
      code: 'invalid_response',
      requestId: response.headers.get('x-request-id'),
      cause: err,
    });
  }
}

/**
 * The error for a non-2xx response, from its OpenAI envelope when it has one.
 * @param {Response} response
 * @param {AbortSignal | undefined} signal
 * @returns {Promise<PixelgateError>}
 */
async function httpError(response, signal) {
  let text = '';
  try {
    text = await response.text();
  } catch (err) {
    if (signal?.aborted) throw signal.reason ?? err;
  }
  /** @type {ErrorFields} */
  let error = {};
  try {
    error = envelope(JSON.parse(text));
  } catch {
    // Not JSON: a proxy's HTML page, say. The status says enough.
  }
  const message = error.message || `HTTP ${response.status}${response.statusText ? ` ${response.statusText}` : ''}`;
  return new PixelgateError(message, {
    status: response.status,
    code: error.code ?? null,
    type: error.type ?? null,
    param: error.param ?? null,
    requestId: response.headers.get('x-request-id'),
  });
}

/**
 * The error an event stands for, if it is one: an `event: error` frame, a
 * `type: "error"` object, or any object with a top-level `error` (an event the
 * gateway had to cut short is closed that way).
 * @param {string} name
 * @param {any} data
 * @param {string | null} requestId
 * @returns {PixelgateError | null}
 */
function streamError(name, data, requestId) {
  const isObject = data !== null && typeof data === 'object';
  if (name !== 'error' && !(isObject && (data.type === 'error' || data.error != null))) return null;
  const error = envelope(data);
  return new PixelgateError(error.message || 'The stream failed.', {
    code: error.code ?? null,
    type: error.type ?? null,
    param: error.param ?? null,
    requestId,
  });
}

/**
 * The fields of an OpenAI error envelope's `error` object.
 * @typedef {{message?: string, code?: string | null, type?: string | null, param?: string | null}} ErrorFields
 */

/**
 * The `error` member of an envelope, as an object.
 * @param {any} body
 * @returns {ErrorFields}
 */
function envelope(body) {
  const error = body !== null && typeof body === 'object' ? body.error : undefined;
  if (typeof error === 'string') return { message: error };
  if (error !== null && typeof error === 'object') return error;
  return {};
}

/**
 * @param {string} name
 * @param {any} data
 * @param {number} image
 * @returns {ImageEvent}
 */
function toImageEvent(name, data, image) {
  // The object's `type` is authoritative (the SDKs dispatch on it); `event:` may be absent.
  const kind = (data && typeof data.type === 'string' && data.type) || name;
  if (kind === 'image_generation.partial_image' || kind === 'image_edit.partial_image') {
    return { type: 'partial', image, index: data.partial_image_index ?? 0, data };
  }
  if (kind === 'image_generation.completed' || kind === 'image_edit.completed') return { type: 'completed', image, data };
  return { type: 'other', name: kind, image, data };
}

/**
 * A job's path under the API root.
 * @param {string} id
 * @returns {string}
 */
function jobPath(id) {
  if (typeof id !== 'string' || !id) throw new TypeError('A job id is a non-empty string.');
  return `images/jobs/${encodeURIComponent(id)}`;
}

/**
 * True for a job object (what a 202 to `Prefer: respond-async` carries).
 * @param {any} body
 * @returns {body is Job}
 */
function isJob(body) {
  return body !== null && typeof body === 'object' && body.object === 'image.job' && typeof body.id === 'string' && typeof body.status === 'string';
}

/**
 * The error a failed job stands for, from its `error` (an envelope's `error` object).
 * @param {Job} job
 * @returns {PixelgateError}
 */
function jobError(job) {
  const error = envelope({ error: job.error });
  return new PixelgateError(error.message || `The job ${job.id} failed.`, {
    status: typeof job.error_status === 'number' ? job.error_status : null,
    code: error.code ?? null,
    type: error.type ?? null,
    param: error.param ?? null,
    job,
  });
}

/**
 * Throw the signal's reason if it has aborted.
 * @param {AbortSignal | undefined} signal
 */
function throwIfAborted(signal) {
  if (signal?.aborted) throw abortReason(signal);
}

/**
 * @param {AbortSignal} signal
 * @returns {unknown}
 */
function abortReason(signal) {
  return signal.reason ?? new DOMException('The operation was aborted.', 'AbortError');
}

/**
 * Wait `ms`, or until `signal` aborts (then reject with its reason).
 * @param {number} ms
 * @param {AbortSignal | undefined} signal
 * @returns {Promise<void>}
 */
function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(abortReason(signal));
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(abortReason(/** @type {AbortSignal} */ (signal)));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * @param {unknown} err
 * @returns {string}
 */
function errorText(err) {
  return err instanceof Error ? err.message : String(err);
}
