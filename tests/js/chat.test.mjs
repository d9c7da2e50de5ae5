// Chat, completions, models and typed errors through the official openai client.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { MODEL_ID, skipReason, startServer, tempDir, client, removeDir } from './serve.mjs';

const skip = skipReason();
const KEY = 'sk-js-test-key';
let server, dir, openai, model;

before(async () => {
  if (skip) return;
  dir = tempDir('chat');
  server = await startServer(dir, { args: ['--api-key', KEY, '--parallel', '2', '-t', '1'] });
  openai = client(server, KEY);
});

after(async () => {
  if (!server) return;
  const { code } = await server.stop();
  assert.equal(code, 0, 'engram serve exits 0 on SIGTERM');
  removeDir(dir);
});

test('models.list names the served model', { skip }, async () => {
  const list = await openai.models.list();
  assert.equal(list.data.length, 1);
  model = list.data[0].id;
  assert.equal(model, MODEL_ID);
  assert.equal(list.data[0].object, 'model');
  const one = await openai.models.retrieve(model);
  assert.equal(one.id, model);
});

const messages = [{ role: 'user', content: 'Tell me a story about a cat.' }];

test('chat: streaming with include_usage equals the non-streaming greedy answer', { skip }, async () => {
  const plain = await openai.chat.completions.create({ model: MODEL_ID, messages, max_tokens: 24, temperature: 0 });
  assert.equal(plain.object, 'chat.completion');
  assert.equal(plain.choices.length, 1);
  const answer = plain.choices[0].message.content;
  assert.equal(plain.choices[0].message.role, 'assistant');
  assert.ok(answer.length > 0, 'a non-empty answer');
  assert.ok(['stop', 'length'].includes(plain.choices[0].finish_reason));
  assert.ok(plain.usage.prompt_tokens > 0);
  assert.ok(plain.usage.completion_tokens > 0 && plain.usage.completion_tokens <= 24);
  assert.equal(plain.usage.total_tokens, plain.usage.prompt_tokens + plain.usage.completion_tokens);

  const stream = await openai.chat.completions.create({
    model: MODEL_ID, messages, max_tokens: 24, temperature: 0, stream: true,
    stream_options: { include_usage: true },
  });
  let text = '';
  let usage = null;
  let finish = null;
  const ids = new Set();
  let chunks = 0;
  for await (const chunk of stream) {
    chunks++;
    assert.equal(chunk.object, 'chat.completion.chunk');
    ids.add(chunk.id);
    if (chunk.usage) {
      assert.equal(chunk.choices.length, 0, 'the usage chunk has no choices');
      usage = chunk.usage;
      continue;
    }
    for (const c of chunk.choices) {
      text += c.delta?.content ?? '';
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  assert.ok(chunks >= 3, `several chunks (got ${chunks})`);
  assert.equal(ids.size, 1, 'every chunk carries the same id');
  assert.equal(finish, plain.choices[0].finish_reason);
  assert.equal(text, answer, 'greedy streaming text equals the non-streaming answer');
  assert.ok(usage, 'a usage chunk is present');
  assert.equal(usage.prompt_tokens, plain.usage.prompt_tokens);
  assert.equal(usage.completion_tokens, plain.usage.completion_tokens);
  assert.equal(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens);
});

test('completions: text and usage, streaming too', { skip }, async () => {
  const r = await openai.completions.create({ model: MODEL_ID, prompt: 'Once upon a time', max_tokens: 16, temperature: 0 });
  assert.equal(r.object, 'text_completion');
  assert.equal(r.choices.length, 1);
  assert.ok(r.choices[0].text.length > 0);
  assert.ok(r.usage.completion_tokens > 0 && r.usage.completion_tokens <= 16);

  const stream = await openai.completions.create({
    model: MODEL_ID, prompt: 'Once upon a time', max_tokens: 16, temperature: 0, stream: true,
  });
  let text = '';
  for await (const chunk of stream) text += chunk.choices[0]?.text ?? '';
  assert.equal(text, r.choices[0].text, 'greedy streamed completion equals the non-streaming one');
});

test('errors: a bad key is an AuthenticationError', { skip }, async () => {
  const bad = client(server, 'sk-wrong-key');
  await assert.rejects(
    bad.chat.completions.create({ model: MODEL_ID, messages, max_tokens: 4 }),
    (e) => e instanceof OpenAI.AuthenticationError && e.status === 401 && e.code === 'invalid_api_key');
  await assert.rejects(bad.models.list(), OpenAI.AuthenticationError);
});

test('errors: a prompt over the context is a BadRequestError context_length_exceeded', { skip }, async () => {
  const long = 'Once upon a time there was a little girl named Lily. '.repeat(200);
  await assert.rejects(
    openai.chat.completions.create({ model: MODEL_ID, messages: [{ role: 'user', content: long }], max_tokens: 8 }),
    (e) => {
      assert.ok(e instanceof OpenAI.BadRequestError, `BadRequestError, got ${e?.constructor?.name}: ${e?.message}`);
      assert.equal(e.status, 400);
      assert.equal(e.code, 'context_length_exceeded');
      return true;
    });
  await assert.rejects(
    openai.completions.create({ model: MODEL_ID, prompt: long, max_tokens: 8 }),
    (e) => e instanceof OpenAI.BadRequestError && e.code === 'context_length_exceeded');
});

test('errors: an unknown model is a NotFoundError', { skip }, async () => {
  await assert.rejects(
    openai.chat.completions.create({ model: 'no-such-model', messages, max_tokens: 4 }),
    (e) => {
      assert.ok(e instanceof OpenAI.NotFoundError, `NotFoundError, got ${e?.constructor?.name}: ${e?.message}`);
      assert.equal(e.status, 404);
      assert.equal(e.code, 'model_not_found');
      return true;
    });
  await assert.rejects(openai.models.retrieve('no-such-model'), OpenAI.NotFoundError);
});

test('the server still answers after the errors', { skip }, async () => {
  const r = await openai.chat.completions.create({ model: MODEL_ID, messages, max_tokens: 4, temperature: 0 });
  assert.equal(r.choices.length, 1);
});
