'use strict';
// Callbridge admin console: live calls (SSE), call records, the agent pipeline, and a
// browser "web carrier" call (Talk). Plain DOM, no framework; every server string goes
// through textContent (never innerHTML), and phone numbers are shown masked.

(() => { // one scope for the whole page: nothing leaks onto window but the test hooks
// ---- test hooks

const talk = {
  state: 'idle', // 'idle' | 'connecting' | 'live' | 'ended'
  callId: null,
  framesSent: 0,
  framesReceived: 0, // media messages received from the gateway
  clears: 0,
  marksEchoed: 0,
  playedSamples: 0, // real audio samples the player output, as last reported by the worklet
  buffered: 0, // samples waiting in the player's jitter buffer (same report)
  underruns: 0, // times the player ran dry mid-turn (same report)
  closeCode: null,
  closeReason: null,
  levelLog: [], // [performance.now(), dBFS] every 50 ms during a call, at most 2000
  level: () => currentLevel(),
  peakSince: (ms) => peakSince(ms),
};
const hooks = {
  talk,
  live: {
    connected: false,
    calls: () => [...liveCalls.values()].filter((c) => !c.ended).map((c) => c.data.call_id),
  },
  errors: [],
};
window.callbridgeConsole = hooks;

// Something unexpected: kept for the tests, and the one kind of console output we make.
function report(what, err) {
  const text = err ? `${what}: ${err && err.message ? err.message : err}` : what;
  hooks.errors.push(text);
  console.error(`callbridge console: ${text}`);
}
window.addEventListener('error', (e) => hooks.errors.push(String(e.message)));
window.addEventListener('unhandledrejection', (e) => hooks.errors.push(String(e.reason)));

// ---- helpers

const $ = (id) => document.getElementById(id);
const SVG = 'http://www.w3.org/2000/svg';

// el('div', {class: 'x', 'data-id': id}, 'text', child...) — text children are text nodes.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') node.className = v;
    else node.setAttribute(k, v === true ? '' : v);
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function svgEl(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

// A number as the server masks it (gateway.logs.mask_number): "+14155550100" → "***0100",
// "sip:alice@…" → "sip:***", anything else "***"; "browser" (a web call) as it is.
function mask(number) {
  if (typeof number !== 'string' || !number) return '—';
  if (number === 'browser' || number.startsWith('***')) return number; // already shown safe
  const digits = number.replace(/\D/g, '');
  if (digits.length >= 7 && digits.length >= number.length - 3) return `***${digits.slice(-4)}`;
  return number.includes(':') ? `${number.split(':', 1)[0]}:***` : '***';
}

function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return '—';
  const s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, '0');
  return h ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
}

function formatTime(iso) {
  const t = Date.parse(iso);
  return isNaN(t) ? (iso || '—') : new Date(t).toLocaleString();
}

// Seconds since the call started, for timeline rows ("+12.3 s").
function offset(iso, startIso) {
  const d = (Date.parse(iso) - Date.parse(startIso)) / 1000;
  return isFinite(d) ? `+${d.toFixed(1)} s` : '';
}

function detailText(body, fallback) {
  const d = body && body.detail;
  if (typeof d === 'string') return d;
  if (Array.isArray(d)) return d.map((x) => (x && x.msg) || JSON.stringify(x)).join('; ');
  return fallback;
}

// fetch on the session cookie. A 401 means the session is gone: back to the login form,
// and the returned promise never settles (nothing left to do on this page).
async function api(url, options) {
  const res = await fetch(url, { credentials: 'same-origin', ...options });
  if (res.status === 401) {
    location.assign('/console');
    return new Promise(() => {});
  }
  return res;
}

// {res, body} (body: the JSON, or null), or null when the gateway cannot be reached.
async function request(url, options) {
  let res;
  try {
    res = await api(url, options);
  } catch {
    return null;
  }
  const body = await res.json().catch(() => null);
  return { res, body };
}

// ---- tabs

const TABS = ['live', 'recent', 'agents', 'talk'];
const onShow = {}; // view name → called each time the view is shown

function showTab(name) {
  for (const t of TABS) {
    const selected = t === name;
    const tab = $(`tab-${t}`);
    tab.setAttribute('aria-selected', String(selected));
    tab.tabIndex = selected ? 0 : -1;
    $(`view-${t}`).hidden = !selected;
  }
  if (location.hash !== `#${name}`) history.replaceState(null, '', `#${name}`);
  if (onShow[name]) onShow[name]();
}

for (const t of TABS) $(`tab-${t}`).addEventListener('click', () => showTab(t));
document.querySelector('.tabs').addEventListener('keydown', (e) => {
  const step = e.key === 'ArrowRight' ? 1 : e.key === 'ArrowLeft' ? -1 : 0;
  if (!step) return;
  const current = TABS.findIndex((t) => $(`tab-${t}`).getAttribute('aria-selected') === 'true');
  const next = TABS[(current + step + TABS.length) % TABS.length];
  showTab(next);
  $(`tab-${next}`).focus();
});

// ---- transcripts

function transcriptLine(entry) {
  const role = ['caller', 'agent', 'note'].includes(entry.role) ? entry.role : 'note';
  const who = role === 'caller' ? 'Caller' : role === 'agent' ? (entry.agent_id || 'Agent') : 'Note';
  return el('div', { class: `line role-${role}`, title: entry.at ? formatTime(entry.at) : null },
    el('span', { class: 'who' }, who),
    el('span', { class: 'text' }, entry.text || ''),
    entry.interrupted ? el('span', { class: 'interrupted' }, '(interrupted)') : null);
}

// Lines a transcript box keeps: an hour-long call must not grow the page without end (the
// call's record keeps every line).
const MAX_LINES = 300;

// Append lines, keeping the view pinned to the bottom unless the user scrolled up; a live
// transcript keeps its last `max` lines.
function appendLines(box, entries, max = MAX_LINES) {
  const pinned = box.scrollHeight - box.scrollTop - box.clientHeight < 24;
  for (const entry of entries) box.append(transcriptLine(entry));
  while (box.childElementCount > max) box.firstElementChild.remove();
  if (pinned) box.scrollTop = box.scrollHeight;
}

function setLines(box, entries) {
  box.replaceChildren();
  appendLines(box, entries || [], Infinity); // a record's transcript is shown whole
  box.scrollTop = box.scrollHeight;
}

function handoffChain(call) {
  const handoffs = call.handoffs || [];
  if (!handoffs.length) return 'none';
  const chain = [handoffs[0].from, ...handoffs.map((h) => h.to)].join(' → ');
  return `${handoffs.length}: ${chain}`;
}

// ---- live calls (SSE)

const liveCalls = new Map(); // call_id → {data, card, parts, ended}
let source = null;
let retryMs = 1000;

function setConnected(connected, text) {
  hooks.live.connected = connected;
  const state = $('live-state');
  state.textContent = text;
  state.classList.toggle('ok', connected);
}

function openLive() {
  const es = new EventSource('/console/api/live');
  source = es;
  es.onopen = () => {
    retryMs = 1000;
    setConnected(true, 'live');
  };
  const handlers = {
    snapshot: (body) => onSnapshot(body.calls || []),
    call: upsertCall,
    transcript: onTranscript,
    ended: onEnded,
  };
  for (const [name, handle] of Object.entries(handlers)) {
    es.addEventListener(name, (e) => {
      let data;
      try {
        data = JSON.parse(e.data);
      } catch (err) {
        report(`bad ${name} event`, err);
        return;
      }
      if (data && (name === 'snapshot' || data.call_id)) handle(data);
    });
  }
  // The browser retries by itself after a dropped stream (readyState CONNECTING). It gives up
  // (CLOSED) on an HTTP error: then see whether the session is gone, else retry later.
  es.onerror = () => {
    if (es.readyState !== EventSource.CLOSED) {
      setConnected(false, 'reconnecting…');
      return;
    }
    es.close();
    setConnected(false, 'offline, retrying…');
    setTimeout(async () => {
      if (source !== es) return;
      try {
        await api('/console/api/agents'); // 401 → login page
      } catch {
        // server unreachable: retry anyway
      }
      openLive();
    }, retryMs);
    retryMs = Math.min(retryMs * 2, 30000);
  };
}

function onSnapshot(calls) {
  const ids = new Set(calls.map((c) => c.call_id));
  for (const [id, entry] of liveCalls) {
    if (!ids.has(id)) removeCard(id, entry);
  }
  for (const call of calls) upsertCall(call);
  updateEmpty();
}

function upsertCall(call) {
  let entry = liveCalls.get(call.call_id);
  if (!entry || entry.ended) {
    if (entry) removeCard(call.call_id, entry);
    entry = createCard(call);
    liveCalls.set(call.call_id, entry);
    $('live-calls').append(entry.card);
  }
  const previous = entry.data;
  entry.data = { ...previous, ...call };
  if (!Array.isArray(call.transcript)) entry.data.transcript = (previous && previous.transcript) || [];
  renderCard(entry, !previous || Array.isArray(call.transcript));
  if (call.call_id === talk.callId) renderTalkCall(entry.data);
  updateEmpty();
}

function createCard(call) {
  const parts = {
    route: el('span', { class: 'route' }),
    agent: el('strong', { class: 'agent' }),
    duration: el('span', { class: 'duration' }),
    handoffs: el('span', { class: 'handoffs' }),
    status: el('span', { class: 'card-status', role: 'status' }),
    transcript: el('div', { class: 'transcript', 'aria-live': 'polite' }),
    end: el('button', { type: 'button', class: 'end-call danger' }, 'End call'),
  };
  const card = el('article', { class: 'live-call card', 'data-call-id': call.call_id },
    el('header', {},
      el('span', { class: 'carrier' }, call.carrier || '?'),
      parts.route,
      parts.duration),
    el('p', { class: 'meta' }, 'Agent ', parts.agent, ' · Handoffs ', parts.handoffs),
    parts.transcript,
    el('footer', {}, parts.status, parts.end));
  const entry = { data: null, card, parts, ended: false };
  parts.end.addEventListener('click', () => endCall(call.call_id, entry));
  return entry;
}

function renderCard(entry, withTranscript) {
  const { data, parts } = entry;
  parts.route.textContent = `${data.direction || ''} ${mask(data.from)} → ${mask(data.to)}`;
  parts.agent.textContent = data.agent || '—';
  parts.handoffs.textContent = handoffChain(data);
  tickCard(entry);
  if (withTranscript) setLines(parts.transcript, data.transcript);
}

function tickCard(entry) {
  if (entry.ended) return;
  const started = Date.parse(entry.data.started_at);
  entry.parts.duration.textContent = isNaN(started) ? '—' : formatDuration((Date.now() - started) / 1000);
}

function onTranscript(event) {
  const { call_id: callId, ...entry } = event;
  const live = liveCalls.get(callId);
  if (live && !live.ended) {
    live.data.transcript.push(entry);
    if (live.data.transcript.length > MAX_LINES) live.data.transcript.shift();
    appendLines(live.parts.transcript, [entry]);
  }
  if (callId === talk.callId) {
    talkEntries.push(entry);
    appendLines($('talk-transcript'), [entry]);
  }
}

function onEnded(body) {
  const entry = liveCalls.get(body.call_id);
  if (body.call_id === talk.callId) {
    talkEndReason = body.end_reason || null;
    if (talk.state === 'ended') $('talk-status').textContent = talkEndedText();
  }
  if (!entry || entry.ended) return;
  // Shown briefly as ended, but no longer a .live-call (tests and counts see it gone at once).
  entry.ended = true;
  entry.card.classList.replace('live-call', 'ended-call');
  entry.parts.duration.textContent = formatDuration(body.duration_s);
  entry.parts.status.textContent = `Ended: ${body.end_reason || '?'}`;
  entry.parts.end.disabled = true;
  setTimeout(() => {
    if (liveCalls.get(body.call_id) === entry) removeCard(body.call_id, entry);
    updateEmpty();
  }, 3000);
  updateEmpty();
}

function removeCard(id, entry) {
  entry.card.remove();
  liveCalls.delete(id);
}

function updateEmpty() {
  const n = hooks.live.calls().length;
  $('live-empty').hidden = n > 0;
  $('live-count').textContent = n ? String(n) : '';
}

async function endCall(callId, entry) {
  const button = entry.parts.end;
  button.disabled = true;
  entry.parts.status.textContent = 'Ending…';
  const answer = await request(`/console/api/calls/${encodeURIComponent(callId)}/end`, { method: 'POST' });
  if (answer && answer.res.status === 202) return; // the "ended" event follows
  if (answer && answer.res.status === 404) {
    onEnded({ call_id: callId, end_reason: 'already gone', duration_s: null });
    return;
  }
  entry.parts.status.textContent = answer
    ? detailText(answer.body, `Could not end the call (HTTP ${answer.res.status})`)
    : 'Could not reach the gateway';
  button.disabled = false;
}

// One clock for every ticking duration.
setInterval(() => {
  for (const entry of liveCalls.values()) tickCard(entry);
}, 1000);

// ---- recent calls

let recentQuery = null; // URLSearchParams of the last search (without cursor)
let recentNext = null;
let recentSeq = 0; // ignore answers to superseded searches

function recentStatus(text, isError) {
  const status = $('recent-status');
  status.textContent = text;
  status.classList.toggle('error', Boolean(isError));
  status.title = '';
}

async function searchCalls(append) {
  const seq = ++recentSeq;
  if (!append) {
    const params = new URLSearchParams();
    for (const [k, v] of new FormData($('recent-filter'))) {
      if (String(v).trim()) params.set(k, String(v).trim());
    }
    params.set('limit', '50');
    recentQuery = params;
    recentNext = null;
  }
  const params = new URLSearchParams(recentQuery);
  if (append && recentNext) params.set('cursor', recentNext);
  recentStatus('Loading…');
  $('recent-more').disabled = true;
  const answer = await request(`/calls?${params}`);
  if (seq !== recentSeq) return;
  $('recent-more').disabled = false;
  if (!answer) {
    recentStatus('Could not reach the gateway', true);
    return;
  }
  const { res, body } = answer;
  if (!append) $('recent-rows').replaceChildren();
  if (res.status === 503) {
    recentStatus('Call records are off: set DATABASE_URL', true);
    $('recent-status').title = detailText(body, ''); // the server's own words
    $('recent-more').hidden = true;
    return;
  }
  if (!res.ok) {
    recentStatus(detailText(body, `Search failed (HTTP ${res.status})`), true);
    $('recent-more').hidden = true;
    return;
  }
  for (const record of (body && body.calls) || []) $('recent-rows').append(recentRow(record));
  recentNext = (body && body.next) || null;
  $('recent-more').hidden = !recentNext;
  const shown = $('recent-rows').children.length;
  recentStatus(shown ? `${shown} call${shown === 1 ? '' : 's'}${recentNext ? ', more available' : ''}` : 'No calls match');
}

function recentRow(r) {
  const row = el('tr', { class: 'recent-call', 'data-call-id': r.call_id, tabindex: '0' },
    el('td', {}, formatTime(r.started_at)),
    el('td', {}, r.carrier || ''),
    el('td', {}, r.direction || ''),
    el('td', {}, mask(r.from)),
    el('td', {}, mask(r.to)),
    el('td', { class: 'num' }, formatDuration(r.duration_s)),
    el('td', {}, r.end_reason || ''),
    el('td', {}, (r.agents || []).join(', ')));
  row.addEventListener('click', () => showDetail(r.call_id, row));
  row.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' || e.key === ' ') {
      e.preventDefault();
      showDetail(r.call_id, row);
    }
  });
  return row;
}

