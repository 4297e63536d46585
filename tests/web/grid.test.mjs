// Unit tests of the ablation-grid derivation (web/js/grid.js), run by node's test runner. The configs
// are the study's steps written as job specs (docs/job-spec.md), so the grid must place them where the
// study's notes do: step 2 is "ratio 5 × none", step 12 is "RA + MLA + ratio 2.667 × M1 + M2", and a
// forced-open twin gets its own column next to its gated original.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { baseOf, mechanismsOf, buildGrid, meanStd } from '../../web/js/grid.js';

function model(overrides = {}) {
  const m = {
    mlp_ratio: 4.0, force_gates_open: false,
    learned_ratio: { enabled: false, init: 4.0 },
    mla: { enabled: false }, ra: { enabled: false, alpha: 0.3 },
    ra_ct: { enabled: false, mode: 'topk', apply: 'output' },
    mlp_gate: { enabled: false }, mlp_cross: { enabled: false },
    mlp_latent: { enabled: false, tying: 'tied_transpose' },
  };
  for (const [k, v] of Object.entries(overrides)) m[k] = typeof v === 'object' ? { ...m[k], ...v } : v;
  return m;
}
const on = { enabled: true };

test('bases name what the mechanism is added to', () => {
  assert.equal(baseOf(model()).label, 'Baseline');
  assert.equal(baseOf(model({ mlp_ratio: 5.0 })).label, '+ ratio 5');
  assert.equal(baseOf(model({ ra: on })).label, '+ RA');
  assert.equal(baseOf(model({ mla: on, mlp_ratio: 3.3333 })).label, '+ MLA + ratio 3.333');
  assert.equal(baseOf(model({ ra: on, mla: on, mlp_ratio: 2.667 })).label, '+ RA + MLA + ratio 2.667');
  assert.equal(baseOf(model({ learned_ratio: { enabled: true, init: 3 } })).label, '+ learned ratio (init 3)');
  // RA switched on with alpha 0 adds nothing: the base stays the baseline.
  assert.equal(baseOf(model({ ra: { enabled: true, alpha: 0 } })).label, 'Baseline');
});

test('mechanism sets list the added mechanisms and forced-open gates', () => {
  assert.equal(mechanismsOf(model()).label, 'none');
  assert.equal(mechanismsOf(model({ mlp_gate: on, mlp_cross: on })).label, 'M1 + M2');
  assert.equal(mechanismsOf(model({ ra_ct: { enabled: true, mode: 'entropy' } })).label, 'RA-CT entropy/output');
  assert.equal(mechanismsOf(model({ mlp_latent: { enabled: true, tying: 'untied' } })).label, 'M3 untied');
  assert.equal(mechanismsOf(model({ mlp_gate: on, force_gates_open: true })).label, 'M1 (gates open)');
  assert.equal(mechanismsOf(model(), { prune: { enabled: true, target_sparsity: 0.5 } }).label, 'pruned 50%');
});

test('the study steps land in the right cells, seeds share a cell', () => {
  const entries = [
    { jobId: 0, step: '0', config: { model: model() } },
    { jobId: 2, step: '2', config: { model: model({ mlp_ratio: 5.0 }) } },
    { jobId: 5, step: '5', config: { model: model({ ra: on }) } },
    { jobId: 12, step: '12', config: { model: model({ ra: on, mla: on, mlp_ratio: 2.667, mlp_gate: on, mlp_cross: on }) } },
    { jobId: 24, step: '24', config: { model: model({ ra: on, mla: on, mlp_ratio: 2.667, mlp_gate: on, mlp_cross: on, force_gates_open: true }) } },
    { jobId: 100, step: '5', config: { model: model({ ra: on }) } },  // step 5 with another seed
    { jobId: 'no-config', step: '7', config: null },                  // not expanded yet: left out
  ];
  const grid = buildGrid(entries);
  assert.deepEqual(grid.rows.map((r) => r.label), ['Baseline', '+ ratio 5', '+ RA', '+ RA + MLA + ratio 2.667']);
  assert.deepEqual(grid.cols.map((c) => c.label), ['none', 'M1 + M2', 'M1 + M2 (gates open)']);
  assert.deepEqual(grid.cells.get('RA\tnone'), [5, 100]);
  assert.deepEqual(grid.cells.get('ratio 5\tnone'), [2]);
  assert.deepEqual(grid.cells.get('RA|MLA|ratio 2.667\tM1 + M2'), [12]);
  assert.deepEqual(grid.cells.get('RA|MLA|ratio 2.667\tM1 + M2 (gates open)'), [24]);
  assert.equal([...grid.cells.values()].flat().length, 6);
});

