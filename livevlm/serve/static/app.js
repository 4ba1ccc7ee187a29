// livevlm serve page: the browser camera (JPEG frames over WS /v1/streams/{id}/ws) or a source URL becomes a
// stream (POST /v1/streams); its status is polled (GET /v1/streams/{id}); answers stream in as Server-Sent
// Events (POST /v1/streams/{id}/ask). Plain JS, no build step, nothing loaded from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const SEND_EVERY_MS = 500;     // ~2 fps to the server
const MAX_SIDE = 640;          // frames are scaled down to this longest side before JPEG encoding
const MAX_UNACKED = 3;         // skip a capture while this many frames wait for the server's ack

// Auth: a `key` query parameter is kept for this tab (the server also sets a cookie), then hidden from the URL.
const KEY = (() => {
  const url = new URL(location.href);
  const key = url.searchParams.get("key");
  if (key) {
    sessionStorage.setItem("livevlm_key", key);
    url.searchParams.delete("key");
    history.replaceState(null, "", url);
  }
  return sessionStorage.getItem("livevlm_key") || "";
})();

const state = { stream: null, media: null, ws: null, loops: [], unacked: 0, frameUrl: null, busy: false, opening: false };

function authHeaders(extra = {}) {
  return KEY ? { ...extra, Authorization: `Bearer ${KEY}` } : extra;
}

// The server's JSON error {"error": {"status", "message"}} as an Error (the status line if the body is not JSON).
async function httpError(response) {
  const body = await response.json().catch(() => null);
  const message = body && body.error ? `${body.error.status}: ${body.error.message}` : `${response.status} ${response.statusText}`;
  return Object.assign(new Error(message), { status: response.status });
}

