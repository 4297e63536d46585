// One job's panel inside the matrix view: status, attempts with reasons, live log tail, Rerun/Cancel,
// learned mixing weights (layer × parameter heatmap and over time) and gradient norms with dead
// (near-zero) parameters flagged.

import { api } from './api.js';
import { el, setText, fmtTime, fmtSci, isNum, throttle, statusText, statusClass, PALETTE } from './util.js';
import { LineChart } from './charts.js';

const DEAD_GRAD = 1e-8;  // a gradient norm below this counts as "no gradient" (defect 5 of the study)
const LOG_LINES = 200;

// "alpha/h.3.attn.ra_alpha" -> {layer: 3, param: "attn.ra_alpha"}; non-layer names get layer null.
export function splitParam(metricName) {
  const name = metricName.slice(metricName.indexOf('/') + 1);
  const m = /^h\.(\d+)\.(.+)$/.exec(name);
  return m ? { layer: Number(m[1]), param: m[2] } : { layer: null, param: name };
}

// metricsId(): the job whose series to show (a job that reused a cached result has none of its own).
export function mountJobDetail(root, jobId, { store, metricsId, result, closeHref, onRequeued }) {
  let job = null;
  let metricNames = [];
  let destroyed = false;

  const title = el('h2', { id: `job-${jobId}-title` }, `Job ${jobId}`);
  const status = el('span', { class: 'badge' });
  const facts = el('p', { class: 'muted small' });
  const rerun = el('button', { type: 'button', onclick: () => act(api.rerunJob, 'Rerun') }, 'Rerun');
  const cancel = el('button', { type: 'button', class: 'danger', onclick: () => act(api.cancelJob, 'Cancel') }, 'Cancel');
  const message = el('p', { role: 'alert', hidden: true });
  const attemptsBody = el('tbody');
  const logPre = el('pre', { class: 'log', tabindex: '0', 'aria-label': 'Log tail' });
  const alphaTable = el('div', { class: 'scroll-x' });
  const gradTable = el('div', { class: 'scroll-x' });
  const alphaPick = el('select', { 'aria-label': 'Mixing parameter to plot', onchange: drawOverTime });
  const gradPick = el('select', { 'aria-label': 'Gradient parameter to plot', onchange: drawOverTime });
  const alphaBox = el('div', { class: 'chart', role: 'img', 'aria-label': 'Mixing weights over time' });
  const gradBox = el('div', { class: 'chart', role: 'img', 'aria-label': 'Gradient norms over time' });
  const alphaOverTime = el('div', { hidden: true }, el('div', { class: 'section-head' }, el('h4', {}, 'Over time'), alphaPick), alphaBox);
  const gradOverTime = el('div', { hidden: true }, el('div', { class: 'section-head' }, el('h4', {}, 'Over time'), gradPick), gradBox);

  root.setAttribute('aria-labelledby', title.id);
  root.append(
    el('div', { class: 'section-head' }, title, status, el('span', { class: 'spacer' }), rerun, cancel,
      el('a', { class: 'button', href: closeHref, 'aria-label': 'Close job detail' }, 'Close')),
    facts, message,
    el('div', { class: 'two-col' },
      el('div', {},
        el('h3', {}, 'Attempts'),
        el('div', { class: 'scroll-x' }, el('table', { class: 'grid-table compact', 'aria-label': 'Attempts' },
          el('thead', {}, el('tr', {}, ...['#', 'Status', 'Reason', 'Exit', 'Slot', 'Build', 'Started', 'Ended']
            .map((h) => el('th', { scope: 'col' }, h)))),
          attemptsBody))),
      el('div', {}, el('h3', {}, 'Log tail'), logPre)),
    el('div', { class: 'two-col' },
      el('div', {}, el('h3', {}, 'Mixing weights per layer'), alphaTable, alphaOverTime),
      el('div', {}, el('h3', {}, 'Gradient norms'), gradTable, gradOverTime)));

  const alphaChart = new LineChart(alphaBox, { title: '', height: 200 });
  const gradChart = new LineChart(gradBox, { title: '', height: 200, logY: true });

  async function act(call, label) {
    try {
      await call(jobId);
      showMessage(`${label} requested.`, 'info');
      if (call === api.rerunJob) onRequeued();
      loadJob();
    } catch (e) {
      showMessage(`${label} failed: ${e.message}`, 'error');
    }
  }

  function showMessage(text, kind) {
    message.textContent = text;
    message.className = kind;
    message.hidden = false;
  }

  function renderJob(j, attempts) {
    job = { ...job, ...j };
    setText(title, `Step ${job.step} · ${job.name || ''}`);
    status.className = statusClass(job);
    setText(status, statusText(job));
    const iter = isNum(job.iter) ? `iter ${job.iter}/${job.max_iters ?? '?'}` : '';
    setText(facts, [iter, job.config_hash && `config ${job.config_hash}`, job.reason && `reason: ${job.reason}`]
      .filter(Boolean).join(' · '));
    cancel.disabled = !['queued', 'running'].includes(job.status);
    rerun.disabled = ['queued', 'running'].includes(job.status);
    if (attempts && !attempts.length) {
      attemptsBody.replaceChildren(el('tr', {}, el('td', { colspan: '8', class: 'muted' }, 'No attempt yet: the job is waiting for a slot.')));
    } else if (attempts) {
      attemptsBody.replaceChildren(...attempts.map((a) => el('tr', {},
        el('td', { class: 'num' }, String(a.n)),
        el('td', {}, el('span', { class: `badge status-${a.status}` }, a.status)),
        el('td', { class: 'reason' }, a.reason || ''),
        el('td', { class: 'num' }, a.exit_code ?? '–'),
        el('td', {}, a.slurm ? `SLURM ${a.slurm.job_id}${a.slurm.state ? ` (${a.slurm.state})` : ''}` : a.slot || '–'),
        el('td', { class: 'mono' }, a.build_id || '–'),
        el('td', { class: 'num' }, fmtTime(a.started_at)),
        el('td', { class: 'num' }, fmtTime(a.ended_at)))));
    }
  }

  async function loadJob() {
    try {
      const res = await api.job(jobId);
      if (!destroyed) renderJob(res.job, res.attempts || []);
    } catch (e) {
      showMessage(`Could not load job ${jobId}: ${e.message}`, 'error');
    }
  }

  async function loadLog() {
    try {
      const text = await api.log(jobId, LOG_LINES);
      if (destroyed) return;
      const atBottom = logPre.scrollTop + logPre.clientHeight >= logPre.scrollHeight - 4;
      const body = typeof text === 'string' ? text : JSON.stringify(text);
      setText(logPre, body || '(the log is empty so far)');
      if (atBottom) logPre.scrollTop = logPre.scrollHeight;
    } catch (e) {
      setText(logPre, e.status === 404 ? '(no log yet)' : `Could not load the log: ${e.message}`);
    }
  }

  // ---- mixing weights and gradients --------------------------------------------------------------
  async function loadMechanisms() {
    try {
      metricNames = await store.update(metricsId(), ['val_loss']);
      const wanted = metricNames.filter((n) => n.startsWith('alpha/') || n.startsWith('grad/'));
      if (wanted.length) await store.update(metricsId(), wanted);
    } catch {
      return;  // the job may not have reported yet
    }
    if (destroyed) return;
    renderHeatmap(alphaTable, 'alpha/', 'Mixing weights', false);
    renderHeatmap(gradTable, 'grad/', 'Gradient norms', true);
    fillPicker(alphaPick, 'alpha/');
    fillPicker(gradPick, 'grad/');
    drawOverTime();
  }

  function latest(name) {
    const s = store.series(metricsId(), name);
    return s.y.length ? s.y.at(-1) : null;
  }

  // Layer × parameter table of the latest values; colour is relative within each column
  // (a learned ratio near 4 and an alpha near 0.1 do not share a scale).
  function renderHeatmap(box, prefix, label, flagDead) {
    const names = metricNames.filter((n) => n.startsWith(prefix));
    if (!names.length) {
      box.replaceChildren(el('p', { class: 'muted' }, `No ${label.toLowerCase()} reported (this step may have none).`));
      return;
    }
    const params = [...new Set(names.map((n) => splitParam(n).param))].sort();
    const layers = [...new Set(names.map((n) => splitParam(n).layer))].sort((a, b) => (a ?? -1) - (b ?? -1));
    const dead = new Set(((result() || {}).dead_params) || []);
    const range = new Map(params.map((p) => {
      const vals = names.filter((n) => splitParam(n).param === p).map(latest).filter(isNum);
      return [p, [Math.min(...vals), Math.max(...vals)]];
    }));
    const rows = layers.map((layer) => el('tr', {}, el('th', { scope: 'row' }, layer === null ? '–' : `layer ${layer}`),
      ...params.map((p) => {
        const full = layer === null ? `${prefix}${p}` : `${prefix}h.${layer}.${p}`;
        const v = latest(full);
        if (!names.includes(full) || !isNum(v)) return el('td', { class: 'heat empty' }, '');
        const [lo, hi] = range.get(p);
        const t = hi > lo ? (v - lo) / (hi - lo) : 0.5;
        const isDead = flagDead && (Math.abs(v) < DEAD_GRAD || dead.has(full.slice(prefix.length)));
        const td = el('td', {
          class: `heat${isDead ? ' dead' : ''}`, title: `${full.slice(prefix.length)} = ${v}`,
          dataset: { name: full, value: String(v) }, style: `--t:${t.toFixed(3)}`,
        }, fmtSci(v));
        if (isDead) td.append(el('span', { class: 'tag dead' }, 'dead'));
        return td;
      })));
    box.replaceChildren(el('table', { class: 'grid-table heatmap', 'aria-label': label },
      el('thead', {}, el('tr', {}, el('td'), ...params.map((p) => el('th', { scope: 'col' }, p)))),
      el('tbody', {}, ...rows)));
  }

  function fillPicker(select, prefix) {
    const params = [...new Set(metricNames.filter((n) => n.startsWith(prefix)).map((n) => splitParam(n).param))].sort();
    const keep = select.value;
    select.replaceChildren(...params.map((p) => el('option', { value: p }, p)));
    if (params.includes(keep)) select.value = keep;
    select.hidden = params.length === 0;
  }

  function drawOverTime() {
    for (const [chart, select, prefix, box] of [[alphaChart, alphaPick, 'alpha/', alphaOverTime], [gradChart, gradPick, 'grad/', gradOverTime]]) {
      const names = metricNames.filter((n) => n.startsWith(prefix) && splitParam(n).param === select.value);
      box.hidden = names.length === 0;
      if (box.hidden) continue;
      chart.setSeries(names.map((n, i) => {
        const { layer } = splitParam(n);
        return { label: layer === null ? select.value : `layer ${layer}`, color: PALETTE[i % PALETTE.length], ...store.series(metricsId(), n) };
      }));
    }
  }

  // ---- live --------------------------------------------------------------------------------------
  const refreshJob = throttle(() => { loadJob(); loadLog(); }, 1000);
  const refreshMechanisms = throttle(loadMechanisms, 3000);
  const logTimer = setInterval(() => { if (job && job.status === 'running') loadLog(); }, 2000);

  loadJob();
  loadLog();
  loadMechanisms();

  return {
    jobId,
    onJob: (j) => { renderJob(j); refreshJob(); },
    onMetric: (ev) => {
      if ((ev.names || []).some((n) => n.startsWith('alpha/') || n.startsWith('grad/'))) refreshMechanisms();
    },
    refresh: () => { refreshJob(); refreshMechanisms(); },
    unmount: () => {
      destroyed = true;
      clearInterval(logTimer);
      alphaChart.destroy();
      gradChart.destroy();
    },
  };
}
