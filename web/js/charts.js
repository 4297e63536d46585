// Metric series cached per job with incremental fetches (?after=), and a uPlot line chart wrapper.
// uPlot is loaded as a global by index.html (vendor/uPlot.iife.min.js).

import { api } from './api.js';
import { fmtSci } from './util.js';

const FULL_POINTS = 800;  // server-side downsampling target for a first fetch
const MAX_KEPT = 4000;    // after many increments, halve the older points to keep redraws cheap

// jobId -> name -> {x: number[], y: number[]}; fetches only what is new since the last call.
export class MetricStore {
  constructor() {
    this.jobs = new Map();
    this.inflight = new Map();  // jobId -> Promise
  }

  series(jobId, name) {
    const job = this.jobs.get(jobId);
    return (job && job.get(name)) || { x: [], y: [] };
  }

  // A new attempt may restart iterations from an earlier checkpoint: forget and refetch.
  invalidate(jobId) { this.jobs.delete(jobId); }

  // Fetches `names` for jobId: everything (downsampled) the first time, then only iterations after
  // the oldest last-known iteration. Concurrent calls for one job share a request.
  async update(jobId, names) {
    while (this.inflight.has(jobId)) await this.inflight.get(jobId).catch(() => {});
    const job = this.jobs.get(jobId) || new Map();
    this.jobs.set(jobId, job);
    const lasts = names.map((n) => (job.has(n) && job.get(n).x.length ? job.get(n).x.at(-1) : null));
    const after = lasts.includes(null) ? null : Math.min(...lasts);
    const p = api.metrics(jobId, names, FULL_POINTS, after).then((res) => {
      for (const name of names) {
        const points = (res.series && res.series[name]) || [];
        if (!job.has(name)) job.set(name, { x: [], y: [] });
        appendPoints(job.get(name), points);
      }
      return res.names || [];
    });
    this.inflight.set(jobId, p);
    try { return await p; } finally { this.inflight.delete(jobId); }
  }
}

function appendPoints(s, points) {
  const last = s.x.length ? s.x.at(-1) : -Infinity;
  for (const [iter, value] of points) {
    if (iter > last) { s.x.push(iter); s.y.push(value); }
  }
  if (s.x.length > MAX_KEPT) {  // keep every other point of the older half
    const half = s.x.length >> 1;
    const keep = (_, i) => i >= half || i % 2 === 0;
    s.x = s.x.filter(keep);
    s.y = s.y.filter(keep);
  }
}

function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

// Canvas strokes cannot use CSS variables: 'var(--fg)' -> its current value.
function resolveColor(color) {
  const m = /^var\((--[\w-]+)\)$/.exec(color);
  return m ? cssVar(m[1]) || '#000' : color;
}

// A uPlot chart of several (x, y) series with their own x values (joined on the union of x).
// Drag to zoom on x, double-click to reset; later data keeps the zoom.
export class LineChart {
  constructor(container, { title, logY = false, height = 260 }) {
    this.container = container;
    this.title = title;
    this.logY = logY;
    this.logX = false;
    this.height = height;
    this.plot = null;
    this.signature = '';
    this.series = [];
    this.zoomed = false;
    this.empty = document.createElement('p');
    this.empty.className = 'chart-empty muted';
    this.empty.textContent = 'No points yet';
    container.append(this.empty);
    this.resize = new ResizeObserver(() => {
      if (this.plot) this.plot.setSize({ width: this.width(), height: this.height });
    });
    this.resize.observe(container);
  }

  width() { return Math.max(240, this.container.clientWidth); }

  // series: [{label, color, width, x, y}]
  setSeries(series) {
    this.series = series;
    const signature = series.map((s) => `${s.label}|${s.color}|${s.width}`).join('\n') + `|${this.logX}`;
    const data = this.data();
    this.empty.hidden = series.some((s) => s.x.length > 0);
    if (!this.plot || signature !== this.signature) {
      this.build(data);
      this.signature = signature;
    } else {
      this.plot.setData(data, !this.zoomed);
    }
  }

  setLogX(on) {
    this.logX = on;
    this.zoomed = false;
    this.setSeries(this.series);
  }

  data() {
    const keepX = (x) => !this.logX || x > 0;
    const keepY = (y) => !this.logY || y > 0;
    const tables = this.series.map((s) => {
      const xs = [];
      const ys = [];
      for (let i = 0; i < s.x.length; i++) {
        if (keepX(s.x[i]) && keepY(s.y[i])) { xs.push(s.x[i]); ys.push(s.y[i]); }
      }
      return [xs, ys];
    });
    if (!tables.length) return [[]];
    return tables.length === 1 ? tables[0] : uPlot.join(tables);
  }

  build(data) {
    if (this.plot) this.plot.destroy();
    const fg = cssVar('--muted') || '#666';
    const grid = cssVar('--grid') || '#ddd';
    const axis = { stroke: fg, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
    const opts = {
      title: this.title,
      width: this.width(),
      height: this.height,
      scales: { x: { time: false, distr: this.logX ? 3 : 1 }, y: { distr: this.logY ? 3 : 1 } },
      series: [{ label: 'iter' }, ...this.series.map((s) => ({
        label: s.label, stroke: resolveColor(s.color), width: s.width || 1.5, spanGaps: true, points: { show: false },
      }))],
      // Tick labels with 3 significant digits: uPlot's default prints 4e-6 as "0" on a log scale.
      axes: [{ ...axis }, { ...axis, size: 60, values: (u, ticks) => ticks.map((v) => (v === null ? '' : fmtSci(v))) }],
      cursor: { drag: { x: true, y: false } },
      hooks: { setSelect: [(u) => { if (u.select.width > 0) this.zoomed = true; }] },
    };
    this.plot = new uPlot(opts, data, this.container);
    this.plot.over.addEventListener('dblclick', () => { this.zoomed = false; });
  }

  destroy() {
    this.resize.disconnect();
    if (this.plot) this.plot.destroy();
    this.plot = null;
  }
}