$('recent-filter').addEventListener('submit', (e) => {
  e.preventDefault();
  searchCalls(false);
});
$('recent-more').addEventListener('click', () => searchCalls(true));
onShow.recent = () => searchCalls(false); // fresh each time: calls end while you look elsewhere

let detailSeq = 0;

async function showDetail(callId, row) {
  const seq = ++detailSeq;
  for (const r of document.querySelectorAll('.recent-call.selected')) r.classList.remove('selected');
  row.classList.add('selected');
  const panel = $('call-detail');
  panel.hidden = false;
  panel.replaceChildren(el('p', { class: 'muted' }, 'Loading…'));
  const answer = await request(`/calls/${encodeURIComponent(callId)}`);
  if (seq !== detailSeq) return;
  if (!answer || !answer.res.ok || !answer.body) {
    const why = answer ? detailText(answer.body, `HTTP ${answer.res.status}`) : 'Could not reach the gateway';
    panel.replaceChildren(el('p', { class: 'error' }, why));
    return;
  }
  panel.replaceChildren(...renderDetail(answer.body));
}

function renderDetail(r) {
  const close = el('button', { type: 'button', class: 'close', 'aria-label': 'Close' }, '×');
  close.addEventListener('click', () => {
    $('call-detail').hidden = true;
    for (const row of document.querySelectorAll('.recent-call.selected')) row.classList.remove('selected');
  });
  const usage = r.usage || {};
  const facts = [
    ['Call', r.call_id],
    ['Carrier', `${r.carrier || '?'} · ${r.direction || '?'}`],
    ['From → to', `${mask(r.from)} → ${mask(r.to)}`],
    ['Started', formatTime(r.started_at)],
    ['Duration', formatDuration(r.duration_s)],
    ['End', [r.end_reason, r.end_detail && r.end_detail !== r.end_reason ? `(${r.end_detail})` : '']
      .filter(Boolean).join(' ')],
    r.transfer_to ? ['Transferred to', mask(r.transfer_to)] : null,
    ['Agents', (r.agents || []).join(' → ')],
    usage.total_tokens !== undefined ? ['Tokens', `${usage.input_tokens ?? '?'} in · ${usage.output_tokens ?? '?'} out`] : null,
  ].filter(Boolean);
  const dl = el('dl', { class: 'facts' });
  for (const [k, v] of facts) dl.append(el('dt', {}, k), el('dd', {}, v || '—'));

  const nodes = [
    el('header', {}, el('h3', {}, 'Call detail'), close),
    dl,
  ];
  if (r.recording) {
    nodes.push(el('audio', {
      id: 'recording-player', controls: true, preload: 'none',
      src: `/calls/${encodeURIComponent(r.call_id)}/recording`,
    }));
  }
  const transcript = el('div', { class: 'transcript', 'aria-live': 'polite' });
  setLines(transcript, r.transcript || []);
  if (!(r.transcript || []).length) transcript.append(el('p', { class: 'muted' }, 'No transcript'));
  nodes.push(el('h4', {}, 'Transcript'), transcript, el('h4', {}, 'Timeline'), renderTimeline(r));
  return nodes;
}

