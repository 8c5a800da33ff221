// comfyui-ltx-fp8 frontend: what each LTX-2 model is and what it costs, on the canvas.
//
// After a run, "Load LTX FP8 Checkpoint" and "Apply Quant Policy" show a badge (mode mix by
// transformer block, weight size, a stacked bar of bytes by mode, the layer counts), and
// "VRAM Report" shows its table with a bar chart of weight bytes by mode per model.
// Data comes only from the nodes' own `ui` outputs (the `executed` message of a run, or outputs
// restored by the editor); nothing is fetched or polled at import. The one network call, through
// api.fetchApi, is the VRAM Report's "refresh device memory" menu item (GET /system_stats).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const EXT = "LTXFP8.Canvas";
const LOADER = "LTXFP8CheckpointLoader";
const APPLY = "LTXFP8ApplyQuantPolicy";
const REPORT = "LTXFP8VRAMReport";
const BADGE_NODES = new Set([LOADER, APPLY]);
const OUR_NODES = new Set([LOADER, APPLY, REPORT]);
const WIDGET = "ltx_fp8_view"; // not serialized: never part of widgets_values or the prompt
const WIDGET_MARGIN_X = 20;
const WIDGET_MARGIN_Y = 24;
const MAX_NODE_WIDTH = 760;
let ready = false; // set in setup(): settings' onChange runs at registration, before the graph exists

const SETTING_BADGES = "LTXFP8.Canvas.ShowBadges";
const SETTING_CHART = "LTXFP8.Canvas.ShowChart";
const SETTING_UNITS = "LTXFP8.Canvas.Units";

// Display order and colours of the modes (quant/holdings.py; "other" = biases, norms, tables...).
const MODES = ["scaled-mm", "fp8-cast", "bf16", "host-fp8", "mixed", "other"];
const COLORS = {
  "scaled-mm": "#3fb950",
  "fp8-cast": "#58a6ff",
  bf16: "#e3a008",
  "host-fp8": "#bc8cff",
  mixed: "#9aa4ad",
  other: "#6e7681",
};

// The values onChange hands us: the editor may call onChange before its store holds the new value.
const changed = {};
function onSetting(id) {
  return (value) => {
    changed[id] = value;
    rerenderAll();
  };
}

function setting(id, fallback) {
  if (id in changed && changed[id] !== undefined && changed[id] !== null) return changed[id];
  try {
    const v = app.extensionManager?.setting?.get(id);
    return v === undefined || v === null ? fallback : v;
  } catch {
    return fallback;
  }
}

// ----- formatting ----------------------------------------------------------------------------
// One formatter per unit system, the same rule as quant/units.py: the largest unit the value
// reaches, two decimals; below one kB / KiB, whole bytes. The Units setting picks which.
function scaled(n, step, names) {
  n = Number(n) || 0;
  if (Math.abs(n) < step) return `${n} B`;
  let i = -1;
  let v = n;
  while (Math.abs(v) >= step && i < names.length - 1) {
    v /= step;
    i += 1;
  }
  return `${v.toFixed(2)} ${names[i]}`;
}

// GB: powers of 1000 (kB, MB, GB, TB).
export function formatGB(n) {
  return scaled(n, 1000, ["kB", "MB", "GB", "TB"]);
}

// GiB: powers of 1024 (KiB, MiB, GiB, TiB).
export function formatGiB(n) {
  return scaled(n, 1024, ["KiB", "MiB", "GiB", "TiB"]);
}

export function formatBytes(n, units) {
  return (units ?? setting(SETTING_UNITS, "GB")) === "GiB" ? formatGiB(n) : formatGB(n);
}

// ----- holdings ----------------------------------------------------------------------------------
// What a model holds (quant/holdings.py), the same schema in every payload of the pack:
// {modes: {mode: {layers, params, bytes}}, other: {tensors, bytes}, total_bytes, blocks_by_mode}.
// Bytes by mode for the bars: the linears' modes, and "other" (biases, norms, tables...).
function bytesByMode(held) {
  const out = {};
  for (const [m, v] of Object.entries(held?.modes || {})) out[m] = v.bytes;
  if (held?.other?.bytes) out.other = held.other.bytes;
  return out;
}

