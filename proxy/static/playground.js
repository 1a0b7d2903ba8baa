/**
 * The playground page: one form that streams images through this gateway
 * with the browser client in pixelgate.js, in two modes: Generate
 * (`streamImages`) and Edit (`editImages`: input images, picked or dropped,
 * and an optional mask painted over the first one). Two options change how:
 * "Return URLs" asks for `response_format: "url"` (not streamed: the gateway
 * stores the images and answers their signed URLs), and "Run as job" submits
 * the request as an async job (`submitJob`), shows its id and status as
 * `waitForJob` polls it, and shows its result; Cancel then cancels the job.
 *
 * All state lives in the one `Playground` instance, the API key included:
 * it is read from its field when a request starts and is never stored or
 * put in a URL. Input images stay in page memory as object URLs.
 *
 * @module playground
 */

import {
  PixelgateError, cancelJob, editImages, editImagesOnce, generateImages, imageSrc, listModels, streamImages, submitJob, waitForJob,
} from './pixelgate.js';

/** The most input images an edit takes (OpenAI's limit, the gateway's too). */
const MAX_INPUTS = 16;
/** The input formats edits take. */
const INPUT_TYPES = new Set(['image/png', 'image/jpeg', 'image/webp']);
/** The brush's colour on screen; only its alpha matters for the mask. */
const BRUSH_COLOR = '#ff3d7f';

/**
 * Create an element with properties and children.
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag
 * @param {Partial<HTMLElementTagNameMap[K]> & {dataset?: Record<string, string>}} [props]
 * @param {...(Node | string)} children
 * @returns {HTMLElementTagNameMap[K]}
 */
function el(tag, props = {}, ...children) {
  const { dataset, ...rest } = props;
  const node = Object.assign(document.createElement(tag), rest);
  if (dataset) Object.assign(node.dataset, dataset);
  node.append(...children);
  return node;
}

/**
 * @param {number} ms
 * @returns {string}
 */
function seconds(ms) {
  return `${(ms / 1000).toFixed(2)} s`;
}

/**
 * Width and height from "WxH"; `null` for "auto" or anything else.
 * @param {string | undefined} size
 * @returns {[number, number] | null}
 */
function dimensions(size) {
  const match = /^(\d+)x(\d+)$/.exec(size ?? '');
  return match ? [Number(match[1]), Number(match[2])] : null;
}

/**
 * @param {number} count
 * @param {string} noun  Singular.
 * @returns {string}
 */
function plural(count, noun) {
  return `${count} ${noun}${count === 1 ? '' : 's'}`;
}

/**
 * One image's place on the page: each partial replaces the previous one in
 * it, then the final image replaces the last partial.
 */