function renderTimeline(r) {
  const events = [];
  const add = (at, kind, text, ok) => events.push({ at, t: Date.parse(at), kind, text, ok });
  if (r.started_at) add(r.started_at, 'start', `Call started with ${(r.agents || [])[0] || 'the first agent'}`);
  for (const h of r.handoffs || []) {
    const extra = [h.reason, h.reconnect_ms !== null && h.reconnect_ms !== undefined ? `reconnect ${Math.round(h.reconnect_ms)} ms` : '']
      .filter(Boolean).join(' · ');
    add(h.at, 'handoff', `Handoff ${h.from} → ${h.to}${extra ? ` (${extra})` : ''}${h.summary ? ` — ${h.summary}` : ''}`);
  }
  for (const c of r.tool_calls || []) {
    const args = c.arguments === undefined ? ' (arguments redacted)' : ` ${JSON.stringify(c.arguments)}`;
    const ms = typeof c.ms === 'number' ? ` · ${Math.round(c.ms)} ms` : '';
    add(c.at, 'tool', `Tool ${c.name}${args} ${c.ok ? 'ok' : 'failed'}${ms}`, c.ok);
  }
  for (const d of r.dtmf || []) add(d.at, 'dtmf', `Keypad ${d.digits}`);
  for (const x of r.reconnects || []) {
    add(x.at, 'reconnect', `Reconnect${x.reason ? ` (${x.reason})` : ''}${typeof x.ms === 'number' ? ` · ${Math.round(x.ms)} ms` : ''}`);
  }
  if (r.ended_at) add(r.ended_at, 'end', `Call ended: ${r.end_reason || '?'}`);
  // Stable sort by time; entries without a usable time keep their place at the end.
  events.sort((a, b) => (isNaN(a.t) ? Infinity : a.t) - (isNaN(b.t) ? Infinity : b.t));
  const list = el('ol', { class: 'timeline' });
  for (const ev of events) {
    list.append(el('li', { class: `tl-${ev.kind}${ev.ok === false ? ' failed' : ''}`, title: formatTime(ev.at) },
      el('span', { class: 'when' }, offset(ev.at, r.started_at)),
      el('span', { class: 'kind' }, ev.kind),
      el('span', { class: 'what' }, ev.text)));
  }
  return list;
}