function layersByMode(held) {
  const out = {};
  for (const [m, v] of Object.entries(held?.modes || {})) out[m] = v.layers;
  return out;
}

function sortedModes(obj) {
  const keys = Object.keys(obj || {}).filter((k) => Number(obj[k]) > 0);
  return keys.sort((a, b) => {
    const ia = MODES.indexOf(a), ib = MODES.indexOf(b);
    return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || a.localeCompare(b);
  });
}

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null) continue;
    if (k === "style") el.style.cssText = v;
    else if (k === "class") el.className = v;
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function parsePayload(output, key) {
  const raw = output?.[key];
  const first = Array.isArray(raw) ? raw[0] : raw;
  if (!first) return null;
  try {
    return typeof first === "string" ? JSON.parse(first) : first;
  } catch (e) {
    console.warn(`[${EXT}] bad ${key} payload`, e);
    return null;
  }
}

// ----- styles ----------------------------------------------------------------------------------
const CSS = `
.ltxfp8-view { box-sizing: border-box; width: 100%; height: 100%; overflow: hidden; padding: 2px 6px 4px;
  font: 12px/16px ui-sans-serif, system-ui, "DejaVu Sans", sans-serif; color: var(--input-text, #ddd); }
.ltxfp8-view * { box-sizing: border-box; }
.ltxfp8-line { display: flex; flex-wrap: wrap; gap: 4px; align-items: center; min-height: 20px; }
.ltxfp8-chip { display: inline-block; padding: 1px 6px; border-radius: 9px; font-weight: 600;
  line-height: 16px; color: #0d1117; white-space: nowrap; }
.ltxfp8-total { font-weight: 700; margin-left: 4px; white-space: nowrap; }
.ltxfp8-sub { color: var(--descrip-text, #999); font-size: 11px; line-height: 15px; white-space: nowrap;
  overflow: hidden; text-overflow: ellipsis; }
.ltxfp8-warn { color: #f0883e; }
.ltxfp8-bar { display: flex; height: 6px; border-radius: 3px; overflow: hidden; margin: 3px 0 2px;
  background: rgba(127,127,127,.25); }
.ltxfp8-bar > span { display: block; height: 100%; }
.ltxfp8-vram table { border-collapse: collapse; margin-top: 3px; font-size: 11px; line-height: 14px; }
.ltxfp8-vram th, .ltxfp8-vram td { padding: 1px 5px; text-align: right; white-space: nowrap; vertical-align: top;
  border-bottom: 1px solid rgba(127,127,127,.25); }
.ltxfp8-vram tbody th { text-align: left; font-weight: 600; }
.ltxfp8-vram thead th { font-weight: 700; }
.ltxfp8-vram .ltxfp8-total-row td { font-weight: 700; }
.ltxfp8-cellsub { color: var(--descrip-text, #999); font-size: 10px; line-height: 12px; }
.ltxfp8-labels .ltxfp8-sub { max-width: 100%; }
.ltxfp8-chart { margin-top: 5px; }
.ltxfp8-chart-row { display: flex; align-items: center; gap: 6px; height: 16px; font-size: 11px; }
.ltxfp8-chart-row > .ltxfp8-chart-name { width: 60px; flex: none; overflow: hidden; text-overflow: ellipsis;
  white-space: nowrap; }
.ltxfp8-chart-row > .ltxfp8-chart-track { flex: 1; height: 10px; }
.ltxfp8-chart-row > .ltxfp8-chart-track > .ltxfp8-bar { height: 10px; margin: 0; background: none; }
.ltxfp8-chart-row > .ltxfp8-chart-value { width: 72px; flex: none; text-align: right; white-space: nowrap; }
.ltxfp8-legend { display: flex; flex-wrap: wrap; gap: 8px; font-size: 11px; margin-top: 2px; }
.ltxfp8-legend i { display: inline-block; width: 9px; height: 9px; border-radius: 2px; margin-right: 3px; }
.ltxfp8-device { margin-top: 4px; font-size: 11px; line-height: 15px; color: var(--descrip-text, #999);
  white-space: normal; }
`;

function installStyles() {
  if (document.getElementById("ltxfp8-styles")) return;
  document.head.append(h("style", { id: "ltxfp8-styles" }, CSS));
}

