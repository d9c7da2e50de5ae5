// Crash: kill -9 the server while a batch is in progress, restart it on the
// same ledger and files, and the batch completes with every line exactly once.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { toFile } from 'openai';
import { MODEL_ID, skipReason, startServer, tempDir, client, removeDir, ledgerUsage, sleep, stderrOf } from './serve.mjs';

const skip = skipReason();
const N = 48;
const MAX_TOKENS = 32;
// --parallel 2: batch work leaves one slot to interactive requests, so the
// lines run one at a time and the batch takes a few seconds.
const ARGS = ['--parallel', '2', '-t', '1'];
let server, dir;

after(async () => {
  if (server) await server.stop();
  if (dir) removeDir(dir);
});

const lines = Array.from({ length: N }, (_, i) => ({
  custom_id: `line-${i}`,
  method: 'POST',
  url: '/v1/chat/completions',
  body: {
    model: MODEL_ID, messages: [{ role: 'user', content: `Tell story number ${i}.` }],
    max_tokens: MAX_TOKENS, temperature: 0, ignore_eos: true,
  },
}));

async function poll(openai, id, until, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const b = await openai.batches.retrieve(id);
    assert.ok(!['failed', 'expired', 'cancelled'].includes(b.status), `batch ${b.status}`);
    if (until(b)) return b;
    if (Date.now() > deadline) assert.fail(`${what} within ${timeoutMs} ms; last: ${b.status} ${JSON.stringify(b.request_counts)}`);
    await sleep(25);
  }
}

test('crash: kill -9 during a batch, restart, the batch completes exactly once', { skip, timeout: 90000 }, async () => {
  dir = tempDir('crash');
  server = await startServer(dir, { args: ARGS });
  let openai = client(server);
  const jsonl = lines.map((l) => JSON.stringify(l)).join('\n') + '\n';
  const file = await openai.files.create({ file: await toFile(Buffer.from(jsonl), 'crash.jsonl'), purpose: 'batch' });
  const created = await openai.batches.create({ input_file_id: file.id, endpoint: '/v1/chat/completions', completion_window: '24h' });

  const mid = await poll(openai, created.id, (b) => b.request_counts.completed > 0, 30000, 'a first line answered');
  assert.ok(mid.request_counts.completed < N,
    `the batch was still in progress when polled (completed ${mid.request_counts.completed} of ${N}); make it longer`);
  const killed = await server.kill9();
  assert.equal(killed.signal, 'SIGKILL');
  const atKill = ledgerUsage(server.ledger).total;
  console.log(`# crash: killed at ${mid.request_counts.completed}/${N} completed; the ledger then had ${atKill.requests} rows`);

  server = await startServer(dir, { args: ARGS });  // same config: same ledger and files dir
  openai = client(server);
  const done = await poll(openai, created.id, (b) => b.status === 'completed', 60000, 'the batch completed after the restart');
  assert.deepEqual(done.request_counts, { total: N, completed: N, failed: 0 });

  const content = await (await openai.files.content(done.output_file_id)).text();
  const out = content.split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l));
  const seen = new Map();
  for (const o of out) seen.set(o.custom_id, (seen.get(o.custom_id) ?? 0) + 1);
  const dup = [...seen].filter(([, n]) => n > 1).map(([id]) => id);
  const lost = lines.map((l) => l.custom_id).filter((id) => !seen.has(id));
  assert.deepEqual(dup, [], 'no custom_id twice in the output');
  assert.deepEqual(lost, [], 'no custom_id lost');
  assert.equal(out.length, N);
  for (const o of out) {
    assert.equal(o.response.status_code, 200);
    assert.equal(o.response.body.usage.completion_tokens, MAX_TOKENS);
  }

  // The ledger: every line billed exactly once. A line answered and billed
  // in the instant before its output line was stored runs again after the
  // restart, under the same line id, and the ledger ignores its second bill.
  const usage = ledgerUsage(server.ledger).total;
  const outPrompt = out.reduce((s, o) => s + o.response.body.usage.prompt_tokens, 0);
  const outCompletion = out.reduce((s, o) => s + o.response.body.usage.completion_tokens, 0);
  console.log(`# crash: ledger ${usage.requests} rows for ${N} lines; ` +
    `${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens vs output ${outPrompt} + ${outCompletion}`);
  assert.equal(usage.requests, N, 'one ledger row per line');
  assert.equal(usage.prompt_tokens, outPrompt, 'ledger prompt tokens equal the output\'s');
  assert.equal(usage.completion_tokens, outCompletion, 'ledger completion tokens equal the output\'s');

  const { code } = await server.stop();
  assert.equal(code, 0, 'the restarted server exits 0 on SIGTERM');
  if (code !== 0) console.log(stderrOf(dir));
});