// ---- agents

let agentsInfo = null;

async function loadAgents() {
  const answer = await request('/console/api/agents');
  const body = answer && answer.res.ok && answer.body;
  $('agents-status').textContent = body ? ''
    : answer ? detailText(answer.body, `Could not load the agents (HTTP ${answer.res.status})`)
      : 'Could not reach the gateway';
  if (!body) return;
  agentsInfo = body;
  $('agents-model').textContent = body.provider ? `${body.model || '—'} (${body.provider})` : (body.model || '—');
  const warnings = body.warnings || [];
  $('agents-warnings').replaceChildren(
    ...(warnings.length ? warnings.map((w) => el('li', {}, w)) : [el('li', { class: 'muted' }, 'No warnings')]));
  fillPhaseSelect(body.stages || []);
  if (!$('view-agents').hidden) drawGraph();
}

onShow.agents = () => {
  if (agentsInfo) drawGraph();
  loadAgents();
};
let resizeTimer = 0;
window.addEventListener('resize', () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => {
    if (agentsInfo && !$('view-agents').hidden) drawGraph();
  }, 150);
});

// Left-to-right in pipeline order, wrapped into rows. Forward ("next") edges between
// neighbours are straight; return edges arc above the row, skips and row changes curve.
const BOX_W = 200;
const GAP_X = 64;
const ROW_GAP = 96; // room for wrap and skip edges below a row, return arcs above the next
const PAD = 16;

