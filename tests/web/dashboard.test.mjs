// The dashboard in a real browser against a real ratiod running the real ratio-worker.
//
// A tiny matrix (1 layer, 32 wide, 40 iterations, byte-level fortunes) is submitted through the submit
// page; one step points data.dataset at a missing directory so it fails with a data error. The test
// checks that the comparison table shows exactly the API's values, that the loss curves are drawn
// (canvas pixels of the series colours), that "Rerun failed" requeues only the failed job and the page
// follows it through its new attempt without a reload, and that a bad YAML shows the located error.
// Screenshots land in $RATIO_TEST_OUT (build/tests/web-out) for a human to look at.
//
// Environment (set by tests/web/CMakeLists.txt): RATIO_BIN_DIR (ratiod, ratio-worker), RATIO_WEB_ROOT,
// RATIO_TEST_OUT, RATIO_HAS_WORKER (0 when the build has no LibTorch: the test is skipped, exit 77).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const SKIP = 77;
const here = path.dirname(fileURLToPath(import.meta.url));
const binDir = process.env.RATIO_BIN_DIR;
const webRoot = process.env.RATIO_WEB_ROOT;
const outDir = process.env.RATIO_TEST_OUT || path.join(os.tmpdir(), 'ratio-web-out');

if (process.env.RATIO_HAS_WORKER === '0') {
  console.log('SKIPPED: this build has no ratio-worker (configured with -DRATIO_WITH_TORCH=OFF); '
    + 'the dashboard test needs a real worker to train the tiny matrix.');
  process.exit(SKIP);
}
for (const [what, file] of [['ratiod', path.join(binDir || '', 'ratiod')], ['ratio-worker', path.join(binDir || '', 'ratio-worker')],
  ['the dashboard (target ratio_web)', path.join(webRoot || '', 'index.html')], ['chromium', '/usr/bin/chromium']]) {
  if (!fs.existsSync(file)) {
    console.error(`dashboard test: ${what} not found at ${file}; build it first (cmake --build <dir>) or run scripts/setup.sh.`);
    process.exit(1);
  }
}
const { chromium } = await import(path.join(here, '../../web/node_modules/playwright-core/index.mjs'));

const MATRIX_YAML = `name: web-e2e
description: dashboard browser test
max_attempts: 1
base:
  model: {n_layer: 1, n_head: 2, n_embd: 32, vocab_size: 256, block_size: 32, ra: {window: 16}}
  train:
    max_iters: 40
    batch_size: 4
    grad_accum: 1
    warmup_iters: 5
    eval_interval: 10
    eval_batches: 2
    checkpoint_interval: 20
    log_interval: 2
    grad_norm_interval: 10
    device: cpu
  data: {dataset: fortunes, tokenizer: byte}
steps:
  - {id: 0, name: baseline}
  - {id: 5, name: + RA, ra: true}
  - id: 9
    name: missing data
    data: {dataset: no-such-shards}  # a folder under --data-dir that was never prepared
`;
// Line 5 holds the error: an integer key given a word.
const BAD_YAML = `name: web-bad
base:
  model: {n_layer: 1, n_embd: 32}
steps:
  - {id: 0, name: baseline, mla: {latent_dim: big}}
`;

const TERMINAL = ['succeeded', 'failed', 'cancelled'];
let tmp;
let daemon;
let daemonLog = '';
let base;
let context;
let page;
const pageErrors = [];
let matrixId;

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.listen(0, '127.0.0.1', () => { const { port } = srv.address(); srv.close(() => resolve(port)); });
    srv.on('error', reject);
  });
}

async function api(method, p, body) {
  const res = await fetch(base + p, { method, body, headers: body ? { 'Content-Type': 'application/yaml' } : {} });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

async function eventually(what, fn, timeoutMs = 30000, everyMs = 250) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    try { const v = await fn(); if (v) return v; } catch (e) { last = e; }
    await new Promise((r) => setTimeout(r, everyMs));
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
}

async function shot(name) {
  await page.screenshot({ path: path.join(outDir, `${name}.png`), fullPage: true });
}

