// Unit tests of how the dashboard words a job's status (web/js/util.js), run by node's test runner:
// a job queued in SLURM reads as queued, with SLURM's reason, not as running 0 %.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { statusText, statusClass } from '../../web/js/util.js';

const running = { status: 'running', iter: 50, max_iters: 200, slurm: null };

test('a local running job shows its progress', () => {
  assert.equal(statusText(running), 'running 25%');
  assert.equal(statusClass(running), 'badge status-running');
});

test('a job waiting in SLURM shows queued with SLURM\'s reason', () => {
  const pending = { ...running, iter: 0, slurm: { job_id: '17', state: 'PENDING', reason: 'Resources' } };
  assert.equal(statusText(pending), 'queued in SLURM: Resources');
  assert.equal(statusClass(pending), 'badge status-queued');
  const started = { ...running, slurm: { job_id: '17', state: 'RUNNING', reason: '' } };
  assert.equal(statusText(started), 'running 25%');
  const ended = { status: 'failed', slurm: { job_id: '17', state: 'OUT_OF_MEMORY', reason: '' } };
  assert.equal(statusText(ended), 'failed');
});
