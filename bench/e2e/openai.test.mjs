// End-to-end test with the official OpenAI Node SDK against OPENAI_BASE_URL (the router
// in front of simulated workers, when run by run.sh). With E2E_SIMULATED=0 the exact-text
// checks are skipped, so the same file can be pointed at real vLLM workers.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';

const baseURL = process.env.OPENAI_BASE_URL;
if (!baseURL) throw new Error('OPENAI_BASE_URL must be set (e.g. http://127.0.0.1:30000/v1)');
const simulated = process.env.E2E_SIMULATED !== '0';
const client = new OpenAI({ baseURL, apiKey: process.env.OPENAI_API_KEY || 'sk-e2e', maxRetries: 0, timeout: 30_000 });

// The simulator's deterministic output: its n first generated words.
const simWords = ['hello', 'from', 'the', 'switchyard', 'simulator', 'this', 'is', 'token'];
const simText = (n) => simWords.slice(0, n).join(' ');

let model;
async function servedModel() {
  if (!model) {
    const list = await client.models.list();
    assert.ok(list.data.length > 0, 'no model listed');
    model = list.data[0].id;
  }
  return model;
}

test('lists the served model', async () => {
  const m = await servedModel();
  assert.equal(typeof m, 'string');
});

test('chat completion', async () => {
  const m = await servedModel();
  const { data, response } = await client.chat.completions
    .create({ model: m, messages: [{ role: 'user', content: 'Say hello.' }], max_tokens: 5 })
    .withResponse();
  assert.equal(data.object, 'chat.completion');
  assert.equal(data.model, m);
  assert.equal(data.choices.length, 1);
  assert.equal(data.choices[0].message.role, 'assistant');
  assert.equal(data.choices[0].finish_reason, simulated ? 'length' : data.choices[0].finish_reason);
  if (simulated) assert.equal(data.choices[0].message.content, simText(5));
  else assert.ok(data.choices[0].message.content.length > 0);
  assert.ok(data.usage.prompt_tokens > 0);
  assert.equal(data.usage.completion_tokens, simulated ? 5 : data.usage.completion_tokens);
  assert.equal(data.usage.total_tokens, data.usage.prompt_tokens + data.usage.completion_tokens);
  assert.ok(response.headers.get('x-request-id'), 'no x-request-id response header');
});

test('completion', async () => {
  const m = await servedModel();
  const { data, response } = await client.completions
    .create({ model: m, prompt: 'The capital of France is', max_tokens: 3 })
    .withResponse();
  assert.equal(data.object, 'text_completion');
  assert.equal(data.model, m);
  if (simulated) assert.equal(data.choices[0].text, simText(3));
  assert.equal(data.usage.completion_tokens, 3);
  assert.ok(data.usage.prompt_tokens >= 5);
  assert.ok(response.headers.get('x-request-id'), 'no x-request-id response header');
});

test('streamed chat completion arrives as several events', async () => {
  const m = await servedModel();
  const { data: stream, response } = await client.chat.completions
    .create({
      model: m,
      messages: [{ role: 'user', content: 'Count to six.' }],
      max_tokens: 6,
      stream: true,
      stream_options: { include_usage: true },
    })
    .withResponse();
  assert.match(response.headers.get('content-type') || '', /^text\/event-stream/);
  assert.ok(response.headers.get('x-request-id'), 'no x-request-id response header');
  let chunks = 0;
  let text = '';
  let usage;
  let finish;
  for await (const chunk of stream) {
    chunks++;
    assert.equal(chunk.object, 'chat.completion.chunk');
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      text += c.delta?.content ?? '';
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  assert.ok(chunks >= 6, `only ${chunks} stream events`);
  if (simulated) assert.equal(text, simText(6));
  assert.equal(finish, simulated ? 'length' : finish);
  assert.ok(usage, 'no usage chunk despite include_usage');
  assert.equal(usage.completion_tokens, 6);
});

test('a session sticks to one worker and reuses its prefix cache', async () => {
  const m = await servedModel();
  const headers = { 'X-Session-ID': 'e2e-session-1' };
  const question = 'Please describe in detail how a request router keeps long multi turn sessions on the worker that already holds their prefix cache.';
  const messages = [{ role: 'user', content: question }];
  const first = await client.chat.completions.create({ model: m, messages, max_tokens: 4 }, { headers }).withResponse();
  messages.push({ role: 'assistant', content: first.data.choices[0].message.content });
  messages.push({ role: 'user', content: 'And what happens when that worker fails?' });
  const second = await client.chat.completions.create({ model: m, messages, max_tokens: 4 }, { headers }).withResponse();
  const w1 = first.response.headers.get('x-switchyard-worker');
  const w2 = second.response.headers.get('x-switchyard-worker');
  if (simulated) {
    assert.ok(w1, 'no x-switchyard-worker header from the simulated worker');
    assert.equal(w2, w1, 'the session moved to another worker');
  }
  const cached = second.data.usage.prompt_tokens_details?.cached_tokens ?? 0;
  assert.ok(cached > 0, `second turn found no cached prefix (cached_tokens ${cached})`);
});