// ----- views -------------------------------------------------------------------------------------
function stackedBar(bytesByMode, total, widthFraction = 1) {
  const modes = sortedModes(bytesByMode);
  const sum = total || modes.reduce((s, m) => s + Number(bytesByMode[m]), 0) || 1;
  const bar = h("div", { class: "ltxfp8-bar", style: `width:${(100 * widthFraction).toFixed(2)}%` });
  for (const m of modes) {
    const b = Number(bytesByMode[m]);
    bar.append(h("span", {
      "data-mode": m, "data-bytes": b, title: `${m}: ${formatBytes(b)}`,
      style: `width:${((100 * b) / sum).toFixed(3)}%;background:${COLORS[m] || "#888"}`,
    }));
  }
  return bar;
}

// "scaled-mm 43 blocks · bf16 5 blocks · 21.90 GB" (+ stacked bar, + layers line).
function badgeView(kind, p) {
  const held = p.holdings || {};
  const root = h("div", {
    class: "ltxfp8-view ltxfp8-badge", "data-ltxfp8": "badge", "data-node-kind": kind,
    "data-total-bytes": held.total_bytes ?? "", "data-policy": p.policy ?? "",
  });
  const line = h("div", { class: "ltxfp8-line" });
  const layerCounts = layersByMode(held);
  const blocks = held.blocks_by_mode || {};
  const hasBlocks = sortedModes(blocks).length > 0;
  const counts = hasBlocks ? blocks : layerCounts;
  const unit = hasBlocks ? "block" : "layer";
  for (const m of sortedModes(counts)) {
    const n = Number(counts[m]);
    line.append(h("span", {
      class: "ltxfp8-chip", "data-mode": m, "data-count": n, "data-unit": unit,
      style: `background:${COLORS[m] || "#888"}`,
    }, `${m} ${n} ${unit}${n === 1 ? "" : "s"}`));
  }
  if (held.total_bytes !== undefined) {
    line.append(h("span", { class: "ltxfp8-total", "data-role": "total", title: "weights held by this MODEL" },
      formatBytes(held.total_bytes)));
  }
  root.append(line);
  if (held.modes) root.append(stackedBar(bytesByMode(held), held.total_bytes));
  const layers = sortedModes(layerCounts).map((m) => `${m} ${layerCounts[m]}`).join(" · ");
  const extra = [];
  if (layers) extra.push(`layers: ${layers}`);
  if (kind === APPLY && p.allocated_bytes !== undefined) extra.push(`new ${formatBytes(p.allocated_bytes)}`);
  if (p.policy) extra.push(`policy ${p.policy}`);
  const sub = h("div", { class: "ltxfp8-sub", "data-role": "layers", title: extra.join("\n") });
  if (p.warnings) {
    sub.append(h("span", { class: "ltxfp8-warn", "data-role": "warnings",
      title: "see the node's report output" }, `⚠ ${p.warnings} warning${p.warnings === 1 ? "" : "s"} · `));
  }
  sub.append(extra.join(" · "));
  root.append(sub);
  const budgetLine = budgetView(p.budget, held.total_bytes);
  if (budgetLine) root.append(budgetLine);
  return root;
}

// "budget 20GB: 19.87 GB · 96 layers → fp8 · err ≤ 2.7e-2 (mean 2.6e-2)": the policy's weight
// budget (quant/budget.py: budget_figures), the bytes held, what it moved and the predicted error.
function budgetView(b, held) {
  if (!b) return null;
  const total = held ?? b.total_bytes;
  const over = Number(total) > Number(b.budget_bytes);
  const parts = [`budget ${b.budget}: ${formatBytes(total)}${over ? " — over!" : ""}`];
  if (b.moved_layers) {
    const e = b.predicted_error || {};
    parts.push(`${b.moved_layers} layer${b.moved_layers === 1 ? "" : "s"} → fp8`);
    parts.push(`err ≤ ${Number(e.worst).toExponential(1)} (mean ${Number(e.weighted_mean).toExponential(1)})`);
  } else {
    parts.push("nothing moved");
  }
  return h("div", {
    class: "ltxfp8-sub", "data-role": "budget", "data-budget-bytes": b.budget_bytes,
    "data-moved-layers": b.moved_layers ?? 0, "data-over": over ? "1" : "0",
    title: `weight budget ${b.budget} (${formatBytes(b.budget_bytes)}); without it ${formatBytes(b.unbudgeted_bytes)}; ` +
      "predicted error: relative weight error of the moved layers' fp8 version (worst, parameter-weighted mean)",
  }, parts.join(" · "));
}