test('steps with the same architecture but other settings get rows of their own, never a shared cell', () => {
  // The dashboard test's matrix: step 9 is the baseline's architecture trained on missing data. Its
  // failure must not show in the baseline's cell.
  const data = (dataset) => ({ dataset, tokenizer: 'byte' });
  const entries = [
    { jobId: 1, step: '0', name: 'baseline (seed 1)', config: { model: model(), data: data('fortunes'), train: { seed: 1 } } },
    { jobId: 2, step: '0', name: 'baseline (seed 2)', config: { model: model(), data: data('fortunes'), train: { seed: 2 } } },
    { jobId: 3, step: '5', name: '+ RA', config: { model: model({ ra: on }), data: data('fortunes') } },
    { jobId: 4, step: '9', name: 'missing data (seed 1)', config: { model: model(), data: data('/nonexistent') } },
    { jobId: 5, step: '9', name: 'missing data (seed 2)', config: { model: model(), data: data('/nonexistent') } },
    { jobId: 6, step: '2/lr=0.001', name: 'lr [lr=0.001]', config: { model: model({ ra: on }), train: { lr: 1e-3 } } },
    { jobId: 7, step: '3', name: 'M1', config: { model: model({ mlp_gate: on }), data: data('fortunes') } },
  ];
  const grid = buildGrid(entries);
  assert.deepEqual(grid.rows.map((r) => r.label),
    ['Baseline', 'Baseline · step 9 missing data', '+ RA', '+ RA · step 2/lr=0.001 lr [lr=0.001]']);
  assert.deepEqual(grid.cells.get('baseline\tnone'), [1, 2]);  // the seeds of step 0 only
  assert.deepEqual(grid.cells.get('baseline#9\tnone'), [4, 5]);
  assert.deepEqual(grid.cells.get('RA\tnone'), [3]);
  assert.deepEqual(grid.cells.get('RA#2/lr=0.001\tnone'), [6]);
  assert.deepEqual(grid.cells.get('baseline\tM1'), [7]);  // step 0's row, another column: no clash
  // Every cell holds the jobs of exactly one step.
  const stepOf = new Map(entries.map((e) => [e.jobId, e.step]));
  for (const [key, ids] of grid.cells) {
    assert.equal(new Set(ids.map((id) => stepOf.get(id))).size, 1, `cell ${key} mixes steps`);
  }
  // Rows and columns address every cell.
  const addressed = grid.rows.flatMap((r) => grid.cols.map((c) => `${r.key}\t${c.key}`)).filter((k) => grid.cells.has(k));
  assert.equal(addressed.length, grid.cells.size);
  // Jobs without a step never share a cell with another job of the same architecture.
  const anonymous = buildGrid([{ jobId: 'a', config: { model: model() } }, { jobId: 'b', config: { model: model() } }]);
  assert.equal(anonymous.rows.length, 2);
});

test('meanStd uses the sample deviation and ignores missing values', () => {
  assert.equal(meanStd([null, undefined, NaN]), null);
  assert.deepEqual(meanStd([3.5]), { mean: 3.5, std: 0, n: 1 });
  const s = meanStd([1, 2, 3, null]);
  assert.equal(s.mean, 2);
  assert.equal(s.std, 1);
  assert.equal(s.n, 3);
});