async function api(method, path, body) {
  const init = { method, headers: authHeaders(body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  if (!response.ok) throw await httpError(response);
  return response.status === 204 ? null : response.json();
}

function showError(error) {
  $("error").textContent = error ? String(error.message || error) : "";
  $("error").hidden = !error;
}

// Run `fn` now and then `ms` after each run ends (never overlapping), until the stream is closed.
function every(ms, fn) {
  const loop = { stopped: false, timer: null };
  const tick = async () => {
    if (loop.stopped) return;
    await fn();
    if (!loop.stopped) loop.timer = setTimeout(tick, ms);
  };
  loop.timer = setTimeout(tick, 0);
  state.loops.push(loop);
}

// ---- streams -------------------------------------------------------------------------------------------

async function closeStream() {
  for (const loop of state.loops) { loop.stopped = true; clearTimeout(loop.timer); }
  state.loops = [];
  if (state.ws) { state.ws.onclose = null; state.ws.close(1000); state.ws = null; }
  if (state.media) { state.media.getTracks().forEach((track) => track.stop()); state.media = null; }
  if (state.frameUrl) { URL.revokeObjectURL(state.frameUrl); state.frameUrl = null; }
  $("video").srcObject = null;
  $("frame").hidden = true;
  $("placeholder").hidden = false;
  $("ask").disabled = true;
  const old = state.stream;
  state.stream = null;
  if (old) await api("DELETE", `v1/streams/${old.id}`).catch(() => {});
}

function opened(stream) {
  state.stream = stream;
  $("placeholder").hidden = true;
  $("ask").disabled = state.busy;
  renderStatus(stream);
  every(1000, pollStatus);
}

async function useCamera() {
  showError(null);
  await closeStream();
  try {
    state.media = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
  } catch (e) {
    showError(`camera unavailable: ${e.message || e.name}`);
    return;
  }
  const video = $("video");
  video.srcObject = state.media;
  await video.play().catch(() => {});
  try {
    opened(await api("POST", "v1/streams", { source: "push" }));
  } catch (e) { await closeStream(); throw e; }
  const ws = new WebSocket(wsUrl(`v1/streams/${state.stream.id}/ws`));
  ws.binaryType = "arraybuffer";
  ws.onmessage = (ev) => {
    const msg = JSON.parse(ev.data);
    state.unacked = Math.max(0, state.unacked - 1);
    if (msg.type === "error") showError(`frame refused: ${msg.status}: ${msg.message}`);
  };
  let connected = false;
  ws.onclose = (ev) => showError(connected
    ? `camera connection closed (${ev.code}${ev.reason ? ": " + ev.reason : ""})`
    : `camera connection refused (${ev.code}): a wrong or missing API key, or see the server's log`);
  state.ws = ws;
  state.unacked = 0;
  const t0 = performance.now();
  ws.onopen = () => {
    connected = true;
    every(SEND_EVERY_MS, () => sendFrame(ws, (performance.now() - t0) / 1000));
  };
}

function wsUrl(path) {
  const url = new URL(path, location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  if (KEY) url.searchParams.set("key", KEY);
  return url.href;
}

async function sendFrame(ws, pts) {
  const video = $("video");
  if (ws.readyState !== WebSocket.OPEN || state.unacked >= MAX_UNACKED || !video.videoWidth) return;
  const scale = Math.min(1, MAX_SIDE / Math.max(video.videoWidth, video.videoHeight));
  const canvas = $("canvas");
  canvas.width = Math.round(video.videoWidth * scale);
  canvas.height = Math.round(video.videoHeight * scale);
  canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.85));
  if (!blob || ws.readyState !== WebSocket.OPEN) return;
  const bytes = await blob.arrayBuffer();
  ws.send(JSON.stringify({ pts, format: "jpeg" }));
  ws.send(bytes);
  state.unacked += 1;
}

async function openUrl() {
  showError(null);
  const source = $("source-url").value.trim();
  if (!source) { showError("type a source: rtsp://…, http(s)://…, lavfi:GRAPH or a file under the media dir"); return; }
  await closeStream();
  try {
    opened(await api("POST", "v1/streams", { source }));
  } catch (e) { showError(e); return; }
  every(500, pollFrame);
}

async function pollFrame() {
  const stream = state.stream;
  if (!stream) return;
  const response = await fetch(`v1/streams/${stream.id}/frame.jpg`, { headers: authHeaders(), cache: "no-store" })
    .catch(() => null);
  if (!response || !response.ok || state.stream !== stream) return;  // 404 until the first frame arrives
  const url = URL.createObjectURL(await response.blob());
  if (state.frameUrl) URL.revokeObjectURL(state.frameUrl);
  state.frameUrl = url;
  $("frame").src = url;
  $("frame").hidden = false;
}

// ---- status --------------------------------------------------------------------------------------------

async function pollStatus() {
  const stream = state.stream;
  if (!stream) return;
  try {
    const fresh = await api("GET", `v1/streams/${stream.id}`);
    if (state.stream === stream) renderStatus(fresh);
  } catch (e) {
    if (state.stream !== stream) return;
    showError(e);
    if (e.status === 404) closeStream();  // closed by the server (idle timeout, deleted elsewhere)
  }
}

function formatBytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  for (; n >= 1024 && i < units.length - 1; i += 1) n /= 1024;
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function renderStatus(stream) {
  const s = stream.status || {};
  const fix = (x) => (x == null ? "–" : Number(x).toFixed(1));
  $("status").replaceChildren(
    `${stream.name || (stream.kind === "push" ? "camera" : stream.source)} · ${stream.running ? "running" : "stopped"} · fps in ${fix(s.fps_in)} / processed ${fix(s.fps_processed)} · frames `,
    Object.assign(document.createElement("span"), { id: "frames-processed", textContent: String(s.frames_processed ?? 0) }),
    ` · dropped ${s.frames_dropped ?? 0} · context ${s.context_tokens ?? 0} tokens · KV ${formatBytes(s.kv_bytes ?? 0)}` +
      (s.last_pts_seconds == null ? "" : ` · t = ${fix(s.last_pts_seconds)} s`),
  );
  if (stream.error) showError(`stream error: ${stream.error}`);
}

// ---- questions -----------------------------------------------------------------------------------------

async function* sseEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "", event = "message", data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    const lines = buffer.split("\n");
    buffer = lines.pop();  // an unfinished line waits for the next chunk
    for (let line of lines) {
      if (line.endsWith("\r")) line = line.slice(0, -1);
      if (line === "") {
        if (data.length) yield { event, data: JSON.parse(data.join("\n")) };
        event = "message"; data = [];
      } else if (line.startsWith("event:")) event = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    }
  }
}

