// The ablation grid of the study's notes: rows are "bases" (Baseline, + ratio 5, + RA, + MLA, ...),
// columns are mechanism sets (none, M1, M1+M2, RA-CT topk/output, M3, ...). Both are derived from
// each job's resolved config, so any matrix gets a grid, not only the presets. Pure functions (no DOM):
// tests/web/grid.test.mjs runs them under node.

function fmtRatio(r) { return Number(r.toFixed(3)).toString(); }

// The architecture a mechanism is added to: attention kind, RA, MLP width.
export function baseOf(model) {
  const parts = [];
  if (model.ra && model.ra.enabled && model.ra.alpha !== 0) parts.push('RA');
  if (model.mla && model.mla.enabled) parts.push('MLA');
  if (model.learned_ratio && model.learned_ratio.enabled) {
    parts.push(`learned ratio (init ${fmtRatio(model.learned_ratio.init)})`);
  } else if (typeof model.mlp_ratio === 'number' && Math.abs(model.mlp_ratio - 4) > 1e-9) {
    parts.push(`ratio ${fmtRatio(model.mlp_ratio)}`);
  }
  return {
    key: parts.join('|') || 'baseline',
    label: parts.length ? `+ ${parts.join(' + ')}` : 'Baseline',
    // Sort as the study's notes do: fewer additions first; then width, RA, MLA.
    rank: parts.length * 100 + (parts.includes('RA') ? 1 : 0) + (parts.includes('MLA') ? 2 : 0),
  };
}

// The mechanisms added on top of the base (and training-side changes such as pruning).
export function mechanismsOf(model, train = {}) {
  const parts = [];
  if (model.mlp_gate && model.mlp_gate.enabled) parts.push('M1');
  if (model.mlp_cross && model.mlp_cross.enabled) parts.push('M2');
  if (model.mlp_latent && model.mlp_latent.enabled) parts.push(`M3 ${model.mlp_latent.tying}`);
  if (model.ra_ct && model.ra_ct.enabled) parts.push(`RA-CT ${model.ra_ct.mode}/${model.ra_ct.apply}`);
  if (train.prune && train.prune.enabled) parts.push(`pruned ${Math.round(train.prune.target_sparsity * 100)}%`);
  const gatesOpen = Boolean(model.force_gates_open);
  const label = (parts.length ? parts.join(' + ') : 'none') + (gatesOpen ? ' (gates open)' : '');
  return { key: label, label, rank: parts.length * 10 + (gatesOpen ? 5 : 0) };
}

// entries: [{jobId, config}] where config is a full job spec ({model, train, ...}).
// Returns {rows: [{key, label}], cols: [{key, label}], cells: Map("row\tcol" -> [jobId])}.
export function buildGrid(entries) {
  const rows = new Map();
  const cols = new Map();
  const cells = new Map();
  for (const { jobId, config } of entries) {
    if (!config || !config.model) continue;
    const row = baseOf(config.model);
    const col = mechanismsOf(config.model, config.train || {});
    if (!rows.has(row.key)) rows.set(row.key, row);
    if (!cols.has(col.key)) cols.set(col.key, col);
    const key = `${row.key}\t${col.key}`;
    if (!cells.has(key)) cells.set(key, []);
    cells.get(key).push(jobId);
  }
  const byRank = (a, b) => a.rank - b.rank || a.label.localeCompare(b.label);
  return { rows: [...rows.values()].sort(byRank), cols: [...cols.values()].sort(byRank), cells };
}

// Mean and (sample) standard deviation of the finite values; null when there are none.
export function meanStd(values) {
  const v = values.filter((x) => typeof x === 'number' && Number.isFinite(x));
  if (!v.length) return null;
  const mean = v.reduce((a, b) => a + b, 0) / v.length;
  const variance = v.length > 1 ? v.reduce((a, b) => a + (b - mean) ** 2, 0) / (v.length - 1) : 0;
  return { mean, std: Math.sqrt(variance), n: v.length };
}
