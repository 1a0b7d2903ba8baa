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
 * the stream reports, and for network failures); `code` is the envelope's
 * code, or one of this client's: `network_error`, `stream_truncated`,
 * `stream_incomplete`, `invalid_event`, `invalid_response`.
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
   * @param {unknown} [info.cause]
   */
  constructor(message, { status = null, code = null, type = null, param = null, requestId = null, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'PixelgateError';
    this.status = status;
    this.code = code;
    this.type = type;
    this.param = param;
    this.requestId = requestId;
  }
}

/**
 * An event's JSON object, as the server sent it (OpenAI's fields).
 * @typedef {object} ImageData
 * @property {string} [type]           "image_generation.partial_image" or "image_generation.completed";
 *   "image_edit.partial_image" or "image_edit.completed" for edits.
 * @property {string} [b64_json]       The image, base64-encoded.
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
    body: editForm(images, mask, { ...body, stream: true }),
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
 * A `data:` URL for an event's or a response item's image, for `<img src>`.
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
 * @returns {FormData}
 */
function editForm(images, mask, fields) {
  const files = images instanceof Blob ? [images] : images != null && typeof images === 'object' && Symbol.iterator in images ? [...images] : null;
  if (!files || files.length === 0) throw new TypeError('editImages needs `images`: at least one File or Blob.');
  for (const [i, file] of files.entries()) {
    if (!(file instanceof Blob)) throw new TypeError(`editImages: images[${i}] is not a File or Blob.`);
  }
  if (mask != null && !(mask instanceof Blob)) throw new TypeError('editImages: `mask` is not a Blob.');
  const form = new FormData();
  for (const [name, value] of Object.entries(fields)) {
    if (value === null || value === undefined) continue;
    if (typeof value === 'object') throw new TypeError(`editImages: \`${name}\` is an object; a form field takes text, a number or a boolean.`);
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
 * @param {CallOptions & {method: string, accept: string, body?: string | FormData}} options
 *   A string body is JSON; a FormData one gets fetch's multipart Content-Type, with its boundary.
 * @returns {Promise<Response>}
 */
async function request(path, { baseUrl = '/v1', apiKey, signal, fetch: fetchImpl = globalThis.fetch, method, accept, body }) {
  const url = `${String(baseUrl).replace(/\/+$/, '')}/${path}`;
  /** @type {Record<string, string>} */
  const headers = { Accept: accept };
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
 * @param {unknown} err
 * @returns {string}
 */
function errorText(err) {
  return err instanceof Error ? err.message : String(err);
}