class Slot {
  /**
   * @param {number} index  0-based.
   * @param {number} count  Images requested.
   * @param {string} size   The requested size ("auto" or "WxH").
   * @param {string} prompt
   * @param {(file: File) => void} reuse  Takes the final image as an edit's input.
   */
  constructor(index, count, size, prompt, reuse) {
    this.name = count > 1 ? `Image ${index + 1} of ${count}` : 'Image';
    this.prompt = prompt.length > 120 ? `${prompt.slice(0, 117)}…` : prompt;
    this.img = el('img', { alt: '', decoding: 'async', hidden: true });
    this.badge = el('span', { className: 'badge' });
    this.frame = el('div', { className: 'frame' }, this.img, this.badge);
    this.caption = el('span', {}, `${this.name}: waiting…`);
    this.reuse = el('button', { type: 'button', className: 'reuse', hidden: true }, 'Use as input');
    this.reuse.addEventListener('click', () => void this.#reuse(reuse));
    this.link = el('a', { className: 'download', hidden: true, download: `pixelgate-${index + 1}.png` }, 'Download');
    this.item = el('li', { className: 'slot', dataset: { state: 'waiting' } },
      el('figure', {}, this.frame, el('figcaption', {}, this.caption, this.reuse, this.link)));
    this.#resize(size);
  }

  /**
   * @param {import('./pixelgate.js').PartialEvent} event
   * @param {number} expected  Partial images requested.
   * @param {number} ms  Since the request started.
   */
  partial(event, expected, ms) {
    const label = `partial ${event.index + 1} of ${Math.max(expected, event.index + 1)}`;
    this.#show(event.data, 'partial', `${this.name} for “${this.prompt}”, ${label}`);
    this.img.dataset.partialIndex = String(event.index);
    this.badge.textContent = `partial ${event.index + 1}`;
    this.caption.textContent = `${this.name}: ${label} · ${seconds(ms)}`;
  }

  /**
   * @param {import('./pixelgate.js').ImageData} data
   * @param {number} ms
   */
  final(data, ms) {
    this.#show(data, 'final', `${this.name} for “${this.prompt}”`);
    delete this.img.dataset.partialIndex;
    this.badge.textContent = data.url ? 'URL' : '';
    const tokens = data.usage && typeof data.usage === 'object' && 'total_tokens' in data.usage ? ` · ${data.usage.total_tokens} tokens` : '';
    this.caption.textContent = `${this.name}: final · ${seconds(ms)}${tokens}`;
    this.link.href = this.img.src;
    this.link.download = this.link.download.replace(/\.\w+$/, `.${data.output_format || 'png'}`);
    this.link.hidden = false;
    this.reuse.hidden = false;
  }

  /**
   * End a slot whose image will not be finished: it keeps its last partial
   * image, marked as such; a slot that never showed one is removed.
   * @param {'cancelled' | 'failed'} state
   */
  stop(state) {
    if (this.item.dataset.state === 'final') return;
    if (!this.item.dataset.shown) {
      this.item.remove();
      return;
    }
    this.item.dataset.state = state;
    const word = state === 'cancelled' ? 'Cancelled' : 'Failed';
    this.caption.textContent = `${this.name}: ${word} (last ${this.badge.textContent} shown)`;
  }

  /**
   * @param {import('./pixelgate.js').ImageData} data
   * @param {'partial' | 'final'} state
   * @param {string} alt
   */
  #show(data, state, alt) {
    this.#resize(data.size);
    this.img.src = imageSrc(data);
    this.img.alt = alt;
    this.img.dataset.state = state;
    this.img.hidden = false;
    this.item.dataset.state = state;
    this.item.dataset.shown = 'true';
  }

  /** @param {string | undefined} size */
  #resize(size) {
    const dims = dimensions(size);
    if (dims) this.frame.style.aspectRatio = `${dims[0]} / ${dims[1]}`;
  }

  /**
   * The final image as a file, for the next edit.
   * @param {(file: File) => void} reuse
   */
  async #reuse(reuse) {
    const blob = await (await fetch(this.img.src)).blob();
    reuse(new File([blob], this.link.download, { type: blob.type }));
  }
}

/**
 * One input image of an edit: the file as picked (sent byte for byte), its
 * object URL for the thumbnails, and its dimensions once decoded.
 */
class InputImage {
  /** @param {File} file */
  constructor(file) {
    this.file = file;
    this.url = URL.createObjectURL(file);
    this.img = el('img', { src: this.url, alt: '', decoding: 'async' });
    /** @type {[number, number] | null} Null until decoded, and if the browser cannot decode it. */
    this.dims = null;
    /** Resolves when the dimensions are known (or known to be unknowable). */
    this.ready = this.img.decode().then(
      () => {
        this.dims = [this.img.naturalWidth, this.img.naturalHeight];
        this.img.alt = `${file.name}, ${this.dims[0]} × ${this.dims[1]}`;
      },
      () => {
        this.img.alt = `${file.name} (this browser cannot show it)`;
      },
    );
  }

  release() {
    URL.revokeObjectURL(this.url);
  }
}

/** The edit's input images, as thumbnails with a remove button each. */
class InputList {
  /** @type {InputImage[]} */
  #items = [];

  /**
   * @param {HTMLOListElement} list
   * @param {() => void} changed  Called after every change.
   */
  constructor(list, changed) {
    this.list = list;
    this.changed = changed;
  }

  /** @returns {File[]} In order: the first is the one the mask is for. */
  get files() {
    return this.#items.map((item) => item.file);
  }

  /** @returns {InputImage | null} */
  get first() {
    return this.#items[0] ?? null;
  }

