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

// entries: [{jobId, step, name, config}] where config is a full job spec ({model, train, ...}).
// Returns {rows: [{key, label}], cols: [{key, label}], cells: Map("row\tcol" -> [jobId])}.
// A cell holds one step (its seeds share it, never other steps): when a later step has the same
// architecture and mechanisms as an earlier one but other settings (data, training, a grid axis),
// it gets a row of its own, labelled with the base and the step, right below the base's row.
export function buildGrid(entries) {
  const rows = new Map();
  const cols = new Map();
  const cells = new Map();
  const stepInCell = new Map();  // "base\tcol" -> the first step placed there
  for (const { jobId, step, name, config } of entries) {
    if (!config || !config.model) continue;
    const stepId = step ?? `job ${jobId}`;  // without a step, a job is a step of its own
    const base = baseOf(config.model);
    const col = mechanismsOf(config.model, config.train || {});
    const baseCell = `${base.key}\t${col.key}`;
    if (!stepInCell.has(baseCell)) stepInCell.set(baseCell, stepId);
    const row = stepInCell.get(baseCell) === stepId ? base : stepRow(base, stepId, name);
    if (!rows.has(row.key)) rows.set(row.key, { ...row, base: base.label, order: rows.size });
    if (!cols.has(col.key)) cols.set(col.key, col);
    const key = `${row.key}\t${col.key}`;
    if (!cells.has(key)) cells.set(key, []);
    cells.get(key).push(jobId);
  }
  const byRank = (a, b) => a.rank - b.rank || a.label.localeCompare(b.label);
  // A step's own row sorts with its base (same rank and base label), after the base's row.
  const byBase = (a, b) => a.rank - b.rank || a.base.localeCompare(b.base) || a.order - b.order;
  const sortedRows = [...rows.values()].sort(byBase).map(({ key, label }) => ({ key, label }));
  return { rows: sortedRows, cols: [...cols.values()].sort(byRank), cells };
}

// The row of a step that shares its base and mechanisms with an earlier step. The name loses its
// seed suffix: the row stands for every seed of the step.
function stepRow(base, step, name) {
  const stepName = (name || '').replace(/ \(seed \d+\)$/, '');
  return { key: `${base.key}#${step}`, label: `${base.label} · step ${step}${stepName ? ` ${stepName}` : ''}`, rank: base.rank };
}

// Mean and (sample) standard deviation of the finite values; null when there are none.
export function meanStd(values) {
  const v = values.filter((x) => typeof x === 'number' && Number.isFinite(x));
  if (!v.length) return null;
  const mean = v.reduce((a, b) => a + b, 0) / v.length;
  const variance = v.length > 1 ? v.reduce((a, b) => a + (b - mean) ** 2, 0) / (v.length - 1) : 0;
  return { mean, std: Math.sqrt(variance), n: v.length };
}