function deviceLine(d) {
  if (!d) return "";
  let s = `device ${d.device}: total ${formatBytes(d.total_bytes)}, free ${formatBytes(d.free_bytes)}`;
  if (d.cuda) {
    s += `; ${d.cuda.name}: allocated ${formatBytes(d.cuda.allocated_bytes)}, reserved ` +
      `${formatBytes(d.cuda.reserved_bytes)}, peak since last report ` +
      `${formatBytes(d.cuda.peak_allocated_since_last_report_bytes)}`;
  }
  if (d.process_rss_bytes !== undefined) s += `; process RSS ${formatBytes(d.process_rss_bytes)}`;
  return s;
}

// The VRAM Report's table: one column per model (narrow enough for a default-width node), one row
// per mode (bytes, layer count), then total / resident / offloaded; a bar chart of bytes by mode
// per model (scaled to the largest model); the device line.
function vramView(report, text) {
  const models = report?.models || [];
  const root = h("div", { class: "ltxfp8-view ltxfp8-vram", "data-ltxfp8": "vram", title: text || "" });
  const bytes = models.map((m) => bytesByMode(m.holdings));
  const layers = models.map((m) => layersByMode(m.holdings));
  const modes = [];
  for (const b of bytes) for (const k of sortedModes(b)) if (!modes.includes(k)) modes.push(k);
  modes.sort((a, b) => MODES.indexOf(a) - MODES.indexOf(b));

  const labels = h("div", { class: "ltxfp8-labels" });
  for (const m of models) {
    labels.append(h("div", { class: "ltxfp8-sub", "data-input": m.input, "data-label": m.label, title: m.label },
      h("b", {}, m.input), " ", m.label));
  }
  root.append(labels);

  const cell = (m, attrs, main, sub) => h("td", { "data-input": m.input, ...attrs }, main,
    sub ? h("div", { class: "ltxfp8-cellsub" }, sub) : null);
  const table = h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, ""),
    models.map((m) => h("th", { "data-input": m.input, title: m.label }, m.input)))));
  const body = h("tbody");
  for (const k of modes) {
    body.append(h("tr", { "data-mode": k },
      h("th", { style: `color:${COLORS[k] || "inherit"}` }, k),
      models.map((m, i) => {
        const b = bytes[i][k];
        const n = layers[i][k];
        return cell(m, { "data-mode": k, "data-bytes": b ?? 0, "data-layers": n ?? "" },
          b ? formatBytes(b) : "–", n ? `${n} layer${n === 1 ? "" : "s"}` : "");
      })));
  }
  const figures = [
    ["total", (m) => m.holdings?.total_bytes],
    ["resident", (m) => m.resident_bytes],
    ["offloaded", (m) => m.offloaded_bytes],
  ];
  for (const [role, get] of figures) {
    body.append(h("tr", { "data-role": role, class: role === "total" ? "ltxfp8-total-row" : "" }, h("th", {}, role),
      models.map((m) => cell(m, { "data-role": role, "data-bytes": get(m) ?? 0 }, formatBytes(get(m))))));
  }
  // The weight budget a model was loaded / converted under, beside its total above.
  if (models.some((m) => m.budget)) {
    body.append(h("tr", { "data-role": "budget" }, h("th", {}, "budget"),
      models.map((m) => m.budget
        ? cell(m, { "data-role": "budget", "data-bytes": m.budget.budget_bytes,
          "data-over": Number(m.holdings?.total_bytes) > Number(m.budget.budget_bytes) ? "1" : "0" },
        formatBytes(m.budget.budget_bytes),
        Number(m.holdings?.total_bytes) > Number(m.budget.budget_bytes) ? "over" : `${m.budget.budget}, fits`)
        : cell(m, { "data-role": "budget" }, "–"))));
  }
  table.append(body);
  root.append(table);

  if (setting(SETTING_CHART, true) && models.length) {
    const totals = models.map((m) => Number(m.holdings?.total_bytes) || 0);
    const max = Math.max(...totals, 1);
    const chart = h("div", { class: "ltxfp8-chart", "data-ltxfp8": "chart" });
    models.forEach((m, i) => {
      chart.append(h("div", { class: "ltxfp8-chart-row", "data-input": m.input },
        h("span", { class: "ltxfp8-chart-name", title: m.label }, m.input),
        h("span", { class: "ltxfp8-chart-track" }, stackedBar(bytes[i], totals[i], totals[i] / max)),
        h("span", { class: "ltxfp8-chart-value" }, formatBytes(totals[i]))));
    });
    chart.append(h("div", { class: "ltxfp8-legend" },
      modes.map((k) => h("span", {}, h("i", { style: `background:${COLORS[k] || "#888"}` }), k))));
    root.append(chart);
  }
  root.append(h("div", { class: "ltxfp8-device", "data-role": "device" }, deviceLine(report?.device)));
  return root;
}