  /**
   * Add image files after the ones there; anything else, and anything past
   * the 16th, is left out.
   * @param {Iterable<File>} files
   * @returns {{added: number, notImages: number, overLimit: number}}
   */
  add(files) {
    let added = 0;
    let notImages = 0;
    let overLimit = 0;
    for (const file of files) {
      if (!INPUT_TYPES.has(file.type)) notImages += 1;
      else if (this.#items.length >= MAX_INPUTS) overLimit += 1;
      else {
        this.#items.push(new InputImage(file));
        added += 1;
      }
    }
    if (added) this.#render();
    return { added, notImages, overLimit };
  }

  /** @param {number} index */
  remove(index) {
    const [item] = this.#items.splice(index, 1);
    item?.release();
    this.#render();
    // Keep keyboard focus in the list: on the next remove button, or the one before.
    const buttons = this.list.querySelectorAll('button');
    /** @type {HTMLElement | null} */ (buttons[Math.min(index, buttons.length - 1)] ?? null)?.focus();
  }

  #render() {
    this.list.replaceChildren(...this.#items.map((item, i) => {
      const remove = el('button', { type: 'button', className: 'remove', title: 'Remove' }, '×');
      remove.setAttribute('aria-label', `Remove image ${i + 1} (${item.file.name})`);
      remove.addEventListener('click', () => this.remove(i));
      const children = [item.img, remove];
      if (i === 0) children.push(el('span', { className: 'first' }, '1st'));
      return el('li', { title: item.file.name }, ...children);
    }));
    this.changed();
  }
}

/**
 * A brush over the first input image. The canvas has the image's own
 * width and height, so the strokes are in image pixels whatever the page's
 * zoom; `maskBlob()` turns them into the edit's mask: a PNG of that size,
 * opaque where nothing was painted and transparent where the brush went.
 */
class MaskPainter {
  /** @type {InputImage | null} The image to paint on, once it is decoded. */
  #wanted = null;
  /** @type {InputImage | null} The image the strokes are for: shown and decoded. */
  #image = null;
  /** @type {{x: number, y: number} | null} The stroke's last point, while the pointer is down. */
  #last = null;
  #painted = false;

