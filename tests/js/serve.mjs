// Starts and stops `engram serve` child processes for the integration tests.
// ENGRAM_BINARY (default build/engram) and ENGRAM_TEST_MODEL (default the
// reference stories260K model next to the repo) pick what runs.
import { spawn, execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync, createWriteStream, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import OpenAI from 'openai';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const BINARY = path.resolve(process.env.ENGRAM_BINARY ?? path.join(REPO, 'build', 'engram'));
export const MODEL = path.resolve(
  process.env.ENGRAM_TEST_MODEL ?? path.join(REPO, '..', 'shared', 'ref', 'models', 'stories260K.gguf'));

// Why the tests cannot run here, or undefined when they can (node:test prints it as the skip reason).
// The id the server gives the model: its file name without .gguf.
export const MODEL_ID = path.basename(MODEL, '.gguf');

export function skipReason() {
  if (!existsSync(BINARY)) return `engram binary not found at ${BINARY} (set ENGRAM_BINARY)`;
  if (!existsSync(MODEL)) return `reference model not found at ${MODEL} (set ENGRAM_TEST_MODEL)`;
  return undefined;
}

export function tempDir(tag) {
  return mkdtempSync(path.join(tmpdir(), `engram-js-${tag}-`));
}

// One `engram serve` on a free port (--port 0; the URL line says which) with
// its ledger and files in `dir`. Resolves once the URL line is printed.
export async function startServer(dir, { args = [], config = {}, timeoutMs = 30000 } = {}) {
  const ledger = path.join(dir, 'ledger.db');
  const configPath = path.join(dir, 'config.json');
  writeFileSync(configPath, JSON.stringify({ ledger, files_dir: path.join(dir, 'files'), ...config }, null, 2));
  const argv = ['serve', '-m', MODEL, '--port', '0', '--config', configPath, ...args];
  const proc = spawn(BINARY, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  const errLog = createWriteStream(path.join(dir, 'serve.stderr'), { flags: 'a' });
  proc.stderr.pipe(errLog);
  const exited = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));

  const url = await new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`engram serve printed no URL in ${timeoutMs} ms`)), timeoutMs);
    proc.stdout.on('data', (chunk) => {
      out += chunk;
      const m = out.match(/(http:\/\/\S+:\d+)/);
      if (m) { clearTimeout(timer); resolve(m[1]); }
    });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`engram serve exited (code ${code}, signal ${signal}) before listening:\n` + stderrOf(dir)));
    });
  });
  proc.stdout.resume();

  return {
    url,
    baseURL: `${url}/v1`,
    dir,
    ledger,
    proc,
    exited,
    // SIGTERM, then wait for the exit; SIGKILL after the timeout.
    async stop(timeoutMs = 20000) {
      if (proc.exitCode !== null || proc.signalCode !== null) return exited;
      proc.kill('SIGTERM');
      const timer = setTimeout(() => proc.kill('SIGKILL'), timeoutMs);
      const r = await exited;
      clearTimeout(timer);
      return r;
    },
    async kill9() {
      proc.kill('SIGKILL');
      return exited;
    },
  };
}

export function stderrOf(dir) {
  try { return readFileSync(path.join(dir, 'serve.stderr'), 'utf8'); } catch { return ''; }
}

export function client(server, apiKey = 'sk-none', options = {}) {
  return new OpenAI({ baseURL: server.baseURL, apiKey, maxRetries: 0, timeout: 60000, ...options });
}

// `engram usage --db LEDGER --json`: {data: [...], total: {requests, prompt_tokens, completion_tokens, ...}}.
export function ledgerUsage(ledger) {
  return JSON.parse(execFileSync(BINARY, ['usage', '--db', ledger, '--json'], { encoding: 'utf8' }));
}

export function removeDir(dir) {
  if (!process.env.ENGRAM_KEEP_TMP) rmSync(dir, { recursive: true, force: true });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