// A text cut with "…" to fit maxWidth pixels (measured, so it works for any font).
function fitText(node, maxWidth) {
  if (node.getComputedTextLength() <= maxWidth) return;
  const full = node.textContent;
  let lo = 0;
  let hi = full.length;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    node.textContent = `${full.slice(0, mid)}…`;
    if (node.getComputedTextLength() <= maxWidth) lo = mid;
    else hi = mid - 1;
  }
  node.textContent = `${full.slice(0, lo)}…`;
}

function drawGraph() {
  const wrap = $('agents-graph-wrap');
  const stages = (agentsInfo && agentsInfo.stages) || [];
  if (!stages.length) {
    wrap.replaceChildren(el('p', { class: 'muted' }, 'No pipeline stages'));
    return;
  }
  const agents = new Map((agentsInfo.agents || []).map((a) => [a.id, a]));
  const routes = new Map(); // phase → the numbers whose calls start there
  for (const r of agentsInfo.routes || []) {
    if (!routes.has(r.phase)) routes.set(r.phase, []);
    routes.get(r.phase).push(r.number);
  }
  const BOX_H = routes.size ? 100 : 84; // a fifth line for the route numbers
  const ARC_TOP = stages.some((s) => (s.can_return_to || []).length) ? 56 : PAD; // for return arcs
  const width = Math.max(wrap.clientWidth || 900, BOX_W + 2 * PAD);
  const cols = Math.max(1, Math.min(stages.length, Math.floor((width - 2 * PAD + GAP_X) / (BOX_W + GAP_X))));
  const rows = Math.ceil(stages.length / cols);
  const pos = new Map(); // phase → {x, y, i}
  stages.forEach((s, i) => {
    const row = Math.floor(i / cols);
    const col = i % cols;
    pos.set(s.phase, { x: PAD + col * (BOX_W + GAP_X), y: ARC_TOP + row * (BOX_H + ROW_GAP), row, col, i });
  });
  const w = PAD * 2 + cols * BOX_W + (cols - 1) * GAP_X;
  const h = ARC_TOP + rows * BOX_H + (rows - 1) * ROW_GAP + 48;

  const svg = svgEl('svg', {
    id: 'agents-graph', width: w, height: h, viewBox: `0 0 ${w} ${h}`, role: 'img',
    'aria-label': `Pipeline of ${stages.length} stage${stages.length === 1 ? '' : 's'}`,
  });
  const defs = svgEl('defs');
  for (const kind of ['next', 'return']) {
    const marker = svgEl('marker', {
      id: `arrow-${kind}`, viewBox: '0 0 10 10', refX: '9', refY: '5',
      markerWidth: '7', markerHeight: '7', orient: 'auto-start-reverse', class: `arrow-${kind}`,
    });
    marker.append(svgEl('path', { d: 'M0,0 L10,5 L0,10 z' }));
    defs.append(marker);
  }
  svg.append(defs);

  const edges = svgEl('g', { class: 'edges' });
  const boxes = svgEl('g', { class: 'boxes' });
  svg.append(edges, boxes);

  // Spread several edges' ends along a box side so they do not coincide.
  const ports = new Map();
  const port = (phase, side) => {
    const key = `${phase}:${side}`;
    const n = ports.get(key) || 0;
    ports.set(key, n + 1);
    return (n % 2 ? -1 : 1) * Math.ceil(n / 2) * 14;
  };

  let returnIndex = 0;
  for (const s of stages) {
    const a = pos.get(s.phase);
    if (s.next && pos.has(s.next)) {
      const b = pos.get(s.next);
      let d;
      if (b.row === a.row && b.col === a.col + 1) {
        d = `M${a.x + BOX_W},${a.y + BOX_H / 2} L${b.x - 2},${b.y + BOX_H / 2}`;
      } else if (b.row === a.row + 1 && b.col === 0 && a.col === cols - 1) {
        // Wrap to the next row: down, back left through the row gap, down into the box.
        const midY = a.y + BOX_H + ROW_GAP / 2 + 8;
        d = `M${a.x + BOX_W / 2},${a.y + BOX_H} L${a.x + BOX_W / 2},${midY} L${b.x + BOX_W / 2},${midY} L${b.x + BOX_W / 2},${b.y - 2}`;
      } else {
        // A skip or a backwards "next": curve below the boxes.
        const x1 = a.x + BOX_W / 2 + port(s.phase, 'bottom');
        const x2 = b.x + BOX_W / 2 + port(s.next, 'bottom');
        const y1 = a.y + BOX_H;
        const y2 = b.y + BOX_H + 2;
        const dip = Math.max(y1, y2) + 40;
        d = `M${x1},${y1} C${x1},${dip} ${x2},${dip} ${x2},${y2}`;
      }
      edges.append(svgEl('path', { d, class: 'edge-next', 'marker-end': 'url(#arrow-next)' }));
    }
    for (const target of s.can_return_to || []) {
      if (!pos.has(target)) continue;
      const b = pos.get(target);
      const x1 = a.x + BOX_W / 2 + port(s.phase, 'top');
      const x2 = b.x + BOX_W / 2 + port(target, 'top');
      let d;
      if (b.row === a.row) {
        const lift = 22 + 10 * Math.min(Math.abs(a.col - b.col), 3) + 6 * (returnIndex++ % 3);
        const top = a.y - lift;
        d = `M${x1},${a.y} C${x1},${top} ${x2},${top} ${x2},${b.y - 2}`;
      } else {
        // Another row: leave from the top, come in from below the target.
        const y2 = b.y + BOX_H + 2;
        d = `M${x1},${a.y} C${x1},${a.y - 40} ${x2},${y2 + 40} ${x2},${y2}`;
      }
      edges.append(svgEl('path', { d, class: 'edge-return', 'marker-end': 'url(#arrow-return)' }));
    }
  }

  for (const s of stages) {
    const { x, y } = pos.get(s.phase);
    const agent = agents.get(s.agent_id) || {};
    const g = svgEl('g', { class: `stage${s.start ? ' start' : ''}`, 'data-phase': s.phase });
    const numbers = routes.get(s.phase) || [];
    g.append(svgEl('title', {}, [
      `${s.phase}: ${s.agent_id}${agent.role ? ` — ${agent.role}` : ''}`,
      agent.tools && agent.tools.length ? `tools: ${agent.tools.join(', ')}` : '',
      numbers.length ? `numbers: ${numbers.join(', ')}` : '',
    ].filter(Boolean).join('\n')));
    g.append(svgEl('rect', { x, y, width: BOX_W, height: BOX_H, rx: 8 }));
    const inner = BOX_W - 20;
    const line = (n, cls, text, width = inner) =>
      g.append(svgEl('text', { x: x + 10, y: y + 3 + 17 * n, class: cls, 'data-fit': width }, text));
    line(1, 'phase', s.phase, s.start ? inner - 50 : inner);
    line(2, 'agent-id', s.agent_id);
    line(3, 'role', agent.role || '');
    const elsewhere = agent.provider && agent.provider !== agentsInfo.provider ? ` · ${agent.provider}` : '';
    line(4, 'voice', `voice ${agent.voice || '—'}${elsewhere}${agent.greeting ? ' · greets' : ''}`);
    if (numbers.length) line(5, 'route-label', `☎ ${numbers.join(', ')}`);
    if (s.start) {
      g.append(svgEl('rect', { x: x + BOX_W - 50, y: y + 7, width: 42, height: 17, rx: 8, class: 'start-badge' }));
      g.append(svgEl('text', { x: x + BOX_W - 29, y: y + 19, class: 'start-label', 'text-anchor': 'middle' }, 'start'));
    }
    boxes.append(g);
  }
  wrap.replaceChildren(svg);
  for (const text of svg.querySelectorAll('text[data-fit]')) fitText(text, Number(text.getAttribute('data-fit')));
}