async function ask(ev) {
  ev.preventDefault();
  const question = $("question").value.trim();
  if (!question || !state.stream || state.busy) return;
  showError(null);
  state.busy = true;
  $("ask").disabled = true;
  $("answer").textContent = "";
  $("answer-meta").textContent = "thinking…";
  let text = "", done = null;
  try {
    const response = await fetch(`v1/streams/${state.stream.id}/ask`, {
      method: "POST",
      headers: authHeaders({ "Content-Type": "application/json", Accept: "text/event-stream" }),
      body: JSON.stringify({ question, stream: true }),
    });
    if (!response.ok) throw await httpError(response);
    for await (const { event, data } of sseEvents(response.body)) {
      if (event === "delta") text += data.text;
      else if (event === "done") { done = data; text = data.text; }
      else if (event === "error") throw Object.assign(new Error(`${data.status}: ${data.message}`), { status: data.status });
      $("answer").textContent = text;
    }
    if (!done) throw new Error("the answer stream ended early");
  } catch (e) {
    showError(e);
  } finally {
    state.busy = false;
    $("ask").disabled = !state.stream;
    $("answer-meta").textContent = done ? describe(done) : "";
    addHistory(question, text, done);
  }
}

// An answer always read video (asked before the stream's first frame, it is a 409): its chunks and the pending
// frames (not yet a chunk) it read in its own prefill.
function describe(done) {
  const [first, last] = done.pts_range;
  const n = done.pending_frames || 0;
  const pending = n ? ` + ${n} pending frame${n === 1 ? "" : "s"}` : "";
  return `stream time ${first.toFixed(1)}–${last.toFixed(1)} s · ${done.chunks} chunks${pending} · ` +
    `${done.tokens} tokens · ${done.finish_reason}`;
}

function addHistory(question, text, done) {
  const item = document.createElement("li");
  const q = Object.assign(document.createElement("p"), { className: "q", textContent: question });
  const a = Object.assign(document.createElement("p"), { className: "a", textContent: text || "(no answer)" });
  const meta = Object.assign(document.createElement("p"), { className: "muted", textContent: done ? describe(done) : "failed" });
  item.append(q, a, meta);
  $("history").prepend(item);
}

// Opening a source takes several awaits (camera permission, POST, WebSocket): a second click meanwhile is ignored,
// or both would make a stream and the first would be left open on the server.
function oneAtATime(open) {
  return async (ev) => {
    ev.preventDefault();
    if (state.opening) return;
    state.opening = true;
    $("use-camera").disabled = $("open-url").disabled = true;
    try {
      await open(ev);
    } catch (e) {
      showError(e);
    } finally {
      state.opening = false;
      $("use-camera").disabled = $("open-url").disabled = false;
    }
  };
}

// ---- wiring --------------------------------------------------------------------------------------------

function deleteOnUnload() {
  if (!state.stream) return;
  fetch(`v1/streams/${state.stream.id}`, { method: "DELETE", keepalive: true, headers: authHeaders() }).catch(() => {});
  state.stream = null;
}

async function init() {
  $("use-camera").addEventListener("click", oneAtATime(useCamera));
  $("url-form").addEventListener("submit", oneAtATime(openUrl));
  $("ask-form").addEventListener("submit", ask);
  window.addEventListener("pagehide", deleteOnUnload);
  window.addEventListener("pageshow", (ev) => ev.persisted && closeStream());  // back from the bfcache
  try {
    const health = await api("GET", "v1/health");
    $("model").textContent = `model ${health.model} · up to ${health.max_streams} streams`;
  } catch (e) {
    $("model").textContent = "server unreachable";
    showError(e);
  }
}

init();