  /**
   * @param {object} parts
   * @param {HTMLElement} parts.field  Shown when there is an image to paint on.
   * @param {HTMLElement} parts.stage
   * @param {HTMLImageElement} parts.img
   * @param {HTMLCanvasElement} parts.canvas
   * @param {HTMLInputElement} parts.brush  Its value: the brush's width in CSS pixels.
   * @param {HTMLButtonElement} parts.clear
   */
  constructor({ field, stage, img, canvas, brush, clear }) {
    this.field = field;
    this.stage = stage;
    this.img = img;
    this.canvas = canvas;
    this.brush = brush;
    this.clear = clear;
    const ctx = canvas.getContext('2d');
    if (!ctx) throw new Error('This browser has no 2D canvas.');
    this.ctx = ctx;
    canvas.addEventListener('pointerdown', (event) => {
      if (event.button !== 0 || !this.#image) return;
      event.preventDefault();
      canvas.setPointerCapture(event.pointerId);
      this.#last = this.#point(event);
      this.#dot(this.#last);
    });
    canvas.addEventListener('pointermove', (event) => {
      if (!this.#last) return;
      for (const e of event.getCoalescedEvents?.() ?? [event]) {
        const point = this.#point(e);
        this.#line(this.#last, point);
        this.#last = point;
      }
    });
    const end = () => {
      this.#last = null;
    };
    canvas.addEventListener('pointerup', end);
    canvas.addEventListener('pointercancel', end);
    clear.addEventListener('click', () => this.#reset());
  }

  /** True when a mask will be sent. */
  get painted() {
    return this.#painted;
  }

  /**
   * Paint over `image` (the first input) from now on; strokes made for
   * another image are dropped, since a mask has its image's dimensions.
   * @param {InputImage | null} image
   */
  async show(image) {
    if (image === this.#wanted) return;
    this.#wanted = image;
    this.#image = null;
    this.#reset();
    this.field.hidden = true;
    if (!image) return;
    await image.ready;
    // Another image may have become the first while this one decoded.
    if (this.#wanted !== image || !image.dims) return;
    this.#image = image;
    const [width, height] = image.dims;
    this.img.src = image.url;
    this.canvas.width = width;
    this.canvas.height = height;
    this.stage.style.setProperty('--ratio', String(width / height));
    this.field.hidden = false;
  }

  /** @returns {Promise<Blob | null>} The mask PNG, or null when nothing is painted. */
  async maskBlob() {
    if (!this.#painted) return null;
    const { width, height } = this.canvas;
    const mask = el('canvas', { width, height });
    const ctx = mask.getContext('2d');
    if (!ctx) throw new Error('This browser has no 2D canvas.');
    ctx.fillStyle = '#000';
    ctx.fillRect(0, 0, width, height);
    // Wherever the brush went, the mask becomes transparent: that is where to edit.
    ctx.globalCompositeOperation = 'destination-out';
    ctx.drawImage(this.canvas, 0, 0);
    return new Promise((resolve, reject) => {
      mask.toBlob((blob) => (blob ? resolve(blob) : reject(new Error('The mask could not be encoded as PNG.'))), 'image/png');
    });
  }

  /**
   * A pointer event's position in image pixels.
   * @param {PointerEvent} event
   * @returns {{x: number, y: number}}
   */
  #point(event) {
    const box = this.canvas.getBoundingClientRect();
    return {
      x: ((event.clientX - box.left) / box.width) * this.canvas.width,
      y: ((event.clientY - box.top) / box.height) * this.canvas.height,
    };
  }

  /** The brush width in image pixels: the slider's CSS pixels, scaled. */
  #width() {
    const box = this.canvas.getBoundingClientRect();
    return Number(this.brush.value) * (box.width ? this.canvas.width / box.width : 1);
  }

  /** @param {{x: number, y: number}} at */
  #dot(at) {
    const { ctx } = this;
    ctx.fillStyle = BRUSH_COLOR;
    ctx.beginPath();
    ctx.arc(at.x, at.y, this.#width() / 2, 0, 2 * Math.PI);
    ctx.fill();
    this.#mark();
  }

  /**
   * @param {{x: number, y: number}} from
   * @param {{x: number, y: number}} to
   */
  #line(from, to) {
    const { ctx } = this;
    ctx.strokeStyle = BRUSH_COLOR;
    ctx.lineWidth = this.#width();
    ctx.lineCap = 'round';
    ctx.lineJoin = 'round';
    ctx.beginPath();
    ctx.moveTo(from.x, from.y);
    ctx.lineTo(to.x, to.y);
    ctx.stroke();
    this.#mark();
  }

  #mark() {
    this.#painted = true;
    this.clear.disabled = false;
    this.canvas.dataset.painted = 'true';
  }

  #reset() {
    this.ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    this.#painted = false;
    this.#last = null;
    this.clear.disabled = true;
    delete this.canvas.dataset.painted;
  }
}

/**
 * An ImagesResponse (a non-streamed answer, or a job's result) as completed events, one per image.
 * @param {{data?: import('./pixelgate.js').ImageData[], [key: string]: any}} response
 * @returns {import('./pixelgate.js').CompletedEvent[]}
 */
function completedEvents({ data = [], ...meta }) {
  return data.map((item, image) => ({ type: 'completed', image, data: { ...meta, ...item } }));
}

/** How the job states read on the page. */
const JOB_WORDS = { queued: 'queued', in_progress: 'in progress', completed: 'completed', failed: 'failed', cancelled: 'cancelled' };

/** The page controller: form, mode, model list, one run at a time. */
class Playground {
  /** @type {AbortController | null} The running request's; null when idle. */
  #running = null;
  /** @type {import('./pixelgate.js').Job | null} The running job, once submitted; null otherwise. */
  #job = null;

