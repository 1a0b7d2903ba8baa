/**
 * The playground page: one form that streams images through this gateway
 * with the browser client in pixelgate.js.
 *
 * All state lives in the one `Playground` instance, the API key included:
 * it is read from its field when a request starts and is never stored or
 * put in a URL.
 *
 * @module playground
 */

import { PixelgateError, imageDataUrl, listModels, streamImages } from './pixelgate.js';

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
 * One image's place on the page: each partial replaces the previous one in
 * it, then the final image replaces the last partial.
 */
class Slot {
  /**
   * @param {number} index  0-based.
   * @param {number} count  Images requested.
   * @param {string} size   The requested size ("auto" or "WxH").
   * @param {string} prompt
   */
  constructor(index, count, size, prompt) {
    this.name = count > 1 ? `Image ${index + 1} of ${count}` : 'Image';
    this.prompt = prompt.length > 120 ? `${prompt.slice(0, 117)}…` : prompt;
    this.img = el('img', { alt: '', decoding: 'async', hidden: true });
    this.badge = el('span', { className: 'badge' });
    this.frame = el('div', { className: 'frame' }, this.img, this.badge);
    this.caption = el('span', {}, `${this.name}: waiting…`);
    this.link = el('a', { className: 'download', hidden: true, download: `pixelgate-${index + 1}.png` }, 'Download');
    this.item = el('li', { className: 'slot', dataset: { state: 'waiting' } },
      el('figure', {}, this.frame, el('figcaption', {}, this.caption, this.link)));
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
    this.badge.textContent = '';
    const tokens = data.usage && typeof data.usage === 'object' && 'total_tokens' in data.usage ? ` · ${data.usage.total_tokens} tokens` : '';
    this.caption.textContent = `${this.name}: final · ${seconds(ms)}${tokens}`;
    this.link.href = this.img.src;
    this.link.download = this.link.download.replace(/\.\w+$/, `.${data.output_format || 'png'}`);
    this.link.hidden = false;
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
    this.img.src = imageDataUrl(data);
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
}

/** The page controller: form, model list, one run at a time. */
class Playground {
  /** @type {AbortController | null} The running request's; null when idle. */
  #running = null;

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
    /** @type {HTMLButtonElement} */ this.generateButton = $('generate');
    /** @type {HTMLButtonElement} */ this.cancelButton = $('cancel');
    /** @type {HTMLElement} */ this.status = $('status');
    /** @type {HTMLElement} */ this.error = $('error');
    /** @type {HTMLElement} */ this.firstPartial = $('t-partial');
    /** @type {HTMLElement} */ this.finalLabel = $('t-final-label');
    /** @type {HTMLElement} */ this.finalTime = $('t-final');
    /** @type {HTMLOListElement} */ this.images = $('images');

    this.form.addEventListener('submit', (event) => {
      event.preventDefault();
      void this.generate();
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

  /** Start a streamed generation with the form's values. */
  async generate() {
    if (this.#running) return;
    const prompt = this.prompt.value.trim();
    if (!prompt) {
      this.#showError(new Error('Enter a prompt first.'));
      this.prompt.focus();
      return;
    }
    const n = Math.min(10, Math.max(1, Math.round(Number(this.n.value)) || 1));
    const partials = Number(this.partials.value);
    const size = this.size.value;
    /** @type {Record<string, unknown>} */
    const body = { prompt, n, size, quality: this.quality.value, partial_images: partials };
    if (this.model.value) body.model = this.model.value;

    const abort = new AbortController();
    this.#setRunning(abort);
    this.#clearError();
    this.firstPartial.textContent = '–';
    this.finalTime.textContent = '–';
    this.finalLabel.textContent = n > 1 ? `All ${n} images` : 'Final image';
    const slots = Array.from({ length: n }, (_, i) => new Slot(i, n, size, prompt));
    this.images.replaceChildren(...slots.map((slot) => slot.item));
    this.#say(`Generating ${n > 1 ? `${n} images` : 'an image'}…`);

    const started = performance.now();
    let firstPartial = false;
    let done = 0;
    try {
      for await (const event of streamImages({ baseUrl: this.baseUrl, apiKey: this.apiKey.value, body, signal: abort.signal })) {
        const ms = performance.now() - started;
        if (event.type === 'other') continue;
        // A server may send more images than asked for: give them slots too.
        while (event.image >= slots.length) {
          slots.push(new Slot(slots.length, slots.length + 1, size, prompt));
          this.images.append(slots[slots.length - 1].item);
        }
        const slot = slots[event.image];
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

  /** Abort the running request: the browser closes the connection, the gateway its upstream request. */
  cancel() {
    this.#running?.abort();
  }

  /** @param {AbortController | null} abort */
  #setRunning(abort) {
    const focusWasOn = this.form.ownerDocument.activeElement;
    this.#running = abort;
    this.generateButton.disabled = abort !== null;
    this.cancelButton.disabled = abort === null;
    // Keep keyboard focus on a usable button as they swap.
    if (abort && focusWasOn === this.generateButton) this.cancelButton.focus();
    if (!abort && focusWasOn === this.cancelButton) this.generateButton.focus();
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