function fillPhaseSelect(stages) {
  const select = $('talk-phase');
  const current = select.value;
  const options = stages.map((s) => el('option', { value: s.phase }, `${s.phase} — ${s.agent_id}${s.start ? ' (start)' : ''}`));
  if (!options.length) options.push(el('option', { value: '' }, 'default'));
  select.replaceChildren(...options);
  const start = stages.find((s) => s.start) || stages[0];
  select.value = stages.some((s) => s.phase === current) ? current : start ? start.phase : '';
}

// ---- talk (web carrier)

let session = null; // the running call's resources
let talkEntries = [];
let talkEndReason = null; // from the live feed's "ended" event
let talkHungUp = false;

function talkEndedText() {
  const why = [talkHungUp ? 'hung up' : talk.closeReason, talkEndReason].filter(Boolean);
  const code = talk.closeCode !== null ? ` (code ${talk.closeCode})` : '';
  return `Call ended${why.length ? `: ${[...new Set(why)].join(' · ')}` : ''}${code}`;
}

function setTalk(state, status) {
  talk.state = state;
  if (status !== undefined) $('talk-status').textContent = status;
  const active = state === 'connecting' || state === 'live';
  $('talk-start').disabled = active;
  $('talk-hangup').disabled = !active;
  $('talk-phase').disabled = active;
  for (const key of document.querySelectorAll('.key')) key.disabled = state !== 'live';
  $('view-talk').classList.toggle('on-call', active);
}