  /**
   * @param {Document} doc
   * @param {string} baseUrl  The API root, e.g. "http://host:8080/v1".
   */
  constructor(doc, baseUrl) {
    /** @param {string} id */
    const $ = (id) => /** @type {any} */ (doc.getElementById(id));
    this.baseUrl = baseUrl;
    /** @type {HTMLFormElement} */ this.form = $('form');
    /** @type {HTMLTextAreaElement} */ this.prompt = $('prompt');
    /** @type {HTMLSelectElement} */ this.model = $('model');
    /** @type {HTMLSelectElement} */ this.size = $('size');
    /** @type {HTMLSelectElement} */ this.quality = $('quality');
    /** @type {HTMLInputElement} */ this.n = $('n');
    /** @type {HTMLSelectElement} */ this.partials = $('partial-images');
    /** @type {HTMLInputElement} */ this.apiKey = $('api-key');
    /** @type {HTMLInputElement} */ this.returnUrls = $('return-urls');
    /** @type {HTMLInputElement} */ this.asJob = $('as-job');
    /** @type {HTMLElement} */ this.jobBox = $('job');
    /** @type {HTMLElement} */ this.jobId = $('job-id');
    /** @type {HTMLElement} */ this.jobStatus = $('job-status');
    /** @type {HTMLButtonElement} */ this.submitButton = $('generate');
    /** @type {HTMLButtonElement} */ this.cancelButton = $('cancel');
    /** @type {HTMLElement} */ this.promptVerb = $('prompt-verb');
    /** @type {HTMLElement} */ this.editFields = $('edit-fields');
    /** @type {HTMLInputElement} */ this.fileInput = $('edit-files');
    /** @type {HTMLElement} */ this.dropzone = $('dropzone');
    /** @type {HTMLElement} */ this.status = $('status');
    /** @type {HTMLElement} */ this.error = $('error');
    /** @type {HTMLElement} */ this.firstPartial = $('t-partial');
    /** @type {HTMLElement} */ this.finalLabel = $('t-final-label');
    /** @type {HTMLElement} */ this.finalTime = $('t-final');
    /** @type {HTMLOListElement} */ this.images = $('images');
    /** @type {'generate' | 'edit'} */
    this.mode = 'generate';
    this.mask = new MaskPainter({
      field: $('mask-field'), stage: $('mask-stage'), img: $('mask-image'), canvas: $('mask-canvas'), brush: $('brush'), clear: $('clear-mask'),
    });
    this.inputs = new InputList($('inputs'), () => void this.mask.show(this.inputs.first));

    this.form.addEventListener('submit', (event) => {
      event.preventDefault();
      void (this.mode === 'edit' ? this.edit() : this.generate());
    });
    for (const radio of this.form.querySelectorAll('input[name="mode"]')) {
      radio.addEventListener('change', () => this.#setMode(/** @type {HTMLInputElement} */ (radio).value === 'edit' ? 'edit' : 'generate'));
    }
    this.fileInput.addEventListener('change', () => {
      this.#addInputs([...(this.fileInput.files ?? [])]);
      this.fileInput.value = ''; // picking the same file again is a change too
    });
    // Images dropped or pasted anywhere on the page become inputs (and never navigate away from it).
    doc.addEventListener('dragover', (event) => {
      if (!event.dataTransfer?.types.includes('Files')) return;
      event.preventDefault();
      event.dataTransfer.dropEffect = 'copy';
      this.dropzone.classList.add('dragging');
    });
    doc.addEventListener('dragleave', (event) => {
      if (!event.relatedTarget) this.dropzone.classList.remove('dragging');
    });
    doc.addEventListener('drop', (event) => {
      if (!event.dataTransfer?.types.includes('Files')) return;
      event.preventDefault();
      this.dropzone.classList.remove('dragging');
      this.#addInputs([...event.dataTransfer.files]);
    });
    doc.addEventListener('paste', (event) => {
      const files = [...(event.clipboardData?.files ?? [])];
      if (files.length === 0) return;
      event.preventDefault();
      this.#addInputs(files);
    });
    this.cancelButton.addEventListener('click', () => this.cancel());
    this.prompt.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        this.form.requestSubmit();
      }
    });
    doc.addEventListener('keydown', (event) => {
      if (event.key === 'Escape' && this.#running) this.cancel();
    });
    // The model list may need the key (once the gateway checks keys).
    this.apiKey.addEventListener('change', () => void this.loadModels());
    // URLs come in one response, without partial images; a job's partial images are counted as its progress.
    const unstreamed = () => {
      this.partials.disabled = this.returnUrls.checked && !this.asJob.checked;
    };
    this.returnUrls.addEventListener('change', unstreamed);
    this.asJob.addEventListener('change', unstreamed);
    unstreamed();
  }

