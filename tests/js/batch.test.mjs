// A whole batch through the openai client: upload, create, poll, download.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { toFile } from 'openai';
import { MODEL_ID, skipReason, startServer, tempDir, client, removeDir, ledgerUsage, sleep } from './serve.mjs';

const skip = skipReason();
let server, dir, openai;

before(async () => {
  if (skip) return;
  dir = tempDir('batch');
  server = await startServer(dir, { args: ['--parallel', '3', '-t', '1'] });
  openai = client(server);
});

after(async () => {
  if (!server) return;
  const { code } = await server.stop();
  assert.equal(code, 0, 'engram serve exits 0 on SIGTERM');
  removeDir(dir);
});

const N = 6;
const lines = Array.from({ length: N }, (_, i) => ({
  custom_id: `req-${i}`,
  method: 'POST',
  url: '/v1/chat/completions',
  body: { model: MODEL_ID, messages: [{ role: 'user', content: `Tell story number ${i}.` }], max_tokens: 12, temperature: 0 },
}));

test('batch: upload, create, poll until completed, download every custom_id once', { skip, timeout: 60000 }, async () => {
  const jsonl = lines.map((l) => JSON.stringify(l)).join('\n') + '\n';
  const file = await openai.files.create({ file: await toFile(Buffer.from(jsonl), 'requests.jsonl'), purpose: 'batch' });
  assert.match(file.id, /^file-/);
  assert.equal(file.purpose, 'batch');
  assert.equal(file.bytes, Buffer.byteLength(jsonl));
  const fetched = await openai.files.retrieve(file.id);
  assert.equal(fetched.id, file.id);

  let batch = await openai.batches.create({
    input_file_id: file.id, endpoint: '/v1/chat/completions', completion_window: '24h', metadata: { test: 'batch' },
  });
  assert.match(batch.id, /^batch_/);
  assert.equal(batch.object, 'batch');
  assert.ok(['validating', 'in_progress', 'finalizing', 'completed'].includes(batch.status), batch.status);

  const deadline = Date.now() + 45000;
  while (batch.status !== 'completed' && Date.now() < deadline) {
    assert.ok(!['failed', 'expired', 'cancelled', 'cancelling'].includes(batch.status), `status ${batch.status}`);
    await sleep(200);
    batch = await openai.batches.retrieve(batch.id);
  }
  assert.equal(batch.status, 'completed', 'the batch completes within 45 s');
  assert.deepEqual(batch.request_counts, { total: N, completed: N, failed: 0 });
  assert.ok(batch.output_file_id, 'an output file');

  const listed = await openai.batches.list();
  assert.ok(listed.data.some((b) => b.id === batch.id), 'batches.list shows the batch');

  const content = await (await openai.files.content(batch.output_file_id)).text();
  const out = content.split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l));
  assert.equal(out.length, N, 'one output line per request');
  const ids = out.map((o) => o.custom_id).sort();
  assert.deepEqual(ids, lines.map((l) => l.custom_id).sort(), 'every custom_id exactly once');
  for (const o of out) {
    assert.equal(o.error, null);
    assert.equal(o.response.status_code, 200);
    assert.equal(o.response.body.object, 'chat.completion');
    assert.ok(o.response.body.choices[0].message.content.length > 0);
  }

  // Every line is billed exactly once, with the tokens its output reports.
  const usage = ledgerUsage(server.ledger).total;
  assert.equal(usage.requests, N);
  assert.equal(usage.prompt_tokens, out.reduce((s, o) => s + o.response.body.usage.prompt_tokens, 0));
  assert.equal(usage.completion_tokens, out.reduce((s, o) => s + o.response.body.usage.completion_tokens, 0));
});