function renderTalkCall(call) {
  $('talk-agent').textContent = call.agent || '—';
  $('talk-handoffs').textContent = handoffChain(call);
  if (Array.isArray(call.transcript) && call.transcript.length >= talkEntries.length) {
    talkEntries = [...call.transcript];
    setLines($('talk-transcript'), talkEntries);
  }
}

// Base64 of bytes: a binary string built in chunks (apply() has an argument limit), then btoa.
function toBase64(bytes) {
  let binary = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

function fromBase64(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

async function startTalk() {
  if (session) return;
  Object.assign(talk, {
    callId: null, framesSent: 0, framesReceived: 0, clears: 0, marksEchoed: 0,
    playedSamples: 0, buffered: 0, underruns: 0, closeCode: null, closeReason: null, levelLog: [],
  });
  talkEntries = [];
  talkEndReason = null;
  talkHungUp = false;
  $('talk-transcript').replaceChildren();
  $('talk-agent').textContent = '—';
  $('talk-handoffs').textContent = 'none';
  setTalk('connecting', 'Starting…');

  // Both contexts are made here, inside the click (user gesture), so they may play.
  const s = {
    capCtx: new AudioContext({ sampleRate: 16000 }),
    playCtx: new AudioContext({ sampleRate: 24000 }),
    stream: null, source: null, capture: null, player: null, analyser: null, samples: null,
    ws: null, started: false, pendingMarks: [], markSeq: 0, timer: 0, closing: false,
  };
  session = s;
  s.capCtx.resume().catch(() => {});
  s.playCtx.resume().catch(() => {});

  try {
    const worklet = '/console/assets/worklets.js';
    [s.stream] = await Promise.all([
      navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
      }),
      s.capCtx.audioWorklet.addModule(worklet),
      s.playCtx.audioWorklet.addModule(worklet),
    ]);
  } catch (err) {
    if (session !== s) return; // hung up meanwhile
    const denied = err && (err.name === 'NotAllowedError' || err.name === 'NotFoundError');
    if (!denied) report('audio setup failed', err);
    stopTalk('ended', denied ? 'Microphone unavailable: allow it and try again' : `Audio setup failed: ${err.message || err}`);
    return;
  }
  if (session !== s) {
    for (const track of s.stream.getTracks()) track.stop(); // hung up meanwhile
    return;
  }

  // Player: jitter buffer → analyser (the level meter) → speakers.
  s.player = new AudioWorkletNode(s.playCtx, 'player', {
    numberOfInputs: 0, numberOfOutputs: 1, outputChannelCount: [1], processorOptions: { seconds: 30 },
  });
  s.analyser = new AnalyserNode(s.playCtx, { fftSize: 2048 });
  s.samples = new Float32Array(s.analyser.fftSize);
  s.player.connect(s.analyser).connect(s.playCtx.destination);
  s.player.port.onmessage = (e) => onPlayerMessage(s, e.data);

  // Capture: microphone → 320-sample Int16 frames → websocket (dropped while it is not open).
  s.source = new MediaStreamAudioSourceNode(s.capCtx, { mediaStream: s.stream });
  s.capture = new AudioWorkletNode(s.capCtx, 'capture', { numberOfInputs: 1, numberOfOutputs: 0 });
  s.capture.port.onmessage = (e) => {
    if (!s.started || s.ws.readyState !== WebSocket.OPEN) return;
    send(s, { event: 'media', media: { payload: toBase64(new Uint8Array(e.data)) } });
    talk.framesSent++;
  };
  s.source.connect(s.capture);

  s.timer = setInterval(() => sampleLevel(s), 50);

  const chosen = $('talk-phase').value;
  const answer = await request('/web/calls', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(chosen ? { phase: chosen } : {}),
  });
  if (session !== s) return;
  const body = answer && answer.body;
  if (!answer || answer.res.status !== 201 || !body || !body.stream_url) {
    stopTalk('ended', answer ? detailText(body, `Could not start the call (HTTP ${answer.res.status})`)
      : 'Could not reach the gateway');
    return;
  }
  talk.callId = body.call_id;
  const known = liveCalls.get(body.call_id);
  if (known) renderTalkCall(known.data);
  setTalk('connecting', 'Connecting…');
  // The stage is checked by POST /web/calls, but the call starts where start's
  // customParameters.phase says (as a carrier's stream parameter would).
  const phase = body.phase || chosen;

  const ws = new WebSocket(body.stream_url);
  s.ws = ws;
  ws.onopen = () => {
    send(s, {
      event: 'start',
      start: {
        streamSid: body.stream_id,
        callSid: body.call_id,
        mediaFormat: { encoding: 'audio/pcm16le', sampleRate: 16000, channels: 1 },
        customParameters: phase ? { phase } : {},
      },
    });
    s.started = true;
    if (session === s) setTalk('live', 'On call');
  };
  ws.onmessage = (e) => onGatewayMessage(s, e.data);
  ws.onclose = (e) => {
    talk.closeCode = e.code;
    talk.closeReason = e.reason;
    if (session === s && !s.closing) stopTalk('ended', talkEndedText());
    else if (talk.state === 'ended' && talk.callId === body.call_id) $('talk-status').textContent = talkEndedText();
  };
}

function send(s, message) {
  if (s.ws && s.ws.readyState === WebSocket.OPEN) s.ws.send(JSON.stringify(message));
}

