// The official openai Node SDK editing through the gateway, unchanged but for baseURL.
// Run by tests/test_node_sdk.py: node edit.mjs BASE_URL IMAGE... --mask MASK
import fs from 'node:fs';
import OpenAI, { toFile } from 'openai';

const [baseURL, ...rest] = process.argv.slice(2);
const maskAt = rest.indexOf('--mask');
const images = maskAt >= 0 ? rest.slice(0, maskAt) : rest;
const mask = maskAt >= 0 ? rest[maskAt + 1] : undefined;

const client = new OpenAI({ baseURL, apiKey: 'sk-unused', maxRetries: 0 });
const files = await Promise.all(images.map((path) => toFile(fs.createReadStream(path), path.split('/').pop(), { type: 'image/png' })));
const stream = await client.images.edit({
  model: 'gpt-image-1.5',
  image: files,
  ...(mask ? { mask: await toFile(fs.createReadStream(mask), 'mask.png', { type: 'image/png' }) } : {}),
  prompt: 'make it blue',
  stream: true,
  partial_images: 2,
});
const events = [];
for await (const event of stream) events.push({ type: event.type, b64: event.b64_json.length, usage: event.usage ?? null });
console.log(JSON.stringify(events));
