// Small DOM and formatting helpers shared by every view. No framework: views build their DOM
// once and then update individual cells, so a live event never re-renders a whole page.

// el('td', {class: 'num', title: 'x'}, 'text', childNode) -> HTMLElement
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

// Sets textContent only when it changed (cheap no-op for the common unchanged case).
export function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

export function setAttr(node, name, value) {
  if (value === null || value === undefined) {
    if (node.hasAttribute(name)) node.removeAttribute(name);
  } else if (node.getAttribute(name) !== String(value)) {
    node.setAttribute(name, value);
  }
}

export const isNum = (v) => typeof v === 'number' && Number.isFinite(v);

export function fmtLoss(v) { return isNum(v) ? v.toFixed(4) : '–'; }

export function fmtSigned(v, digits = 4) {
  if (!isNum(v)) return '–';
  return (v > 0 ? '+' : v < 0 ? '−' : '±') + Math.abs(v).toFixed(digits);
}

// 124439808 -> "124.44M", 12345 -> "12.3K"
export function fmtCount(v) {
  if (!isNum(v)) return '–';
  const a = Math.abs(v);
  const sign = v < 0 ? '−' : '';
  if (a >= 1e9) return sign + (a / 1e9).toFixed(2) + 'B';
  if (a >= 1e6) return sign + (a / 1e6).toFixed(2) + 'M';
  if (a >= 1e3) return sign + (a / 1e3).toFixed(1) + 'K';
  return sign + String(a);
}

// Three significant digits, scientific for very small or large magnitudes.
export function fmtSci(v) {
  if (!isNum(v)) return '–';
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(2);
  return Number(v.toPrecision(3)).toString();
}

// Accepts ISO strings or unix seconds; shows local "YYYY-MM-DD HH:MM".
export function fmtTime(t) {
  if (t === null || t === undefined || t === '') return '–';
  const d = typeof t === 'number' ? new Date(t * 1000) : new Date(t);
  if (Number.isNaN(d.getTime())) return String(t);
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

// Runs fn at most once per `ms`, always with the latest call's arguments (trailing edge).
export function throttle(fn, ms) {
  let timer = null;
  let lastRun = 0;
  let pendingArgs = null;
  return (...args) => {
    pendingArgs = args;
    if (timer) return;
    const wait = Math.max(0, lastRun + ms - Date.now());
    timer = setTimeout(() => {
      timer = null;
      lastRun = Date.now();
      fn(...pendingArgs);
    }, wait);
  };
}

export const STATUSES = ['queued', 'running', 'succeeded', 'failed', 'cancelled'];

// Run progress as "running 40%" when the iteration is known.
// A running job whose SLURM job still waits in SLURM's queue (docs/api.md, job summary `slurm`).
export function queuedInSlurm(job) {
  return job.status === 'running' && job.slurm != null && job.slurm.state === 'PENDING';
}

// The badge class: a job queued in SLURM looks queued, whatever ratiod's own status.
export function statusClass(job) {
  return `badge status-${queuedInSlurm(job) ? 'queued' : job.status}`;
}

export function statusText(job) {
  if (queuedInSlurm(job)) return `queued in SLURM${job.slurm.reason ? `: ${job.slurm.reason}` : ''}`;
  if (job.status === 'running' && isNum(job.iter) && isNum(job.max_iters) && job.max_iters > 0) {
    return `running ${Math.floor((100 * job.iter) / job.max_iters)}%`;
  }
  return job.status || '–';
}

// Distinct colours for curves; the baseline is always drawn in the foreground colour.
export const PALETTE = ['#2f6fde', '#e0602b', '#1a9c6b', '#a444c9', '#d23a64', '#8a7a12', '#1797b8',
  '#6b5bd6', '#c26a00', '#3b8f2f', '#b8326f', '#4f6d8f'];