before(async () => {
  fs.mkdirSync(outDir, { recursive: true });
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ratio-web-'));
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  daemon = spawn(path.join(binDir, 'ratiod'), [
    '--db', path.join(tmp, 'ratio.db'), '--listen', `127.0.0.1:${port}`, '--slots', 'cpu:2',
    '--workdir', path.join(tmp, 'work'), '--data-dir', path.join(tmp, 'data'),
    '--worker', path.join(binDir, 'ratio-worker'), '--web-root', webRoot,
  ], { stdio: ['ignore', 'pipe', 'pipe'] });
  daemon.stdout.on('data', (d) => { daemonLog += d; });
  daemon.stderr.on('data', (d) => { daemonLog += d; });
  await eventually('ratiod /api/health', async () => (await api('GET', '/api/health')).body.ok, 20000);

  context = await chromium.launchPersistentContext(path.join(tmp, 'chromium-profile'), {
    executablePath: '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1440, height: 900 },
  });
  page = context.pages()[0] || await context.newPage();
  page.on('pageerror', (e) => pageErrors.push(e.message));
});

after(async () => {
  if (context) await context.close();
  if (daemon) {
    daemon.kill('SIGTERM');
    await new Promise((r) => { daemon.once('exit', r); setTimeout(r, 10000); });
  }
  fs.writeFileSync(path.join(outDir, 'ratiod.log'), daemonLog);
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

test('submit page: the dry run lists the jobs, Submit opens the live matrix', async () => {
  await page.goto(`${base}/#/submit`);
  await page.fill('#matrix-yaml', MATRIX_YAML);
  const rows = page.locator('table[aria-label="Expanded jobs"] tbody tr');
  await eventually('the dry-run table', async () => (await rows.count()) === 3, 15000);
  const expanded = await api('POST', '/api/expand', MATRIX_YAML);
  assert.equal(expanded.status, 200);
  for (const [i, job] of expanded.body.jobs.entries()) {
    const cells = await rows.nth(i).locator('td, th').allTextContents();
    assert.equal(cells[0], String(job.step));
    assert.equal(cells[1], job.name);
    assert.equal(await rows.nth(i).locator('td').nth(1).getAttribute('title'), String(job.params.total));
    assert.equal(cells[5], job.config_hash);
  }
  await shot('submit-dry-run');
  await page.click('button:has-text("Submit")');
  await page.waitForURL(/#\/matrix\/[^/]+$/, { timeout: 15000 });
  matrixId = decodeURIComponent(page.url().split('#/matrix/')[1]);
  await page.evaluate(() => { window.__notReloaded = true; });
});

test('the matrix finishes live and the table shows the API values', async () => {
  const statusCells = page.locator('table.results tbody tr [data-col="status"] .badge');
  await eventually('all jobs terminal in the page', async () => {
    const texts = await statusCells.allTextContents();
    return texts.length === 3 && texts.every((t) => TERMINAL.some((s) => t.startsWith(s)));
  }, 180000, 500);
  assert.equal(await page.evaluate(() => window.__notReloaded), true, 'the page must update without a reload');

  const { body: results } = await api('GET', `/api/matrices/${encodeURIComponent(matrixId)}/results`);
  const byStep = Object.fromEntries(results.rows.map((r) => [String(r.step), r]));
  assert.equal(byStep['0'].status, 'succeeded', daemonLog.slice(-2000));
  assert.equal(byStep['5'].status, 'succeeded');
  assert.equal(byStep['9'].status, 'failed');
  // Results are refetched (throttled) after status changes: wait until the page holds the final rows.
  await eventually('the table to match /results', async () => {
    for (const r of results.rows) {
      const tr = page.locator(`table.results tbody tr[data-job-id="${r.job_id}"]`);
      const val = tr.locator('[data-col="val"]');
      const expectText = typeof r.final_val_loss === 'number' ? r.final_val_loss.toFixed(4) : '–';
      if ((await val.textContent()) !== expectText) return false;
      if (typeof r.final_val_loss === 'number') assert.equal(Number(await val.getAttribute('data-value')), r.final_val_loss);
      if (typeof r.best_val_loss === 'number') assert.equal(Number(await tr.locator('[data-col="best"]').getAttribute('data-value')), r.best_val_loss);
      if (typeof r.params_total === 'number') assert.equal(Number(await tr.locator('[data-col="params"]').getAttribute('data-value')), r.params_total);
      if (typeof r.delta === 'number' && String(r.step) !== String(results.baseline_step)) {
        assert.equal(Number(await tr.locator('[data-col="delta"]').getAttribute('data-value')), r.delta);
      }
      const verdict = (await tr.locator('[data-col="verdict"]').textContent()) || '';
      assert.ok(r.verdict ? verdict.startsWith(r.verdict) : verdict === '–', `verdict of step ${r.step}: "${verdict}" vs ${r.verdict}`);
      assert.ok((await tr.locator('[data-col="status"]').textContent()).startsWith(r.status));
    }
    return true;
  }, 15000);
  // Verdict reasons are on hover; sorting by val loss orders rows by the API's values (missing last).
  for (const r of results.rows.filter((x) => x.verdict)) {
    const badge = page.locator(`tr[data-job-id="${r.job_id}"] [data-col="verdict"] .badge`);
    assert.equal(await badge.getAttribute('title'), r.verdict_reason);
  }
  await page.click('th[data-key="val"] button');
  const sortedIds = await page.locator('table.results tbody tr').evaluateAll((trs) => trs.map((tr) => tr.dataset.jobId));
  const expected = [...results.rows].sort((a, b) => (a.final_val_loss ?? Infinity) - (b.final_val_loss ?? Infinity)).map((r) => String(r.job_id));
  assert.deepEqual(sortedIds, expected);
  assert.equal(await page.getAttribute('th[data-key="val"]', 'aria-sort'), 'ascending');
  await page.click('th[data-key="step"] button');
  // The failed job's reason is on its status cell.
  const failedId = byStep['9'].job_id;
  const reason = await page.locator(`tr[data-job-id="${failedId}"] [data-col="status"]`).getAttribute('title');
  assert.ok(reason && reason.length > 0, 'the failed job shows its reason on hover');
  // The ablation grid: step 9 has the baseline's architecture but other data, so it gets a row of
  // its own; the baseline's cell shows the baseline alone, never step 9's failure.
  const gridCell = (row, col) => page.locator(`table[aria-label="Ablation grid"] td[data-row="${row}"][data-col="${col}"]`);
  await eventually('the ablation grid with its own row for step 9',
    async () => (await gridCell('Baseline · step 9 missing data', 'none').count()) === 1, 10000);
  const baselineCell = (await gridCell('Baseline', 'none').textContent()) || '';
  assert.ok(baselineCell.startsWith(byStep['0'].final_val_loss.toFixed(4)), `baseline cell: "${baselineCell}"`);
  assert.ok(!baselineCell.includes('failed'), `the baseline cell must not show step 9's status: "${baselineCell}"`);
  assert.ok(((await gridCell('Baseline · step 9 missing data', 'none').textContent()) || '').includes('failed'));
  await shot('matrix-finished');
});

test('the loss curves are drawn (canvas pixels in the series colours)', async () => {
  // Wait until uPlot holds points for the baseline and step 5 (both plotted by default).
  const counts = await eventually('curve pixels', async () => {
    const c = await page.evaluate(() => {
      const fg = getComputedStyle(document.documentElement).getPropertyValue('--fg').trim();
      const hex = (h) => [1, 3, 5].map((i) => parseInt(h.slice(i, i + 2), 16));
      const targets = { baseline: hex(fg), first: hex('#2f6fde') };
      const out = {};
      for (const label of ['Validation loss curves', 'Training loss curves']) {
        const canvas = document.querySelector(`[aria-label="${label}"] canvas`);
        const px = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        for (const [name, [r, g, b]] of Object.entries(targets)) {
          let n = 0;
          for (let i = 0; i < px.length; i += 4) {
            if (px[i + 3] > 200 && Math.abs(px[i] - r) < 24 && Math.abs(px[i + 1] - g) < 24 && Math.abs(px[i + 2] - b) < 24) n++;
          }
          out[`${label}/${name}`] = n;
        }
      }
      return out;
    });
    return Object.values(c).every((n) => n > 30) ? c : null;
  }, 20000, 500);
  assert.ok(counts);
  // The log-x toggle redraws without losing the curves.
  await page.check('#logx');
  await page.waitForTimeout(300);
  const nonEmpty = await page.evaluate(() => {
    const canvas = document.querySelector('[aria-label="Validation loss curves"] canvas');
    const px = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    let n = 0;
    for (let i = 3; i < px.length; i += 4) if (px[i] > 0) n++;
    return n;
  });
  assert.ok(nonEmpty > 1000, 'log-x chart is drawn');
  await page.uncheck('#logx');
  await page.locator('#h-curves').scrollIntoViewIfNeeded();
  await shot('matrix-curves');
});

test('the job panel shows attempts, reason and log', async () => {
  const { body: results } = await api('GET', `/api/matrices/${encodeURIComponent(matrixId)}/results`);
  const failed = results.rows.find((r) => r.status === 'failed');
  await page.click(`tr[data-job-id="${failed.job_id}"] th a`);
  const panel = page.locator('section[aria-label="Job detail"]');
  await eventually('the attempts table', async () => (await panel.locator('table[aria-label="Attempts"] tbody tr').count()) === 1, 10000);
  const { body: detail } = await api('GET', `/api/jobs/${encodeURIComponent(failed.job_id)}`);
  const attempt = detail.attempts[0];
  const cells = await panel.locator('table[aria-label="Attempts"] tbody tr td').allTextContents();
  assert.equal(cells[1], attempt.status);
  assert.equal(cells[2], attempt.reason || '');
  assert.equal(cells[3], String(attempt.exit_code ?? '–'));
  await eventually('the log tail', async () => ((await panel.locator('pre.log').textContent()) || '').length > 0, 10000);
  await shot('job-failed');
  // Open a succeeded job too: its mixing-weight heatmap (RA alpha) renders from the reported metrics.
  const ra = results.rows.find((r) => String(r.step) === '5');
  await page.click(`tr[data-job-id="${ra.job_id}"] th a`);
  await eventually('the RA job panel', async () => ((await panel.locator('h2').textContent()) || '').includes('+ RA'), 10000);
  const { body: m } = await api('GET', `/api/jobs/${encodeURIComponent(ra.job_id)}/metrics?names=val_loss&max_points=1`);
  if (m.names.some((n) => n.startsWith('alpha/'))) {
    await eventually('the heatmap', async () => (await panel.locator('table[aria-label="Mixing weights"] td.heat').count()) > 0, 10000);
  }
  await shot('job-ra');
});

test('"Rerun failed" requeues only the failed job; the page follows it without a reload', async () => {
  const before = (await api('GET', `/api/matrices/${encodeURIComponent(matrixId)}`)).body.jobs;
  const failed = before.find((j) => j.status === 'failed');
  // Record every status the page shows for the failed job from now on.
  await page.evaluate((id) => {
    window.__seen = [];
    const cell = document.querySelector(`tr[data-job-id="${id}"] [data-col="status"]`);
    new MutationObserver(() => window.__seen.push(cell.textContent)).observe(cell, { subtree: true, childList: true, characterData: true });
  }, String(failed.id));
  const answer = page.waitForResponse((r) => r.url().includes('/rerun') && r.request().method() === 'POST');
  await page.click('button:has-text("Rerun failed")');
  const requeued = (await (await answer).json()).requeued;
  assert.deepEqual(requeued.map(String), [String(failed.id)]);

  await eventually('the rerun to fail again in the page', async () => {
    const seen = await page.evaluate(() => window.__seen);
    const last = seen.at(-1) || '';
    return seen.some((s) => s.startsWith('running')) && last.startsWith('failed') && last.includes('attempt 2');
  }, 120000, 300);
  const seen = await page.evaluate(() => window.__seen);
  console.log('statuses shown for the rerun job:', JSON.stringify([...new Set(seen)]));
  assert.equal(await page.evaluate(() => window.__notReloaded), true, 'no reload');

  const after = (await api('GET', `/api/matrices/${encodeURIComponent(matrixId)}`)).body.jobs;
  for (const j of after) {
    const was = before.find((b) => b.id === j.id);
    if (j.id === failed.id) assert.equal(j.attempts, was.attempts + 1);
    else assert.equal(j.attempts, was.attempts, `job ${j.step} must not be rerun`);
  }
  const { body: detail } = await api('GET', `/api/jobs/${encodeURIComponent(failed.id)}`);
  assert.equal(detail.attempts.length, 2, 'the first attempt is kept');
  await shot('matrix-after-rerun');
});

test('the matrix list shows the matrix with its progress', async () => {
  await page.goto(`${base}/#/`);
  const row = page.locator(`tr[data-matrix-id="${matrixId}"]`);
  await eventually('the matrix row', async () => (await row.count()) === 1, 10000);
  const { body } = await api('GET', '/api/matrices');
  const m = body.matrices.find((x) => String(x.id) === String(matrixId));
  assert.equal(await row.locator('th a').textContent(), m.name);
  const label = await row.locator('.progress').getAttribute('aria-label');
  assert.ok(label.startsWith(`${m.counts.succeeded}/${m.total} succeeded`), label);
  await shot('matrix-list');
});

// The same matrix shape as tests/daemon/ratiod_test.cpp's decide test: an open step gets seed 3
// with its baseline pair, then max_seeds (3) ends it. The page must show the API's decision.
const DECIDE_YAML = MATRIX_YAML.replace('name: web-e2e', 'name: web-decide\nseeds: [1, 2]\ndecide: {max_seeds: 3, min_effect: 0.001}')
  .replace('max_iters: 40', 'max_iters: 20')
  .replace(/steps:[\s\S]*$/, 'steps:\n  - {id: 0, name: baseline}\n  - {id: 5, name: narrower MLP, mlp_ratio: 3}\n');

test('a decide matrix: the table, the grid and the line above them show the API\'s decision', async () => {
  const { status, body: created } = await api('POST', '/api/matrices', DECIDE_YAML);
  assert.equal(status, 201, JSON.stringify(created));
  await eventually('the decide matrix to finish', async () => {
    const { body } = await api('GET', `/api/matrices/${created.id}`);
    return body.matrix.finished_at !== null && body.jobs.length === 6;
  }, 180000, 500);
  const { body: results } = await api('GET', `/api/matrices/${created.id}/results`);
  const row = results.rows.find((r) => String(r.step) === '5');
  assert.ok(row.decision && row.decision.outcome !== 'open', JSON.stringify(row));
  await page.goto(`${base}/#/matrix/${created.id}`);
  const cell = page.locator(`tr[data-job-id="${row.job_id}"] [data-col="decision"]`);
  const sign = (v) => `${v > 0 ? '+' : v < 0 ? '−' : '±'}${Math.abs(v).toFixed(4)}`;
  const expected = `${row.decision.outcome.replace('_', ' ')} [${sign(row.decision.lower)}, ${sign(row.decision.upper)}]`;
  await eventually('the decision cell', async () => (await cell.textContent()) === expected, 15000);
  assert.ok((await cell.getAttribute('title')).includes('seed 3 added: open'), await cell.getAttribute('title'));
  const line = page.locator('[data-role="decide"]');
  assert.ok((await line.textContent()).includes('up to 3 seeds per step'), await line.textContent());
  assert.ok((await line.textContent()).includes('every step is decided'), await line.textContent());
  assert.equal(await page.locator('table.ablation .tag[class*="decision-"]').first().textContent(), expected);
  // Seeds added by ratiod count in the grid too: every cell holds all 3.
  assert.equal(await page.locator('table.ablation td.cell:has-text("(n=3)")').count(), 2);
  await shot('decide-matrix');
});

test('a bad YAML on the submit page shows the error at its line', async () => {
  await page.goto(`${base}/#/submit`);
  await page.fill('#matrix-yaml', BAD_YAML);
  const { status, body } = await api('POST', '/api/expand', BAD_YAML);
  assert.equal(status, 400);
  assert.equal(body.line, 5, `the API locates the error on line 5: ${JSON.stringify(body)}`);
  const box = page.locator('#yaml-error');
  await eventually('the located error', async () => await box.isVisible(), 10000);
  const text = await box.textContent();
  assert.ok(text.includes(`Line ${body.line}, column ${body.column}`), text);
  assert.ok(text.includes(body.path) && text.includes('expected an integer'), text);
  assert.equal(await page.locator('.gutter .error-line').textContent(), String(body.line));
  assert.equal(await page.getAttribute('#matrix-yaml', 'aria-invalid'), 'true');
  assert.equal(await page.locator('button:has-text("Submit")').isDisabled(), true);
  await shot('submit-error');
  assert.deepEqual(pageErrors, [], 'no uncaught errors in the page');
});
