// One matrix, live: header with progress and "Rerun failed", the sortable comparison table, the
// ablation grid, overlaid loss curves and (when a job is chosen) its detail panel.
//
// Live updates: `job` events patch the job map and mark rows dirty; a throttled render touches only
// dirty rows' cells. Results (Δ, verdicts) are computed by ratiod, so finished jobs trigger a throttled
// refetch of /results. `metric` events for plotted jobs trigger throttled ?after= fetches.

import { api, subscribe } from './api.js';
import { el, setText, setAttr, fmtLoss, fmtSigned, fmtCount, fmtSci, fmtTime, isNum, throttle,
  statusText, statusClass, PALETTE } from './util.js';
import { progressBar, updateProgressBar, countsText } from './matrix_list.js';
import { buildGrid, meanStd, baseOf, mechanismsOf } from './grid.js';
import { MetricStore, LineChart } from './charts.js';
import { mountJobDetail } from './job_detail.js';

const LOSS_NAMES = ['train_loss', 'val_loss'];
const DEFAULT_PLOTTED = 6;  // jobs plotted by default (besides the baseline) in a new view

// Numeric step ids sort numerically ("2" < "10"), others after them alphabetically.
function stepKey(step) {
  const n = Number(step);
  return Number.isFinite(n) ? [0, n, ''] : [1, 0, String(step)];
}
function compareSteps(a, b) {
  const [ka, kb] = [stepKey(a), stepKey(b)];
  return ka[0] - kb[0] || ka[1] - kb[1] || ka[2].localeCompare(kb[2]);
}

// The final val loss from the results row when ratiod has one, else from the live job summary.
function finalLoss(j, r) {
  return r && isNum(r.final_val_loss) ? r.final_val_loss : j.final_val_loss;
}

// The comparison table's columns; value(job, resultsRow) is what sorting compares (null sorts last).
function columns() {
  const num = (v) => (isNum(v) ? v : null);
  return [
    { key: 'plot', label: 'Plot', sortable: false },
    { key: 'step', label: 'Step', value: (j) => j.step, compare: compareSteps },
    { key: 'name', label: 'Name', value: (j) => j.name || '' },
    { key: 'status', label: 'Status', value: (j) => j.status || '' },
    { key: 'val', label: 'Val loss', title: 'Final validation loss', value: (j, r) => num(finalLoss(j, r)) },
    { key: 'best', label: 'Best', title: 'Best validation loss', value: (j, r) => num(r ? r.best_val_loss : j.best_val_loss) },
    { key: 'delta', label: 'Δ vs baseline', title: 'Final val loss minus the baseline step\'s (negative is better)', value: (j, r) => num(r && r.delta) },
    { key: 'params', label: 'Params', value: (j, r) => num(r && r.params_total) },
    { key: 'added', label: 'Added', title: 'Parameters added over the baseline', value: (j, r) => num(r && r.params_added) },
    { key: 'eff', label: 'Efficiency', title: 'Loss improvement per million added parameters', value: (j, r) => num(r && r.efficiency) },
    { key: 'tps', label: 'Tokens/s', value: (j, r) => num(r && r.tokens_per_s) },
    { key: 'decision', label: 'Decision', title: 'decide: matrices: the sequential decision on paired seeds and its interval for Δ', value: (j, r) => (r && r.decision && r.decision.outcome) || '' },
    { key: 'verdict', label: 'Verdict', value: (j, r) => (r && r.verdict) || '' },
  ];
}

// "better [−0.0520, −0.0310]": a decide matrix's outcome and its interval for Δ.
function decisionText(d) {
  const interval = isNum(d.lower) ? ` [${fmtSigned(d.lower)}, ${fmtSigned(d.upper)}]` : '';
  return `${d.outcome.replace('_', ' ')}${interval}`;
}