// ----- the node widget -------------------------------------------------------------------------
let measureBox = null;
// The rendered size of `el` laid out `width` px wide (or at its natural width when width is null).
function measure(el, width, part = null) {
  if (!measureBox) {
    measureBox = h("div", { style: "position:absolute;left:-10000px;top:0;visibility:hidden;pointer-events:none" });
    document.body.append(measureBox);
  }
  const clone = el.cloneNode(true);
  clone.style.width = width ? `${width}px` : "max-content";
  clone.style.height = "auto";
  measureBox.replaceChildren(clone);
  const target = (part && clone.querySelector(part)) || clone;
  const size = [Math.ceil(target.scrollWidth + (target === clone ? 0 : 14)), Math.ceil(clone.scrollHeight)];
  measureBox.replaceChildren();
  return size;
}

function findWidget(node) {
  return node.widgets?.find((w) => w.name === WIDGET);
}

function removeView(node) {
  const w = findWidget(node);
  if (!w) return;
  try {
    node.removeWidget ? node.removeWidget(w) : node.widgets.splice(node.widgets.indexOf(w), 1);
  } catch (e) {
    console.warn(`[${EXT}] removeWidget`, e);
  }
  w.element?.remove?.();
  const size = node.computeSize?.();
  if (size) node.setSize([node.size[0], size[1]]);
  node.setDirtyCanvas?.(true, true);
}

function showView(node, content, fitWidth = false) {
  let w = findWidget(node);
  if (!w) {
    const box = h("div", { class: "ltxfp8-host", "data-node-id": node.id, style: "width:100%;height:100%" });
    w = node.addDOMWidget(WIDGET, "ltxfp8", box, {
      serialize: false,
      hideOnZoom: false,
      getMinHeight: () => w.__height ?? 40,
      getMaxHeight: () => w.__height ?? 40,
    });
    w.serialize = false;
  }
  w.element.replaceChildren(content);
  // Wide enough for the content's natural width (the VRAM table), within limits.
  const natural = fitWidth ? measure(content, null, "table")[0] : 0;
  const width = Math.min(Math.max(node.size[0], natural + WIDGET_MARGIN_X), MAX_NODE_WIDTH);
  // The editor gives a DOM widget its layout height less a margin (10 px above and below).
  w.__height = measure(content, width - WIDGET_MARGIN_X)[1] + WIDGET_MARGIN_Y;
  const size = node.computeSize?.() ?? node.size;
  node.setSize([Math.max(width, size[0]), size[1]]);
  node.setDirtyCanvas?.(true, true);
  app.graph?.setDirtyCanvas?.(true, true);
}

function render(node) {
  const cls = node.comfyClass ?? node.constructor?.comfyClass;
  const data = node.__ltxfp8;
  if (!data) return;
  if (BADGE_NODES.has(cls)) {
    if (!setting(SETTING_BADGES, true)) return removeView(node);
    showView(node, badgeView(cls, data.payload));
  } else if (cls === REPORT) {
    showView(node, vramView(data.payload, data.text), true);
  }
}