  /** Fill the model picker from GET /v1/models, keeping the current choice. */
  async loadModels() {
    const previous = this.model.value;
    try {
      const ids = await listModels({ baseUrl: this.baseUrl, apiKey: this.apiKey.value });
      const options = ids.length ? ids.map((id) => el('option', { value: id }, id)) : [el('option', { value: '' }, '(server default)')];
      this.model.replaceChildren(...options);
      if (ids.includes(previous)) this.model.value = previous;
      if (!this.#running) this.#clearError();
    } catch (err) {
      this.model.replaceChildren(el('option', { value: '' }, '(server default)'));
      this.#showError(err, 'Could not load the model list');
    }
  }

  /** Start a generation with the form's values: streamed, as one response (URLs) or as a job. */
  async generate() {
    const request = this.#request();
    if (!request) return;
    const { body } = request;
    const what = body.n > 1 ? `${body.n} images` : 'an image';
    const call = { baseUrl: this.baseUrl, apiKey: this.apiKey.value };
    if (this.asJob.checked) {
      await this.#runJob(request, `Submitting a job for ${what}…`, (signal) => submitJob({ ...call, body, signal }));
    } else if (this.returnUrls.checked) {
      await this.#run(request, `Generating ${what}…`, async function* (signal) {
        yield* completedEvents(await generateImages({ ...call, body: Playground.#unstreamed(body), signal }));
      });
    } else {
      await this.#run(request, `Generating ${what}…`, (signal) => streamImages({ ...call, body, signal }));
    }
  }

  /** Start a streamed edit of the input images, with the mask if one is painted. */
  async edit() {
    if (this.#running) return;
    const files = this.inputs.files;
    if (files.length === 0) {
      this.#showError(new Error('Add an image to edit first: drop one, paste one or choose files.'));
      this.fileInput.focus();
      return;
    }
    const request = this.#request();
    if (!request) return;
    const { body } = request;
    const masked = this.mask.painted;
    const what = `${files.length > 1 ? plural(files.length, 'image') : 'the image'}${masked ? ' with a mask' : ''}`;
    const into = body.n > 1 ? ` into ${body.n} images` : '';
    const mask = this.mask;
    const options = { baseUrl: this.baseUrl, apiKey: this.apiKey.value, images: files, body };
    if (this.asJob.checked) {
      await this.#runJob(request, `Submitting a job to edit ${what}${into}…`, async (signal) =>
        submitJob({ ...options, operation: 'edit', body, mask: masked ? await mask.maskBlob() : null, signal }));
    } else if (this.returnUrls.checked) {
      const whole = Playground.#unstreamed(body);
      await this.#run(request, `Editing ${what}${into}…`, async function* (signal) {
        yield* completedEvents(await editImagesOnce({ ...options, body: whole, mask: masked ? await mask.maskBlob() : null, signal }));
      });
    } else {
      await this.#run(request, `Editing ${what}${into}…`, async function* (signal) {
        yield* editImages({ ...options, mask: masked ? await mask.maskBlob() : null, signal });
      });
    }
  }

  /**
   * A body for a request that is not streamed (one response): no partial images.
   * @template {{partial_images?: number}} T
   * @param {T} body
   * @returns {Omit<T, 'partial_images'>}
   */
  static #unstreamed({ partial_images: _partials, ...body }) {
    return body;
  }

  /**
   * The fields both modes send, from the form; null (with the reason shown) when the prompt is empty.
   * @returns {{prompt: string, size: string, partials: number, body: {prompt: string, n: number, size: string, quality: string, partial_images: number, model?: string}} | null}
   */
  #request() {
    if (this.#running) return null;
    const prompt = this.prompt.value.trim();
    if (!prompt) {
      this.#showError(new Error('Enter a prompt first.'));
      this.prompt.focus();
      return null;
    }
    const n = Math.min(10, Math.max(1, Math.round(Number(this.n.value)) || 1));
    const partials = Number(this.partials.value);
    const size = this.size.value;
    /** @type {{prompt: string, n: number, size: string, quality: string, partial_images: number, model?: string, response_format?: string}} */
    const body = { prompt, n, size, quality: this.quality.value, partial_images: partials };
    if (this.model.value) body.model = this.model.value;
    if (this.returnUrls.checked) body.response_format = 'url';
    return { prompt, size, partials, body };
  }

  /**
   * Run one streamed request: a slot per image, partials sharpening in them, timings, cancel.
   * @param {{prompt: string, size: string, partials: number, body: {n: number}}} request
   * @param {string} starting  The status while it runs.
   * @param {(signal: AbortSignal) => AsyncIterable<import('./pixelgate.js').ImageEvent>} stream
   */
  async #run({ prompt, size, partials, body: { n } }, starting, stream) {
    if (this.#running) return;
    const abort = new AbortController();
    const { slots, slotFor } = this.#start(abort, n, size, prompt);
    this.#hideJob();
    this.#say(starting);

    const started = performance.now();
    let firstPartial = false;
    let done = 0;
    try {
      for await (const event of stream(abort.signal)) {
        const ms = performance.now() - started;
        if (event.type === 'other') continue;
        const slot = slotFor(event.image);
        if (event.type === 'partial') {
          slot.partial(event, partials, ms);
          if (!firstPartial) {
            firstPartial = true;
            this.firstPartial.textContent = seconds(ms);
          }
          this.#say(`${slot.name}: partial ${event.index + 1} received after ${seconds(ms)}.`);
        } else {
          done += 1;
          slot.final(event.data, ms);
          this.finalTime.textContent = seconds(ms);
          this.#say(`${slot.name}: final image received after ${seconds(ms)}.`);
        }
      }
      const total = seconds(performance.now() - started);
      this.#say(`Done: ${done > 1 ? `${done} images` : 'the image'} in ${total}.`);
    } catch (err) {
      if (abort.signal.aborted) {
        for (const slot of slots) slot.stop('cancelled');
        this.#say('Cancelled.');
      } else {
        for (const slot of slots) slot.stop('failed');
        this.#showError(err);
        this.#say('Failed.');
      }
    } finally {
      this.#setRunning(null);
    }
  }

  /**
   * Start a run: the running state, cleared results, a slot per image.
   * @param {AbortController} abort
   * @param {number} n
   * @param {string} size
   * @param {string} prompt
   */
  #start(abort, n, size, prompt) {
    this.#setRunning(abort);
    this.#clearError();
    this.firstPartial.textContent = '–';
    this.finalTime.textContent = '–';
    this.finalLabel.textContent = n > 1 ? `All ${n} images` : 'Final image';
    /** @param {File} file */
    const reuse = (file) => this.#reuse(file);
    const slots = Array.from({ length: n }, (_, i) => new Slot(i, n, size, prompt, reuse));
    this.images.replaceChildren(...slots.map((slot) => slot.item));
    /**
     * The slot of an image; a server may send more images than asked for: they get slots too.
     * @param {number} image
     */
    const slotFor = (image) => {
      while (image >= slots.length) {
        slots.push(new Slot(slots.length, slots.length + 1, size, prompt, reuse));
        this.images.append(slots[slots.length - 1].item);
      }
      return slots[image];
    };
    return { slots, slotFor };
  }

  /**
   * Run one job: submit it, show its id and status as it is polled, then its images.
   * @param {{prompt: string, size: string, body: {n: number}}} request
   * @param {string} starting  The status while it is submitted.
   * @param {(signal: AbortSignal) => Promise<import('./pixelgate.js').Job>} submit
   */
  async #runJob({ prompt, size, body: { n } }, starting, submit) {
    if (this.#running) return;
    const abort = new AbortController();
    const { slots, slotFor } = this.#start(abort, n, size, prompt);
    this.#hideJob();
    this.#say(starting);
    const started = performance.now();
    try {
      this.#showJob(await submit(abort.signal));
      const id = /** @type {import('./pixelgate.js').Job} */ (this.#job).id;
      const job = await waitForJob(id, {
        baseUrl: this.baseUrl,
        apiKey: this.apiKey.value,
        signal: abort.signal,
        interval: 250,
        maxInterval: 2000,
        cancelOnAbort: true,
        onUpdate: (update) => this.#showJob(update),
      });
      const ms = performance.now() - started;
      if (job.status === 'cancelled') {
        for (const slot of slots) slot.stop('cancelled');
        this.#say('Cancelled.');
        return;
      }
      if (!job.result) {
        // Completed, but read after its result expired.
        throw new PixelgateError(job.error?.message || `The job ${job.id} has no result.`, { code: job.error?.code ?? null, job });
      }
      const events = completedEvents(job.result);
      for (const event of events) slotFor(event.image).final(event.data, ms);
      for (const slot of slots) slot.stop('failed');
      this.finalTime.textContent = seconds(ms);
      this.#say(`Done: ${events.length > 1 ? `${events.length} images` : 'the image'} in ${seconds(ms)} (job ${job.id}).`);
    } catch (err) {
      if (abort.signal.aborted) {
        for (const slot of slots) slot.stop('cancelled');
        this.#say('Cancelled.');
      } else {
        for (const slot of slots) slot.stop('failed');
        this.#showError(err);
        this.#say('Failed.');
      }
    } finally {
      this.#job = null;
      this.#setRunning(null);
    }
  }

  /**
   * Show a job's id and state as it was just read.
   * @param {import('./pixelgate.js').Job} job
   */
  #showJob(job) {
    this.#job = job;
    this.jobBox.hidden = false;
    this.jobId.textContent = job.id;
    const word = JOB_WORDS[job.status] ?? job.status;
    const running = job.status === 'queued' || job.status === 'in_progress';
    const cancelling = Boolean(job.cancel_requested) && running;
    this.jobStatus.textContent = cancelling ? `${word}, cancelling…` : word;
    this.jobStatus.dataset.status = job.status;
    // Progress: the partial images the provider has sent so far (the job keeps only the count).
    const progress = job.status === 'in_progress' && job.partial_images ? `, ${plural(job.partial_images, 'partial image')} so far` : '';
    if (running) this.#say(cancelling ? `Job ${job.id}: cancelling…` : `Job ${job.id}: ${word}${progress}…`);
  }

  #hideJob() {
    this.jobBox.hidden = true;
    this.jobId.textContent = '';
    this.jobStatus.textContent = '';
    delete this.jobStatus.dataset.status;
  }

  /**
   * Cancel the run. A streamed request is aborted: the browser closes the
   * connection, the gateway its upstream request. A submitted job is
   * cancelled at the gateway (`DELETE`), and polled on until it says
   * `cancelled` (or finished first); a job still being submitted is aborted.
   */
  cancel() {
    const job = this.#job;
    if (!this.#running) return;
    if (!job) {
      this.#running.abort();
      return;
    }
    this.#say(`Job ${job.id}: cancelling…`);
    cancelJob(job.id, { baseUrl: this.baseUrl, apiKey: this.apiKey.value }).then(
      (update) => {
        if (this.#job?.id === update.id) this.#showJob(update);
      },
      (err) => {
        if (this.#job?.id === job.id) this.#showError(err, 'Could not cancel the job');
      },
    );
  }

  /** @param {'generate' | 'edit'} mode */
  #setMode(mode) {
    this.mode = mode;
    this.form.dataset.mode = mode;
    this.editFields.hidden = mode !== 'edit';
    this.submitButton.textContent = mode === 'edit' ? 'Edit' : 'Generate';
    this.promptVerb.textContent = mode === 'edit' ? 'edits' : 'generates';
    /** @type {HTMLInputElement} */ (this.form.querySelector(`#mode-${mode}`)).checked = true;
  }

  /**
   * Add files as the edit's input images, in Edit mode, and say what was left out.
   * @param {File[]} files
   */
  #addInputs(files) {
    if (files.length === 0) return;
    this.#setMode('edit');
    const { added, notImages, overLimit } = this.inputs.add(files);
    const left = [];
    if (notImages) left.push(`${plural(notImages, 'file')} that ${notImages === 1 ? 'is' : 'are'} not PNG, JPEG or WebP`);
    if (overLimit) left.push(`${plural(overLimit, 'image')} over the limit of ${MAX_INPUTS}`);
    if (!this.#running) this.#say(`${plural(added, 'input image')} added${left.length ? `; left out: ${left.join(' and ')}` : ''}.`);
  }

  /**
   * A final image, taken as the next edit's input.
   * @param {File} file
   */
  #reuse(file) {
    this.#addInputs([file]);
    this.prompt.focus();
  }

  /** @param {AbortController | null} abort */
  #setRunning(abort) {
    const focusWasOn = this.form.ownerDocument.activeElement;
    this.#running = abort;
    this.submitButton.disabled = abort !== null;
    this.cancelButton.disabled = abort === null;
    // Keep keyboard focus on a usable button as they swap.
    if (abort && focusWasOn === this.submitButton) this.cancelButton.focus();
    if (!abort && focusWasOn === this.cancelButton) this.submitButton.focus();
  }

  /** @param {string} text */
  #say(text) {
    this.status.textContent = text;
  }

  /**
   * Show an error as a readable message, with its status, code and request id.
   * @param {unknown} err
   * @param {string} [context]
   */
  #showError(err, context) {
    const message = err instanceof Error ? err.message : String(err);
    const details = [];
    if (err instanceof PixelgateError) {
      if (err.status) details.push(`HTTP ${err.status}`);
      if (err.code) details.push(err.code);
      if (err.requestId) details.push(`request ${err.requestId}`);
    }
    this.error.replaceChildren(
      el('strong', {}, context ? `${context}: ` : 'Error: '),
      el('span', { className: 'message' }, message),
      ...(details.length ? [el('span', { className: 'details' }, details.join(' · '))] : []),
    );
  }

  #clearError() {
    this.error.replaceChildren();
  }
}

const playground = new Playground(document, new URL('v1', document.baseURI).href);
void playground.loadModels();