// One line above the table of a decide matrix: its settings, steps still open, GPU time at most left.
function decideText(decide) {
  const head = `Deciding with up to ${decide.max_seeds} seeds per step at ${(100 * decide.confidence).toFixed(3).replace(/\.?0+$/, '')} % confidence, minimum effect ${decide.min_effect}: `;
  if (!decide.open_steps) return `${head}every step is decided.`;
  const left = isNum(decide.gpu_seconds_left_at_most) ? `, at most ${(decide.gpu_seconds_left_at_most / 3600).toFixed(2)} GPU-hours to go` : '';
  return `${head}${decide.open_steps} step${decide.open_steps === 1 ? '' : 's'} open${left}.`;
}

export function mountMatrixView(root, route) {
  const matrixId = route.id;
  const jobs = new Map();      // job id -> job summary (kept current by `job` events)
  const results = new Map();   // job id -> results row
  const configs = new Map();   // config_hash -> full job spec (for the ablation grid)
  const plotted = new Set();   // job ids drawn on the loss charts
  const rowsById = new Map();  // job id -> {tr, cells}
  const dirty = new Set();
  const store = new MetricStore();
  let matrix = null;
  let baselineStep = null;     // ratiod's baseline step, else the plain GPT-2 step found in the configs
  let apiBaselineStep = null;
  let sort = { key: null, dir: 1 };
  let order = [];              // job ids in table order
  let detail = null;           // the open job panel
  let gridCells = new Map();   // "row\tcol" -> {td, jobIds}
  let gridSignature = '';
  let lastBaselineLoss = null;
  let destroyed = false;

  const cols = columns();

  // ---- layout ------------------------------------------------------------------------------------
  const title = el('h1');
  const crumbName = el('span');
  const bar = progressBar({}, 0);
  const countsLine = el('span', { class: 'muted' });
  const timesLine = el('span', { class: 'muted' });
  const buildsWarn = el('p', { class: 'warn', role: 'note', hidden: true });
  const rerunFailed = el('button', { type: 'button', onclick: onRerunFailed }, 'Rerun failed');
  const notice = el('p', { class: 'error', role: 'alert', hidden: true });
  const detailBox = el('section', { class: 'card', 'aria-label': 'Job detail', hidden: true });
  const thead = el('tr');
  const tbody = el('tbody');
  const table = el('table', { class: 'grid-table results', 'aria-label': 'Comparison' }, el('thead', {}, thead), tbody);
  const gridBox = el('div', { class: 'scroll-x' });
  const plainLine = el('p', { class: 'muted small', hidden: true });
  const decideLine = el('p', { class: 'muted small', hidden: true, dataset: { role: 'decide' } });
  const logX = el('input', { type: 'checkbox', id: 'logx', onchange: () => { valChart.setLogX(logX.checked); trainChart.setLogX(logX.checked); } });
  const valBox = el('div', { class: 'chart', role: 'img', 'aria-label': 'Validation loss curves' });
  const trainBox = el('div', { class: 'chart', role: 'img', 'aria-label': 'Training loss curves' });

  root.append(
    el('nav', { class: 'crumbs', 'aria-label': 'Breadcrumb' }, el('a', { href: '#/' }, 'Matrices'), ' / ', crumbName),
    el('div', { class: 'page-head' }, title, el('span', { class: 'spacer' }), rerunFailed),
    el('div', { class: 'summary' }, bar, countsLine, timesLine),
    buildsWarn, notice, detailBox,
    el('section', { class: 'card', 'aria-labelledby': 'h-compare' },
      el('h2', { id: 'h-compare' }, 'Comparison'),
      plainLine, decideLine,
      el('div', { class: 'scroll-x table-scroll' }, table)),
    el('section', { class: 'card', 'aria-labelledby': 'h-grid' },
      el('h2', { id: 'h-grid' }, 'Ablation grid'),
      el('p', { class: 'muted small' }, 'Rows: the architecture a mechanism is added to. Columns: the mechanisms. Cells: final val loss (mean ± std over seeds) or the job\'s status.'),
      gridBox),
    el('section', { class: 'card', 'aria-labelledby': 'h-curves' },
      el('div', { class: 'section-head' },
        el('h2', { id: 'h-curves' }, 'Loss curves'),
        el('label', { class: 'toggle' }, logX, ' log-x'),
        el('span', { class: 'muted small' }, 'Tick "Plot" in the table to overlay steps; drag to zoom, double-click to reset.')),
      el('div', { class: 'charts' }, valBox, trainBox)));

  const valChart = new LineChart(valBox, { title: 'Validation loss' });
  const trainChart = new LineChart(trainBox, { title: 'Training loss' });

  // ---- table -------------------------------------------------------------------------------------
  for (const c of cols) {
    const th = el('th', { scope: 'col', title: c.title, dataset: { key: c.key } });
    if (c.sortable === false) th.textContent = c.label;
    else th.append(el('button', { type: 'button', class: 'sort', onclick: () => setSort(c.key) }, c.label));
    thead.append(th);
  }

  function setSort(key) {
    sort = { key, dir: sort.key === key ? -sort.dir : 1 };
    for (const th of thead.children) {
      setAttr(th, 'aria-sort', th.dataset.key === key ? (sort.dir > 0 ? 'ascending' : 'descending') : null);
    }
    reorder();
  }

  function reorder() {
    const col = cols.find((c) => c.key === sort.key);
    const ids = [...jobs.keys()];
    ids.sort((a, b) => {
      const [ja, jb] = [jobs.get(a), jobs.get(b)];
      const [va, vb] = [col.value(ja, results.get(a)), col.value(jb, results.get(b))];
      if (va === null && vb !== null) return 1;  // missing values last in both directions
      if (vb === null && va !== null) return -1;
      let c = 0;
      if (col.compare) c = col.compare(va, vb);
      else if (typeof va === 'number') c = va - vb;
      else c = String(va).localeCompare(String(vb));
      return sort.dir * c || compareSteps(ja.step, jb.step);
    });
    if (ids.join('\n') === order.join('\n')) return;
    order = ids;
    tbody.append(...ids.map((id) => rowsById.get(id).tr));
  }

  function makeRow(id) {
    const cells = {};
    const tr = el('tr', { dataset: { jobId: id } });
    for (const c of cols) {
      const td = c.key === 'name' ? el('th', { scope: 'row' }) : el('td', { dataset: { col: c.key } });
      cells[c.key] = td;
      tr.append(td);
    }
    const j = jobs.get(id);
    const box = el('input', { type: 'checkbox', 'aria-label': `Plot ${j.step} ${j.name || ''}`.trim(), onchange: () => togglePlot(id, box.checked) });
    box.checked = plotted.has(id);
    cells.plot.append(box);
    cells.plotBox = box;
    cells.nameLink = el('a', { href: `#/matrix/${encodeURIComponent(matrixId)}/job/${encodeURIComponent(id)}` });
    cells.baseTag = el('span', { class: 'tag', hidden: true }, 'baseline');
    cells.name.append(cells.nameLink, cells.baseTag);
    cells.status.append(el('span', { class: 'badge' }));
    for (const k of ['val', 'best', 'delta', 'params', 'added', 'eff', 'tps']) cells[k].classList.add('num');
    const row = { tr, cells };
    rowsById.set(id, row);
    return row;
  }

  function renderRow(id) {
    const j = jobs.get(id);
    const r = results.get(id);
    const row = rowsById.get(id) || makeRow(id);
    const { cells } = row;
    row.tr.classList.toggle('is-baseline', j.step === baselineStep);
    setText(cells.step, String(j.step));
    setText(cells.nameLink, j.name || '');
    cells.baseTag.hidden = j.step !== baselineStep;
    const badge = cells.status.firstChild;
    badge.className = statusClass(j);
    setText(badge, statusText(j) + (j.attempts > 1 ? ` · attempt ${j.attempts}` : '') + (isNum(j.reused_from) ? ' · cached' : ''));
    setAttr(cells.status, 'title', j.reason || null);
    numCell(cells.val, finalLoss(j, r), fmtLoss);
    numCell(cells.best, r ? r.best_val_loss : j.best_val_loss, fmtLoss);
    deltaCell(cells.delta, r);
    numCell(cells.params, r && r.params_total, fmtCount);
    numCell(cells.added, r && r.params_added, fmtCount);
    numCell(cells.eff, r && r.efficiency, fmtSci);
    numCell(cells.tps, r && r.tokens_per_s, (v) => (isNum(v) ? fmtCount(Math.round(v)) : '–'));
    decisionCell(cells.decision, r);
    verdictCell(cells.verdict, r);
    cells.plotBox.checked = plotted.has(id);
  }

  function decisionCell(td, r) {
    td.replaceChildren();
    const d = r && r.decision;
    if (!d) { td.textContent = '–'; setAttr(td, 'title', null); return; }
    td.append(el('span', { class: `badge decision-${d.outcome}` }, decisionText(d)));
    const added = (d.history || []).map((h) => `job ${h.job_id}: ${h.reason}`);
    setAttr(td, 'title', [d.reason, ...added].join('\n'));
  }

  function numCell(td, v, fmt) {
    setText(td, fmt(v));
    setAttr(td, 'data-value', isNum(v) ? String(v) : null);
  }

  function deltaCell(td, r) {
    const d = r && r.delta;
    td.replaceChildren();
    setAttr(td, 'data-value', isNum(d) ? String(d) : null);
    if (r && r.step === baselineStep) { td.textContent = 'baseline'; td.className = 'num muted'; return; }
    if (!isNum(d)) { td.textContent = '–'; td.className = 'num'; return; }
    const pct = isNum(r.delta_pct) ? ` (${fmtSigned(r.delta_pct, 2)}%)` : '';
    td.append(fmtSigned(d) + pct);
    const noise = r.within_noise === true;
    td.className = `num ${noise ? 'noise' : d < 0 ? 'better' : d > 0 ? 'worse' : ''}`;
    if (noise) td.append(el('span', { class: 'tag' }, 'within noise'));
    const spread = isNum(r.val_loss_std) ? `seed std ${r.val_loss_std.toFixed(4)} over ${r.seeds || '?'} seeds` : 'single seed';
    td.title = `${d < 0 ? 'better' : 'worse'} than baseline; ${spread}`;
  }

  function verdictCell(td, r) {
    td.replaceChildren();
    if (!r || !r.verdict) {
      td.textContent = '–';
      setAttr(td, 'title', (r && r.verdict_reason) || null);
      return;
    }
    setAttr(td, 'title', null);
    td.append(el('span', {
      class: `badge verdict-${r.verdict.toLowerCase()}`, title: r.verdict_reason || '',
      'aria-label': `${r.verdict}: ${r.verdict_reason || ''}`,
    }, r.verdict));
    const dead = r.dead_params || [];
    if (dead.length) td.append(el('span', { class: 'tag dead', title: `Near-zero gradient: ${dead.join(', ')}` }, `${dead.length} dead`));
  }

  // ---- ablation grid -----------------------------------------------------------------------------
  // Rebuilds the grid's structure only when jobs or configs were added; otherwise re-renders just
  // the cells holding changed jobs (all cells when the baseline's loss moved: their colours depend on it).
  function renderGrid(changedIds) {
    // In step order, so the first of two steps with the same architecture keeps the base's row.
    // A seed ratiod added to a decide matrix is in neither the stored expansion nor the YAML: it
    // differs from its step's other seeds only in train.seed, so it takes their place in the grid.
    const stepConfig = new Map();
    for (const j of jobs.values()) if (configs.has(j.config_hash)) stepConfig.set(j.step, configs.get(j.config_hash));
    const entries = [...jobs.values()].sort((a, b) => compareSteps(a.step, b.step) || a.id - b.id)
      .map((j) => ({ jobId: j.id, step: j.step, name: j.name, config: configs.get(j.config_hash) || stepConfig.get(j.step) }));
    const known = entries.filter((e) => e.config);
    if (!known.length) {
      gridBox.replaceChildren(el('p', { class: 'muted' }, configs.size || !jobs.size ? 'No job configs.' : 'Loading configs…'));
      gridSignature = '';
      return;
    }
    const signature = `${known.length}/${configs.size}`;
    let all = false;
    if (signature !== gridSignature) {
      gridSignature = signature;
      buildGridTable(buildGrid(known));
      all = true;
    }
    const base = baselineLoss();
    if (base !== lastBaselineLoss) { lastBaselineLoss = base; all = true; }
    for (const cell of gridCells.values()) {
      if (all || cell.jobIds.some((id) => changedIds.has(id))) renderGridCell(cell);
    }
  }

  function buildGridTable(grid) {
    gridCells = new Map();
    const head = el('tr', {}, el('td'), ...grid.cols.map((c) => el('th', { scope: 'col' }, c.label)));
    const body = grid.rows.map((r) => el('tr', {}, el('th', { scope: 'row' }, r.label), ...grid.cols.map((c) => {
      const key = `${r.key}\t${c.key}`;
      const td = el('td', { class: 'cell', dataset: { row: r.label, col: c.label } });
      if (grid.cells.has(key)) gridCells.set(key, { td, jobIds: grid.cells.get(key) });
      return td;
    })));
    gridBox.replaceChildren(el('table', { class: 'grid-table ablation', 'aria-label': 'Ablation grid' }, el('thead', {}, head), el('tbody', {}, ...body)));
  }

  function baselineLoss() {
    const base = [...jobs.values()].filter((j) => j.step === baselineStep);
    const s = meanStd(base.map((j) => finalLoss(j, results.get(j.id))));
    return s ? s.mean : null;
  }

  function renderGridCell({ td, jobIds }) {
    const members = jobIds.map((id) => jobs.get(id)).filter(Boolean);
    const done = members.filter((j) => j.status === 'succeeded');
    const stats = meanStd(done.map((j) => finalLoss(j, results.get(j.id))));
    const others = members.filter((j) => j.status !== 'succeeded');
    td.replaceChildren();
    const first = members[0];
    const link = el('a', { href: `#/matrix/${encodeURIComponent(matrixId)}/job/${encodeURIComponent(first.id)}` });
    if (stats) {
      link.append(fmtLoss(stats.mean));
      if (stats.n > 1) link.append(el('span', { class: 'muted small' }, ` ±${stats.std.toFixed(4)} (n=${stats.n})`));
    }
    for (const j of others) link.append(el('span', { class: statusClass(j), title: j.reason || '' }, statusText(j)));
    td.append(link);
    td.title = members.map((j) => `step ${j.step} ${j.name || ''}: ${j.status}`).join('\n');
    const base = baselineLoss();
    td.className = 'cell';
    // Coloured only when ratiod says the difference is beyond the seed noise.
    const noise = done.some((j) => (results.get(j.id) || {}).within_noise === true);
    if (stats && isNum(base) && !noise && !members.some((j) => j.step === baselineStep)) {
      td.classList.add(stats.mean < base ? 'better' : stats.mean > base ? 'worse' : 'same');
    }
    if (noise) td.append(el('span', { class: 'tag' }, 'within noise'));
    // A decide matrix: the step's decision and interval (its results row is keyed by its first job).
    const decided = members.map((j) => results.get(j.id)).find((r) => r && r.decision);
    if (decided) td.append(el('span', { class: `tag decision-${decided.decision.outcome}`, title: decided.decision.reason }, decisionText(decided.decision)));
  }

  // ---- curves ------------------------------------------------------------------------------------
  function baselineId() {
    const base = [...jobs.values()].find((j) => j.step === baselineStep);
    return base ? base.id : null;
  }

  function togglePlot(id, on) {
    if (on) plotted.add(id); else plotted.delete(id);
    if (on) fetchCurves([id]); else drawCurves();
  }

  // A job that reused a cached result has its curves under the job that computed them.
  function seriesId(id) {
    const j = jobs.get(id);
    return j && j.reused_from !== null && j.reused_from !== undefined ? j.reused_from : id;
  }

  async function fetchCurves(ids) {
    await Promise.all(ids.map((id) => store.update(seriesId(id), LOSS_NAMES).catch(() => {})));
    if (!destroyed) drawCurves();
  }

  const drawCurves = throttle(drawCurvesNow, 150);
  function drawCurvesNow() {
    if (destroyed) return;
    const base = baselineId();
    const ids = [...plotted].filter((id) => jobs.has(id) && id !== base);
    ids.sort((a, b) => compareSteps(jobs.get(a).step, jobs.get(b).step));
    for (const [chart, name] of [[valChart, 'val_loss'], [trainChart, 'train_loss']]) {
      const series = [];
      if (base) {
        const b = jobs.get(base);
        const label = `${b.step} ${b.name || ''}` + (/baseline/i.test(b.name || '') ? '' : ' (baseline)');
        series.push({ label, color: 'var(--fg)', width: 2.5, ...store.series(seriesId(base), name) });
      }
      ids.forEach((id, i) => {
        const j = jobs.get(id);
        series.push({ label: `${j.step} ${j.name || ''}`, color: PALETTE[i % PALETTE.length], width: 1.5, ...store.series(seriesId(id), name) });
      });
      chart.setSeries(series);
    }
  }

  // ---- live updates ------------------------------------------------------------------------------
  const flush = throttle(() => {
    if (destroyed) return;
    let added = false;
    for (const id of dirty) {
      if (!rowsById.has(id)) added = true;
      renderRow(id);
    }
    const changed = new Set(dirty);
    dirty.clear();
    if (added || sort.key !== 'step') reorder();
    renderHeader();
    renderGrid(changed);
  }, 200);

  const refetchResults = throttle(() => loadResults(), 1500);
  const metricJobs = new Set();
  const refetchMetrics = throttle(() => {
    const ids = [...metricJobs].filter((id) => plotted.has(id) || id === baselineId());
    metricJobs.clear();
    if (ids.length) fetchCurves(ids);
  }, 1000);

  // Merges a job summary from an event or a fetch. A fetched list can be older than events that
  // overtook it (a 500-job answer is slow to arrive), so the newer `updated_at` wins.
  // Returns what changed: null (stale or same), or {added, moved} (moved: status/loss changed).
  function mergeJob(j) {
    const before = jobs.get(j.id);
    if (before && isNum(before.updated_at) && isNum(j.updated_at) && j.updated_at < before.updated_at) return null;
    if (before && j.attempts !== before.attempts) store.invalidate(j.id);
    jobs.set(j.id, { ...before, ...j, matrix_id: j.matrix_id ?? matrixId });
    dirty.add(j.id);
    return {
      added: !before,
      moved: !before || before.status !== j.status || before.final_val_loss !== j.final_val_loss,
    };
  }

  function onJob(j) {
    if (j.matrix_id !== undefined && String(j.matrix_id) !== String(matrixId)) return;
    if (!jobs.has(j.id) && j.matrix_id === undefined) return;
    const change = mergeJob(j);
    if (!change) return;
    if (change.moved) refetchResults();
    if (change.added) loadConfigs();
    if (detail && detail.jobId === j.id) detail.onJob(jobs.get(j.id));
    flush();
  }

  function onMatrix(m) {
    if (String(m.id) !== String(matrixId)) return;
    matrix = { ...matrix, ...m };
    if (m.counts && !sameCounts(m.counts)) reconcile();
    flush();
  }

  // ratiod drops the oldest events of a subscriber that falls behind (a burst of hundreds of jobs
  // failing at once): when its counts disagree with ours, or while jobs are active, refetch the jobs.
  function sameCounts(counts) {
    const mine = {};
    for (const j of jobs.values()) mine[j.status] = (mine[j.status] || 0) + 1;
    return Object.entries(counts).every(([status, n]) => (mine[status] || 0) === n);
  }
  const reconcile = throttle(() => { if (!destroyed) loadMatrix().catch(() => {}); }, 2000);
  const safetyNet = setInterval(() => {
    if ([...jobs.values()].some((j) => j.status === 'queued' || j.status === 'running')) reconcile();
  }, 15000);

  function onMetric(ev) {
    if (!jobs.has(ev.job)) return;
    if (detail && detail.jobId === ev.job) detail.onMetric(ev);
    if ((ev.names || LOSS_NAMES).some((n) => LOSS_NAMES.includes(n))) {
      metricJobs.add(ev.job);
      refetchMetrics();
    }
  }

  function renderHeader() {
    if (!matrix) return;
    setText(title, matrix.name || String(matrixId));
    setText(crumbName, matrix.name || String(matrixId));
    const counts = { queued: 0, running: 0, succeeded: 0, failed: 0, cancelled: 0 };
    for (const j of jobs.values()) counts[j.status] = (counts[j.status] || 0) + 1;
    const total = jobs.size;
    updateProgressBar(bar, counts, total);
    setText(countsLine, countsText(counts, total));
    const active = counts.queued + counts.running > 0;  // a rerun reopens a finished matrix
    setText(timesLine, `created ${fmtTime(matrix.created_at)}` + (matrix.finished_at && !active ? ` · finished ${fmtTime(matrix.finished_at)}` : ''));
    rerunFailed.disabled = counts.failed === 0;
    setText(rerunFailed, counts.failed ? `Rerun failed (${counts.failed})` : 'Rerun failed');
    const builds = matrix.build_ids || [];
    buildsWarn.hidden = builds.length < 2;
    setText(buildsWarn, `This matrix mixes ${builds.length} builds (${builds.join(', ')}): results may not be comparable.`);
  }

  async function onRerunFailed() {
    rerunFailed.disabled = true;
    try {
      const { requeued } = await api.rerunMatrix(matrixId, ['failed']);
      for (const id of requeued || []) store.invalidate(id);
      showNotice(`Requeued ${(requeued || []).length} failed job(s).`, 'info');
      await loadMatrix();
    } catch (e) {
      showNotice(`Rerun failed: ${e.message}`);
    }
  }

  function showNotice(text, kind = 'error') {
    notice.textContent = text;
    notice.className = kind === 'error' ? 'error' : 'info';
    notice.hidden = false;
  }

  // ---- loading -----------------------------------------------------------------------------------
  async function loadMatrix() {
    const res = await api.matrix(matrixId);
    matrix = { ...matrix, ...res.matrix };
    let moved = false;
    for (const j of res.jobs) {
      const change = mergeJob(j);
      if (change && change.moved) moved = true;
    }
    if (moved) refetchResults();
    flush();
  }

  async function loadResults() {
    try {
      const res = await api.results(matrixId);
      apiBaselineStep = res.baseline_step ?? null;
      updateBaseline();
      const plain = res.plain_scaling;
      plainLine.hidden = !(plain && plain.step !== undefined && plain.step !== null);
      if (!plainLine.hidden) {
        setText(plainLine, `Baseline: step ${baselineStep}. Plain scaling (step ${plain.step}, a wider MLP) has efficiency ${fmtSci(plain.efficiency)}: a mechanism below it buys less per parameter than widening.`);
      }
      decideLine.hidden = !res.decide;
      if (res.decide) setText(decideLine, decideText(res.decide));
      for (const r of res.rows || []) {
        const before = results.get(r.job_id);
        results.set(r.job_id, r);
        if (jobs.has(r.job_id) && (!before || JSON.stringify(before) !== JSON.stringify(r))) dirty.add(r.job_id);
      }
      flush();
    } catch (e) {
      showNotice(`Could not load results: ${e.message}`);
    }
  }

  // Configs for the grid: ratiod stores the matrix's expansion with it; older daemons only the YAML,
  // which /api/expand turns into the same jobs (one request for all jobs either way).
  let configsLoading = false;
  async function loadConfigs() {
    if (configsLoading || !matrix) return;
    const missing = () => [...jobs.values()].some((j) => !configs.has(j.config_hash));
    const stored = matrix.expanded && Array.isArray(matrix.expanded.jobs) ? matrix.expanded.jobs : [];
    for (const job of stored) configs.set(job.config_hash, job.config);
    if (!missing() || !matrix.yaml) { updateBaseline(); flush(); return; }
    configsLoading = true;
    try {
      const res = await api.expand(matrix.yaml);
      for (const job of res.jobs || []) configs.set(job.config_hash, job.config);
    } catch (e) {
      gridBox.replaceChildren(el('p', { class: 'muted' }, `Could not derive the grid: ${e.message}`));
    } finally {
      configsLoading = false;
    }
    updateBaseline();
    flush();
  }

  // Until ratiod names a baseline (it needs results), the step whose config adds nothing to GPT-2.
  function updateBaseline() {
    let step = apiBaselineStep;
    if (step === null) {
      const plain = [...jobs.values()].filter((j) => {
        const c = configs.get(j.config_hash);
        return c && c.model && baseOf(c.model).key === 'baseline' && mechanismsOf(c.model, c.train || {}).key === 'none';
      }).sort((a, b) => compareSteps(a.step, b.step))[0];
      step = plain ? plain.step : null;
    }
    if (step === baselineStep) return;
    baselineStep = step;
    for (const id of jobs.keys()) dirty.add(id);
    drawCurves();
    flush();
  }

  async function load() {
    try {
      await loadMatrix();
      await loadResults();
      if (!plotted.size) {
        const ids = [...jobs.values()].sort((a, b) => compareSteps(a.step, b.step)).map((j) => j.id);
        for (const id of ids.slice(0, DEFAULT_PLOTTED + 1)) plotted.add(id);
        for (const id of ids) dirty.add(id);
      }
      flush();
      loadConfigs();
      fetchCurves([...plotted]);
    } catch (e) {
      showNotice(`Could not load matrix ${matrixId}: ${e.message}`);
    }
  }

  // After a reconnect or a resync (events were missed): re-read everything this view shows.
  function refetch() {
    loadMatrix().then(loadResults).catch(() => {});
    fetchCurves([...plotted]);
    if (detail) detail.refresh();
  }

  function openDetail(jobId) {
    if (detail && detail.jobId === jobId) return;
    if (detail) detail.unmount();
    detail = null;
    detailBox.replaceChildren();
    detailBox.hidden = !jobId;
    if (!jobId) return;
    detail = mountJobDetail(detailBox, jobId, {
      store,
      metricsId: () => seriesId(jobId),
      result: () => results.get(jobId),
      closeHref: `#/matrix/${encodeURIComponent(matrixId)}`,
      onRequeued: () => { store.invalidate(jobId); loadMatrix(); },
    });
    detailBox.scrollIntoView({ block: 'nearest' });
  }

  const unsubs = [subscribe('job', onJob), subscribe('matrix', onMatrix), subscribe('metric', onMetric),
    subscribe('refetch', refetch)];
  setSort('step');
  load();
  openDetail(route.jobId);

  return {
    update: (next) => openDetail(next.jobId),
    unmount: () => {
      destroyed = true;
      clearInterval(safetyNet);
      unsubs.forEach((u) => u());
      if (detail) detail.unmount();
      valChart.destroy();
      trainChart.destroy();
    },
  };
}
