// Benchmark (not a ctest: timings are printed, never asserted): the matrix page with 500 jobs against
// a real ratiod while every job's status changes in a burst. ratiod is started with a worker path that
// does not exist, so each of the 500 attempts fails at once: 1,000+ `job` events and 500 `matrix`
// events arrive within seconds, the worst case for the live table, grid and progress bar.
//
//   RATIO_BIN_DIR=build/bin RATIO_WEB_ROOT=build/share/ratio/web node tests/web/bench_big_matrix.mjs
//
// Prints: time until the 500 rows are rendered, long tasks (main thread blocked > 50 ms) during the
// burst, and how long after ratiod reports the last failure the page shows it.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const { chromium } = await import(path.join(here, '../../web/node_modules/playwright-core/index.mjs'));
const binDir = process.env.RATIO_BIN_DIR;
const webRoot = process.env.RATIO_WEB_ROOT;
const SEEDS = 100;  // x 5 steps = 500 jobs

const yaml = `name: bench-500
max_attempts: 1
seeds: [${Array.from({ length: SEEDS }, (_, i) => i + 1).join(', ')}]
base:
  model: {n_layer: 2, n_head: 2, n_embd: 32, vocab_size: 256, block_size: 32, ra: {window: 16}, mla: {latent_dim: 16}}
  train: {max_iters: 10, warmup_iters: 2, device: cpu}
steps:
  - {id: 0, name: baseline}
  - {id: 2, name: golden ratio, mlp_ratio: 5.0}
  - {id: 5, name: + RA, ra: true}
  - {id: 8, name: + MLA, mla: true}
  - {id: 12, name: RA + MLA + mechanisms, ra: true, mla: true, mlp_gate: true, mlp_cross: true}
`;

const port = await new Promise((resolve) => {
  const srv = net.createServer().listen(0, '127.0.0.1', () => { const p = srv.address().port; srv.close(() => resolve(p)); });
});
const base = `http://127.0.0.1:${port}`;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ratio-web-bench-'));
const daemon = spawn(path.join(binDir, 'ratiod'), ['--db', path.join(tmp, 'r.db'), '--listen', `127.0.0.1:${port}`,
  '--slots', 'cpu:8', '--workdir', path.join(tmp, 'work'), '--worker', path.join(tmp, 'no-such-worker'),
  '--web-root', webRoot, '--drain'], { stdio: 'ignore' });
const json = async (method, p, body) => (await fetch(base + p, { method, body })).json();
for (let i = 0; i < 100; i++) {
  try { await json('GET', '/api/health'); break; } catch { await new Promise((r) => setTimeout(r, 100)); }
}

const context = await chromium.launchPersistentContext(path.join(tmp, 'profile'), {
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  viewport: { width: 1680, height: 1000 },
});
const page = context.pages()[0];
try {
  // Drained: the 500 jobs stay queued until the page is open, then the burst starts.
  const created = await json('POST', '/api/matrices', yaml);
  if (!created.id) throw new Error(`submit failed: ${JSON.stringify(created)}`);
  const { id } = created;
  let t0 = Date.now();
  await page.goto(`${base}/#/matrix/${id}`);
  await page.waitForFunction(() => document.querySelectorAll('table.results tbody tr').length === 500, null, { timeout: 60000 });
  console.log(`500 rows rendered ${Date.now() - t0} ms after navigation`);
  await page.evaluate(() => {
    window.__long = [];
    new PerformanceObserver((l) => { for (const e of l.getEntries()) window.__long.push(e.duration); }).observe({ type: 'longtask' });
  });
  t0 = Date.now();
  await json('POST', '/api/drain', JSON.stringify({ drain: false }));
  let apiDone = 0;
  for (;;) {
    const m = (await json('GET', '/api/matrices')).matrices.find((x) => x.id === id);
    if (m.counts.failed === 500) { apiDone = Date.now(); break; }
    await new Promise((r) => setTimeout(r, 100));
  }
  await page.waitForFunction(() => [...document.querySelectorAll('table.results [data-col="status"] .badge')]
    .every((b) => b.textContent.startsWith('failed')), null, { timeout: 20000, polling: 50 }).catch(async (e) => {
    console.log(await page.evaluate(() => { const c = {}; for (const b of document.querySelectorAll('table.results [data-col="status"] .badge')) c[b.textContent] = (c[b.textContent] || 0) + 1; return JSON.stringify(c); }));
    throw e;
  });
  const pageDone = Date.now();
  const long = await page.evaluate(() => window.__long);
  console.log(`burst: ratiod failed all 500 jobs in ${apiDone - t0} ms; the page showed it ${pageDone - apiDone} ms later`);
  console.log(`long tasks during the burst: ${long.length}, max ${Math.round(Math.max(0, ...long))} ms, total ${Math.round(long.reduce((a, b) => a + b, 0))} ms`);
} finally {
  await context.close();
  daemon.kill('SIGTERM');
  await new Promise((r) => setTimeout(r, 500));
  fs.rmSync(tmp, { recursive: true, force: true });
}