function accept(node, output) {
  const cls = node?.comfyClass ?? node?.constructor?.comfyClass;
  if (!OUR_NODES.has(cls) || !output) return false;
  const payload = parsePayload(output, cls === REPORT ? "ltx_fp8_vram" : "ltx_fp8");
  if (!payload) return false;
  const text = cls === REPORT ? (Array.isArray(output.text) ? output.text.join("\n") : output.text) : undefined;
  node.__ltxfp8 = { payload, text, at: Date.now() };
  render(node);
  return true;
}

function eachOurNode(fn) {
  const graph = app.graph ?? app.rootGraph;
  for (const node of graph?._nodes ?? graph?.nodes ?? []) {
    if (OUR_NODES.has(node.comfyClass ?? node.constructor?.comfyClass)) fn(node);
  }
}

function rerenderAll() {
  if (!ready) return;
  eachOurNode((n) => n.__ltxfp8 && render(n));
}

// GET /system_stats, on demand only: the device's memory now, under the report's last figures.
async function refreshDevice(node) {
  const res = await api.fetchApi("/system_stats");
  if (!res.ok) throw new Error(`GET /system_stats: ${res.status}`);
  const stats = await res.json();
  const dev = stats.devices?.[0];
  if (!dev || !node.__ltxfp8) return;
  const d = node.__ltxfp8.payload.device || {};
  node.__ltxfp8.payload.device = { ...d, device: d.device ?? dev.type, total_bytes: dev.vram_total, free_bytes: dev.vram_free };
  render(node);
}

app.registerExtension({
  name: EXT,
  settings: [
    {
      id: SETTING_BADGES,
      category: ["LTXFP8", "Canvas", "Badges"],
      name: "Show mode and memory badges on Load LTX FP8 Checkpoint / Apply Quant Policy",
      tooltip: "After a run: the mode of each transformer block, the weight size and the layer counts.",
      type: "boolean",
      defaultValue: true,
      onChange: onSetting(SETTING_BADGES),
    },
    {
      id: SETTING_CHART,
      category: ["LTXFP8", "Canvas", "Chart"],
      name: "VRAM Report: bar chart of weight bytes by mode",
      type: "boolean",
      defaultValue: true,
      onChange: onSetting(SETTING_CHART),
    },
    {
      id: SETTING_UNITS,
      category: ["LTXFP8", "Canvas", "Units"],
      name: "Memory units",
      tooltip: "GB = 10^9 bytes (as GPU vendors count); GiB = 2^30 bytes (as nvidia-smi and the OS count).",
      type: "combo",
      options: ["GB", "GiB"],
      defaultValue: "GB",
      onChange: onSetting(SETTING_UNITS),
    },
  ],

  setup() {
    installStyles();
    ready = true;
  },

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!OUR_NODES.has(nodeData?.name)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      const r = onExecuted?.apply(this, arguments);
      try {
        accept(this, output);
      } catch (e) {
        console.error(`[${EXT}]`, e);
      }
      return r;
    };
  },

  // Outputs restored by the editor (switching workflow tabs, loading a job from the queue).
  onNodeOutputsUpdated(nodeOutputs) {
    if (!ready) return;
    const graph = app.graph ?? app.rootGraph;
    for (const [id, output] of Object.entries(nodeOutputs || {})) {
      if (String(id).includes(":")) continue; // inside a subgraph
      const node = graph?.getNodeById?.(Number(id)) ?? graph?.getNodeById?.(id);
      if (node) {
        try {
          accept(node, output);
        } catch (e) {
          console.error(`[${EXT}]`, e);
        }
      }
    }
  },

  getNodeMenuItems(node) {
    const cls = node?.comfyClass ?? node?.constructor?.comfyClass;
    if (!OUR_NODES.has(cls) || !node.__ltxfp8) return [];
    const items = [{
      content: "LTX FP8: copy figures (JSON)",
      callback: () => navigator.clipboard?.writeText(JSON.stringify(node.__ltxfp8.payload, null, 1)),
    }];
    if (cls === REPORT) {
      items.push({
        content: "LTX FP8: refresh device memory",
        callback: () => refreshDevice(node).catch((e) => console.error(`[${EXT}]`, e)),
      });
    }
    return items;
  },
});
