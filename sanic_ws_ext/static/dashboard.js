// sanic-ws-ext dashboard: polls <WS_PATH>/stats and draws it. No dependencies.
//
// Options in the URL: ?interval=<ms> (default 1000) and, when the server sets
// WS_STATS_TOKEN, #token=<token> (a fragment: never sent to the server, so
// never in a log). Figures are written with textContent only: worker names
// come from the server, never as HTML.

const params = new URLSearchParams(location.search);
const INTERVAL = Math.max(200, Number(params.get("interval")) || 1000);
const HISTORY = 120; // points kept per series
const COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"];
const SVG = "http://www.w3.org/2000/svg";

const token = new URLSearchParams(location.hash.slice(1)).get("token");
const statsUrl = new URL("stats", location.href);

/** Series kept between polls: name -> array of numbers (oldest first). */
const rates = { "in / s": [], "out / s": [] };
const connections = new Map();

const $ = (id) => document.getElementById(id);

function push(series, value) {
  series.push(value);
  if (series.length > HISTORY) series.shift();
}

function fmt(value) {
  if (typeof value !== "number") return value ?? "–";
  return Number.isInteger(value) ? value.toLocaleString("en") : value.toFixed(1);
}

/** A rate: always one decimal, so a column of rates lines up. */
function fmtRate(value) {
  return typeof value === "number" ? value.toFixed(1) : "–";
}

function setState(text, cls) {
  const state = $("state");
  state.textContent = text;
  state.className = cls;
}

function cell(row, cls, value, format = fmt) {
  const td = document.createElement("td");
  td.className = cls;
  td.textContent = format(value);
  row.appendChild(td);
  return td;
}

function renderWorkers(perWorker) {
  const body = $("workers");
  const most = Math.max(1, ...Object.values(perWorker).map((w) => w.connections));
  const rows = [];
  for (const [name, w] of Object.entries(perWorker)) {
    const row = document.createElement("tr");
    row.dataset.worker = name;
    const label = document.createElement("td");
    label.className = "worker";
    label.textContent = name;
    row.appendChild(label);
    const conns = cell(row, "connections", w.connections);
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.round((60 * w.connections) / most)}px`;
    conns.prepend(bar);
    cell(row, "rooms", w.rooms);
    cell(row, "in-rate", w.messages_in_per_second, fmtRate);
    cell(row, "out-rate", w.messages_out_per_second, fmtRate);
    cell(row, "in-total", w.messages_in);
    cell(row, "out-total", w.messages_out);
    cell(row, "slow", w.slow_closed);
    cell(row, "backplane", w.backplane ?? "–");
    cell(row, "age", w.age);
    rows.push(row);
  }
  body.replaceChildren(...rows);
}

/** Draw `series` (name -> numbers) as polylines in `svg`, with a legend. */
function chart(svg, legend, series, format = fmt) {
  const width = 600;
  const height = 180;
  const pad = 18;
  const names = [...series.keys()];
  const top = Math.max(1, ...names.flatMap((n) => series.get(n)));
  // The newest point on the right edge; until the history is full, the
  // points kept so far span the whole width.
  const span = Math.max(2, ...names.map((n) => series.get(n).length));
  const y = (v) => height - pad - ((height - 2 * pad) * v) / top;
  const x = (i) => (width * i) / (span - 1);
  const nodes = [];
  for (const frac of [0, 0.5, 1]) {
    const line = document.createElementNS(SVG, "line");
    line.setAttribute("x1", "0");
    line.setAttribute("x2", String(width));
    line.setAttribute("y1", String(y(top * frac)));
    line.setAttribute("y2", String(y(top * frac)));
    line.setAttribute("stroke", "#e5e7eb");
    nodes.push(line);
    const label = document.createElementNS(SVG, "text");
    label.setAttribute("x", "2");
    label.setAttribute("y", String(y(top * frac) - 3));
    label.setAttribute("font-size", "11");
    label.setAttribute("fill", "#6b7280");
    label.textContent = fmt(Math.round(top * frac * 10) / 10);
    nodes.push(label);
  }
  const keys = [];
  names.forEach((name, i) => {
    const values = series.get(name);
    const offset = span - values.length;
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", COLORS[i % COLORS.length]);
    line.setAttribute("stroke-width", "2");
    line.setAttribute("vector-effect", "non-scaling-stroke");
    line.setAttribute("points", values.map((v, j) => `${x(offset + j)},${y(v)}`).join(" "));
    line.dataset.series = name;
    nodes.push(line);
    if (values.length) {
      // The newest value as a dot: visible even before there is a line.
      const dot = document.createElementNS(SVG, "circle");
      dot.setAttribute("cx", String(x(span - 1)));
      dot.setAttribute("cy", String(y(values.at(-1))));
      dot.setAttribute("r", "3");
      dot.setAttribute("fill", COLORS[i % COLORS.length]);
      nodes.push(dot);
    }
    const key = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = COLORS[i % COLORS.length];
    key.append(swatch, `${name} (${format(values.at(-1) ?? 0)})`);
    keys.push(key);
  });
  svg.replaceChildren(...nodes);
  legend.replaceChildren(...keys);
}

function render(stats) {
  $("answered").textContent = `answered by ${stats.answered_by}`;
  $("total-connections").textContent = fmt(stats.connections);
  $("total-workers").textContent = fmt(stats.workers);
  $("total-rooms").textContent = fmt(stats.rooms);
  $("total-in-rate").textContent = fmtRate(stats.messages_in_per_second);
  $("total-out-rate").textContent = fmtRate(stats.messages_out_per_second);
  $("total-slow").textContent = fmt(stats.slow_closed);
  $("total-reconnects").textContent = fmt(stats.backplane_reconnects);
  renderWorkers(stats.per_worker);
  push(rates["in / s"], stats.messages_in_per_second);
  push(rates["out / s"], stats.messages_out_per_second);
  chart($("rates-chart"), $("rates-legend"), new Map(Object.entries(rates)), fmtRate);
  for (const name of connections.keys()) {
    if (!(name in stats.per_worker)) connections.delete(name);
  }
  for (const [name, w] of Object.entries(stats.per_worker)) {
    if (!connections.has(name)) connections.set(name, []);
    push(connections.get(name), w.connections);
  }
  chart($("connections-chart"), $("connections-legend"), connections);
}

/** What to do about a 401: the token is missing from the URL, or wrong. */
function unauthorized() {
  const here = `${location.pathname}#token=<WS_STATS_TOKEN>`;
  return token
    ? "401: the token after #token= is not this server's WS_STATS_TOKEN"
    : `401: this server wants its WS_STATS_TOKEN: open ${here}`;
}

async function poll() {
  try {
    const response = await fetch(statsUrl, {
      headers: token ? { authorization: `Bearer ${token}` } : {},
      cache: "no-store",
    });
    if (response.status === 401) throw new Error(unauthorized());
    if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
    render(await response.json());
    setState("live", "live");
  } catch (error) {
    setState(`error: ${error.message}`, "error");
  } finally {
    setTimeout(poll, INTERVAL);
  }
}

poll();