function onGatewayMessage(s, data) {
  if (session !== s || typeof data !== 'string') return;
  let msg;
  try {
    msg = JSON.parse(data);
  } catch (err) {
    report('bad message from the gateway', err);
    return;
  }
  switch (msg.event) {
    case 'media': {
      const payload = msg.media && msg.media.payload;
      if (typeof payload !== 'string') return;
      talk.framesReceived++;
      const bytes = fromBase64(payload);
      s.player.port.postMessage({ type: 'pcm', pcm: bytes.buffer }, [bytes.buffer]);
      break;
    }
    case 'mark': {
      const name = msg.mark && msg.mark.name;
      const id = ++s.markSeq;
      s.pendingMarks.push({ id, name });
      s.player.port.postMessage({ type: 'mark', id });
      break;
    }
    case 'clear':
      // Barge-in: the worklet drops its buffer; every pending mark is echoed right now, in
      // order, from here (not after a round trip through the audio thread).
      talk.clears++;
      s.player.port.postMessage({ type: 'clear' });
      echoMarks(s, s.pendingMarks.length);
      break;
    default: // unknown events are ignored, as a carrier would
  }
}

// Echo the first n pending marks, in order.
function echoMarks(s, n) {
  for (const mark of s.pendingMarks.splice(0, n)) {
    send(s, { event: 'mark', mark: { name: mark.name } });
    talk.marksEchoed++;
  }
}

function onPlayerMessage(s, msg) {
  if (session !== s) return;
  if (msg.type === 'stats') {
    talk.playedSamples = msg.played;
    talk.buffered = msg.buffered;
    talk.underruns = msg.underruns;
  } else if (msg.type === 'mark') {
    // Marks play in order; one already echoed by a clear is simply not found.
    const index = s.pendingMarks.findIndex((m) => m.id === msg.id);
    if (index >= 0) echoMarks(s, index + 1);
  }
}

function stopTalk(state, status) {
  const s = session;
  if (!s) return;
  session = null;
  s.closing = true;
  clearInterval(s.timer);
  if (s.ws) {
    if (s.ws.readyState === WebSocket.OPEN) {
      if (s.started) send(s, { event: 'stop' });
      s.ws.close(1000, 'hang up');
    } else if (s.ws.readyState === WebSocket.CONNECTING) {
      s.ws.close();
    }
  }
  if (s.stream) for (const track of s.stream.getTracks()) track.stop();
  for (const node of [s.source, s.capture, s.player, s.analyser]) if (node) node.disconnect();
  if (s.capture) s.capture.port.postMessage('stop');
  if (s.player) s.player.port.postMessage({ type: 'stop' });
  s.capCtx.close().catch(() => {});
  s.playCtx.close().catch(() => {});
  setTalk(state, status);
  setMeter(-200);
}

// RMS of the last 2048 played samples (≈85 ms at 24 kHz) in dBFS; -200 for silence.
function currentLevel() {
  const s = session;
  if (!s || !s.analyser) return -200;
  s.analyser.getFloatTimeDomainData(s.samples);
  let sum = 0;
  for (let i = 0; i < s.samples.length; i++) sum += s.samples[i] * s.samples[i];
  const rms = Math.sqrt(sum / s.samples.length);
  return rms > 1e-10 ? Math.max(-200, 20 * Math.log10(rms)) : -200;
}

function peakSince(ms) {
  const since = performance.now() - ms;
  let peak = -200;
  for (let i = talk.levelLog.length - 1; i >= 0 && talk.levelLog[i][0] >= since; i--) {
    if (talk.levelLog[i][1] > peak) peak = talk.levelLog[i][1];
  }
  return Math.max(peak, currentLevel());
}

function sampleLevel(s) {
  if (session !== s || !s.analyser) return;
  const db = currentLevel();
  talk.levelLog.push([performance.now(), db]);
  if (talk.levelLog.length > 2000) talk.levelLog.splice(0, talk.levelLog.length - 2000);
  setMeter(db);
}

function setMeter(db) {
  const fraction = Math.min(1, Math.max(0, (db + 60) / 60)); // -60 dBFS .. 0 dBFS
  $('talk-meter').style.width = `${(fraction * 100).toFixed(1)}%`;
  $('talk-level').textContent = db > -200 ? db.toFixed(1) : '—';
}

$('talk-start').addEventListener('click', () => {
  startTalk().catch((err) => {
    report('call failed', err);
    stopTalk('ended', 'Call failed');
  });
});
$('talk-hangup').addEventListener('click', () => {
  talkHungUp = true;
  stopTalk('ended', 'Hung up');
});
for (const digit of '123456789*0#') {
  const key = el('button', { type: 'button', class: 'key', 'data-digit': digit, disabled: true }, digit);
  $('keypad').append(key);
  key.addEventListener('click', () => {
    if (session && talk.state === 'live') send(session, { event: 'dtmf', dtmf: { digit: key.dataset.digit } });
  });
}
window.addEventListener('pagehide', () => stopTalk('ended', 'Hung up'));

// ---- start

setTalk('idle');
openLive();
loadAgents();
const fromHash = () => location.hash.slice(1);
window.addEventListener('hashchange', () => {
  if (TABS.includes(fromHash())) showTab(fromHash());
});
showTab(TABS.includes(fromHash()) ? fromHash() : 'live');
updateEmpty();
})();
