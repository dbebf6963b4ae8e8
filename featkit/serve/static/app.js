// featkit serve: the page. Plain DOM code, no build step. Every name, label and path from the server is set as
// text (textContent, title, attribute values), never parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const PAGE = 60;
const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
  "#bcbd22", "#17becf"];
const state = {info: null, last: null, queryLabel: "", browseOffset: 0, map: null, metric: "cosine", asked: 0};

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function baseName(path) {
  const parts = String(path).split(/[\\/]/);
  return parts[parts.length - 1] || String(path);
}

async function api(url, options) {
  const response = await fetch(url, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    const detail = body && body.detail ? body.detail : `${response.status} ${response.statusText}`;
    throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return body;
}

function status(id, text, isError = false) {
  const node = $(id);
  node.textContent = text;
  node.classList.toggle("error", isError);
}

// ---- header and tabs ---------------------------------------------------------------------------------------

function showInfo(info) {
  const dims = info.pca ? `${info.dims} → ${info.pca} (PCA)` : `${info.dims}`;
  const fields = [["model", info.model], ["weights", info.weights], ["tap", `${info.tap} (${info.pool} pool)`],
    ["size", `${info.vectors.toLocaleString()} images × ${dims} dims`],
    ["index", `${info.kind}, ${info.metric}, recall@10 ${Number(info.recall_at_10).toFixed(3)}`], ["device", info.device]];
  const list = $("info");
  list.replaceChildren(...fields.map(([name, value]) =>
    el("div", {"data-field": name}, el("dt", {text: name}), el("dd", {text: String(value)}))));
  for (const id of ["filter", "query-label", "browse-label"]) {
    const select = $(id);
    for (const label of Object.keys(info.labels)) select.append(el("option", {value: label, text: label}));
  }
  document.title = `featkit: ${info.model} ${info.tap}`;
}

function showTab(name) {
  for (const button of document.querySelectorAll("#tabs button")) {
    button.classList.toggle("active", button.dataset.tab === name);
  }
  for (const section of document.querySelectorAll(".tab")) section.classList.toggle("active", section.id === name);
  if (name === "browse" && !$("library").childElementCount) browse(0);
  if (name === "duplicates" && !$("groups").childElementCount) duplicates();
  if (name === "map" && !state.map) drawMap();
}

// ---- tiles -------------------------------------------------------------------------------------------------

function tile(item, {caption = [], differs = false, flag = "", onpick = null} = {}) {
  const image = el("img", {src: `/api/thumb/${item.id}`, alt: baseName(item.path), loading: "lazy"});
  const box = el("div", {class: "img", title: `${item.path}\n(click: search from this image)`}, image);
  if (flag) box.append(el("span", {class: flag === "keep" ? "keep" : "flag", text: flag}));
  box.addEventListener("click", () => (onpick || searchFrom)(item.id));
  const full = el("a", {href: `/api/image/${item.id}`, target: "_blank", rel: "noopener", text: "full image"});
  const name = el("div", {class: "name", title: item.path, text: baseName(item.path)});
  const figure = el("figure", {class: differs ? "differs" : "", "data-id": String(item.id)}, box,
    el("figcaption", {}, ...caption, name, full));
  return figure;
}

function labelLine(label, other) {
  if (label === null || label === undefined) return el("div", {class: "label unknown", text: "no label"});
  return el("div", {class: other ? "label differs" : "label", text: other ? `≠ ${label}` : label});
}

// ---- search ------------------------------------------------------------------------------------------------

function searchParams() {
  const k = Math.max(1, Math.min(200, parseInt($("k").value, 10) || 10));
  const params = new URLSearchParams({k: String(k)});
  if ($("filter").value) params.set("label", $("filter").value);
  return params;
}

function showQuery(src, caption) {
  const figure = $("query");
  figure.replaceChildren(el("div", {class: "img"}, el("img", {src, alt: "query"})),
    el("figcaption", {}, el("b", {text: "query"}), ...caption));
  figure.classList.remove("hidden");
}

function showResults(results) {
  const queryLabel = state.queryLabel || null;
  const name = state.metric === "cosine" ? "cosine" : "distance";
  const tiles = results.map((hit) => {
    const other = queryLabel !== null && hit.label !== null && hit.label !== queryLabel;
    return tile(hit, {differs: other, flag: other ? "≠ other label" : "", caption: [
      el("div", {}, el("span", {text: `#${hit.rank} `}), el("span", {class: "score", text: `${name} ${hit.score.toFixed(3)}`})),
      labelLine(hit.label, other)]});
  });
  $("results").replaceChildren(...tiles);
  const differing = results.filter((hit) => queryLabel !== null && hit.label !== null && hit.label !== queryLabel);
  const compared = queryLabel === null ? "the query's label is unknown (choose it above to mark neighbours)"
    : `${differing.length} of ${results.length} have another label than ${queryLabel} (marked ≠)`;
  status("status", `${results.length} neighbours; ${compared}.`);
}

async function searchUpload(file) {
  state.last = {kind: "upload", file};
  state.queryLabel = $("query-label").value;
  showQuery(URL.createObjectURL(file), [el("div", {class: "name", title: file.name, text: file.name})]);
  status("status", "Searching…");
  const form = new FormData();
  form.append("image", file, file.name);
  const asked = ++state.asked;  // only the latest search may fill the grid, whichever answer comes last
  try {
    const answer = await api(`/api/search?${searchParams()}`, {method: "POST", body: form});
    if (asked === state.asked) showResults(answer.results);
  } catch (error) {
    if (asked !== state.asked) return;
    $("results").replaceChildren();
    status("status", error.message, true);
  }
}

async function searchFrom(id) {
  showTab("search");
  state.last = {kind: "id", id};
  status("status", "Searching…");
  const params = searchParams();
  params.set("id", String(id));
  const asked = ++state.asked;
  try {
    const answer = await api(`/api/search?${params}`);
    if (asked !== state.asked) return;
    const query = answer.query;
    state.queryLabel = query.label || "";
    $("query-label").value = state.queryLabel;
    showQuery(`/api/thumb/${query.id}`, [labelLine(query.label, false),
      el("div", {class: "name", title: query.path, text: baseName(query.path)}),
      el("a", {href: `/api/image/${query.id}`, target: "_blank", rel: "noopener", text: "full image"})]);
    showResults(answer.results);
  } catch (error) {
    if (asked === state.asked) status("status", error.message, true);
  }
}

function searchAgain() {
  if (!state.last) return;
  if (state.last.kind === "upload") searchUpload(state.last.file);
  else searchFrom(state.last.id);
}

// ---- browse, duplicates, map -------------------------------------------------------------------------------

async function browse(offset) {
  const params = new URLSearchParams({offset: String(Math.max(0, offset)), limit: String(PAGE)});
  if ($("browse-label").value) params.set("label", $("browse-label").value);
  const page = await api(`/api/items?${params}`);
  state.browseOffset = page.offset;
  $("library").replaceChildren(...page.items.map((item) => tile(item, {caption: [labelLine(item.label, false)]})));
  const last = Math.min(page.offset + PAGE, page.total);
  $("page").textContent = page.total ? `${page.offset + 1}–${last} of ${page.total.toLocaleString()}` : "nothing";
  $("prev").disabled = page.offset === 0;
  $("next").disabled = last >= page.total;
}

async function duplicates() {
  status("dup-status", "Looking for near-duplicates…");
  try {
    const answer = await api("/api/duplicates");
    const groups = answer.groups.map((group, n) => el("div", {class: "group"},
      el("h3", {text: `group ${n + 1}: ${group.size} images (the kept copy has the most pixels, then bytes)`}),
      el("div", {class: "grid"}, ...group.members.map((m) => tile(m, {flag: m.keep ? "keep" : "",
        caption: [el("div", {class: "score", text: `cosine ${m.score.toFixed(3)} to the kept copy`}),
          labelLine(m.label, false)]})))));
    $("groups").replaceChildren(...groups);
    const count = groups.length ? `${groups.length} groups` : "No near-duplicates";
    status("dup-status", `${count} at cosine ≥ ${answer.threshold} (featkit dedup's threshold).`);
  } catch (error) {
    status("dup-status", error.message, true);
  }
}

async function drawMap() {
  const answer = await api("/api/map");
  state.map = answer;
  const canvas = $("canvas");
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  if (!answer.points.length) {
    status("map-status", answer.note || "Nothing to draw.", Boolean(answer.note));
    return;
  }
  const xs = answer.points.map((p) => p[1]);
  const ys = answer.points.map((p) => p[2]);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const pad = 14;
  const sx = (x) => pad + (x - x0) / ((x1 - x0) || 1) * (canvas.width - 2 * pad);
  const sy = (y) => canvas.height - pad - (y - y0) / ((y1 - y0) || 1) * (canvas.height - 2 * pad);
  state.map.screen = answer.points.map((p) => [p[0], sx(p[1]), sy(p[2])]);
  for (const p of answer.points) {
    context.fillStyle = p[3] < 0 ? "#999" : COLOURS[p[3] % COLOURS.length];
    context.beginPath();
    context.arc(sx(p[1]), sy(p[2]), 3.5, 0, 2 * Math.PI);
    context.fill();
  }
  $("legend").replaceChildren(...answer.labels.map((label, c) => {
    const swatch = el("span", {class: "swatch"});
    swatch.style.backgroundColor = COLOURS[c % COLOURS.length];  // CSSOM: the CSP refuses style attributes
    return el("li", {}, swatch, el("span", {text: label}));
  }));
  const sampled = answer.sampled ? ` (a sample of ${answer.points.length.toLocaleString()})` : "";
  status("map-status", `PCA of the indexed vectors${sampled}, coloured by label; click a point to search from it.`);
}

function pickOnMap(event) {
  if (!state.map || !state.map.screen) return;
  const canvas = $("canvas");
  const box = canvas.getBoundingClientRect();
  const x = (event.clientX - box.left) * canvas.width / box.width;
  const y = (event.clientY - box.top) * canvas.height / box.height;
  let best = null;
  let bestDistance = 100;  // within 10 px
  for (const [id, px, py] of state.map.screen) {
    const d = (px - x) ** 2 + (py - y) ** 2;
    if (d < bestDistance) [best, bestDistance] = [id, d];
  }
  if (best !== null) searchFrom(best);
}

// ---- wiring ------------------------------------------------------------------------------------------------

function wire() {
  for (const button of document.querySelectorAll("#tabs button")) {
    button.addEventListener("click", () => showTab(button.dataset.tab));
  }
  const drop = $("drop");
  $("file").addEventListener("change", () => { if ($("file").files.length) searchUpload($("file").files[0]); });
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files.length) searchUpload(event.dataTransfer.files[0]);
  });
  $("k").addEventListener("change", searchAgain);
  $("filter").addEventListener("change", searchAgain);
  $("query-label").addEventListener("change", () => {
    state.queryLabel = $("query-label").value;
    if (state.last) searchAgain();
  });
  $("browse-label").addEventListener("change", () => browse(0));
  $("prev").addEventListener("click", () => browse(state.browseOffset - PAGE));
  $("next").addEventListener("click", () => browse(state.browseOffset + PAGE));
  $("canvas").addEventListener("click", pickOnMap);
}

async function start() {
  wire();
  try {
    state.info = await api("/api/info");
    state.metric = state.info.metric;
    showInfo(state.info);
    status("status", "Drop an image or choose a file to find the most similar indexed images.");
  } catch (error) {
    status("status", error.message, true);
  }
}

document.addEventListener("DOMContentLoaded", start);
