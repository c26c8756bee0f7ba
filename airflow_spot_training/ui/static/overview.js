// The overview: every spot-training task instance across DAGs and runs, with filters,
// totals, a chart of savings and preemptions per DAG over time, and a paged table.
"use strict";

(() => {
  const { el, svg, card, usd, percent, time, fetchJson, showMessage, taskInstanceHref, airflowLink, PALETTE } = SpotUI;
  const PAGE = 50;
  const content = document.getElementById("content");
  const form = document.getElementById("filters");
  let offset = 0;

  function query() {
    const params = new URLSearchParams({ offset: String(offset), limit: String(PAGE) });
    const dag = document.getElementById("filter-dag").value;
    const outcome = document.getElementById("filter-outcome").value;
    const since = document.getElementById("filter-since").value;
    const until = document.getElementById("filter-until").value;
    if (dag) params.set("dag_id", dag);
    if (outcome) params.set("outcome", outcome);
    if (since) params.set("since", `${since}T00:00:00Z`);
    if (until) params.set("until", `${until}T23:59:59Z`);
    return params;
  }

  function fillSelect(id, values, allLabel) {
    const select = document.getElementById(id);
    const current = select.value;
    const known = new Set([...select.options].map((o) => o.value));
    values.forEach((v) => { if (!known.has(v)) select.append(el("option", { value: v, text: v })); });
    select.value = current;
    if (!select.options.length) select.append(el("option", { value: "", text: allLabel }));
  }

  function totalsCards(totals) {
    return el("section", { class: "cards" },
      card("total-task-instances", "Task instances", String(totals.task_instances), null, totals.task_instances),
      card("total-preemptions", "Preemptions", String(totals.preemptions), null, totals.preemptions),
      card("total-escalated", "Escalated to on-demand", String(totals.escalated), null, totals.escalated),
      card("total-cost", "Cost", usd(totals.cost), null, totals.cost),
      card("total-saved", "Saved vs on-demand", `${usd(totals.saved)} (${percent(totals.saved_fraction)})`, null, totals.saved),
      card("total-spot-share", "Spot share", percent(totals.spot_share), null, totals.spot_share));
  }

  /** One line per DAG over the chart's periods (days, weeks or months), a point per period. */
  function lineChart(id, title, chart, field, format) {
    const width = 560;
    const height = 230;
    const margin = { top: 24, right: 14, bottom: 34, left: 66 };
    const root = svg("svg", { id, width: "100%", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title });
    root.append(svg("text", { x: margin.left, y: 14 }, title));
    const periods = chart.days;
    if (!periods.length) {
      root.append(svg("text", { x: width / 2, y: height / 2, "text-anchor": "middle" }, "no runs"));
      return root;
    }
    const values = chart.series.flatMap((s) => s[field]);
    const max = Math.max(0, ...values);
    const min = Math.min(0, ...values);
    const plotWidth = width - margin.left - margin.right;
    const plotHeight = height - margin.top - margin.bottom;
    const x = (i) => margin.left + (periods.length === 1 ? plotWidth / 2 : (i / (periods.length - 1)) * plotWidth);
    const y = (v) => margin.top + ((max - v) / (max - min || 1)) * plotHeight;
    [min, (min + max) / 2, max].forEach((v) => {
      root.append(svg("line", { class: "grid", x1: margin.left, x2: width - margin.right, y1: y(v), y2: y(v) }));
      root.append(svg("text", { x: margin.left - 6, y: y(v) + 4, "text-anchor": "end" }, format(v)));
    });
    const labelEvery = Math.ceil(periods.length / 7);
    periods.forEach((period, i) => {
      if (i % labelEvery === 0) {
        root.append(svg("text", { x: x(i), y: height - margin.bottom + 16, "text-anchor": "middle" },
          chart.bucket === "month" ? period : period.slice(5)));
      }
    });
    const dots = periods.length <= 60;
    chart.series.forEach((s, k) => {
      const color = PALETTE[k % PALETTE.length];
      const points = s[field].map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
      root.append(svg("polyline", { class: "chart-line", points, fill: "none", stroke: color, "stroke-width": 2,
        "data-dag": s.dag_id }));
      s[field].forEach((v, i) => {
        const point = svg("circle", { class: "chart-point", cx: x(i), cy: y(v), r: dots ? 3 : 1.5, fill: color,
          "data-dag": s.dag_id, "data-day": periods[i], "data-value": String(v) });
        const period = chart.bucket === "week" ? `week of ${periods[i]}` : periods[i];
        point.append(svg("title", {}, `${s.dag_id}, ${period}: ${format(v)} (${s.runs[i]} task instance(s))`));
        root.append(point);
      });
    });
    return root;
  }

  function chartLegend(chart) {
    return el("div", { class: "legend", id: "chart-legend" },
      ...chart.series.map((s, i) => el("span", { style: `--swatch:${PALETTE[i % PALETTE.length]}`, text: s.dag_id })));
  }

  function table(data) {
    const headers = ["DAG", "run", "task", "run after", "state", "outcome", "attempts", "preemptions", "escalations",
      "spot share", "cost", "saved"];
    const numeric = new Set(["attempts", "preemptions", "spot share", "cost", "saved"]);
    const head = el("tr", {}, ...headers.map((h) => el("th", { class: numeric.has(h) ? "num" : null, text: h })));
    const body = el("tbody");
    data.rows.forEach((row) => {
      const task = airflowLink(taskInstanceHref(row), row.map_index >= 0 ? `${row.task_id} [${row.map_index}]` : row.task_id,
        { class: "task-link" });
      body.append(el("tr", { class: "run-row", "data-dag": row.dag_id, "data-run": row.run_id, "data-task": row.task_id },
        el("td", { text: row.dag_id }), el("td", { text: row.run_id }), el("td", {}, task),
        el("td", { text: time(row.run_after) }), el("td", { text: row.state || "–" }),
        el("td", { class: "outcome", text: row.outcome || "–" }),
        el("td", { class: "num", text: String(row.attempts) }),
        el("td", { class: "num preemptions", text: String(row.preemptions) }),
        el("td", { class: "escalations", text: row.escalations ? `${row.escalations} (${row.escalation_kinds.join(", ")})` : "none" }),
        el("td", { class: "num", text: percent(row.spot_share) }),
        el("td", { class: "num", text: usd(row.cost) }),
        el("td", { class: "num saved", "data-value": row.saved === null ? null : String(row.saved), text: usd(row.saved) })));
    });
    const first = data.total_entries ? data.offset + 1 : 0;
    const last = data.offset + data.rows.length;
    const previous = el("button", { type: "button", id: "page-previous", text: "previous" });
    const next = el("button", { type: "button", id: "page-next", text: "next" });
    previous.disabled = data.offset === 0;
    next.disabled = last >= data.total_entries;
    previous.addEventListener("click", () => { offset = Math.max(0, offset - PAGE); refresh(); });
    next.addEventListener("click", () => { offset += PAGE; refresh(); });
    return el("div", {},
      el("table", { id: "runs" }, el("thead", {}, head), body),
      el("div", { class: "pager" }, previous, el("span", { id: "page-range", text: `${first}–${last} of ${data.total_entries}` }), next));
  }

  function render(data) {
    fillSelect("filter-dag", data.dag_ids, "all DAGs");
    fillSelect("filter-outcome", data.outcomes, "any outcome");
    if (!data.total_entries) {
      showMessage(content, "No spot-training task instance matches (or none in a DAG you may read).");
      return;
    }
    content.replaceChildren(
      totalsCards(data.totals),
      el("h2", { id: "chart-title", text: `Savings and preemptions per ${data.chart.bucket || "day"}` }),
      el("div", { class: "charts" },
        el("div", { class: "chart" }, lineChart("chart-savings", "Saved vs on-demand (USD)", data.chart, "saved", usd)),
        el("div", { class: "chart" }, lineChart("chart-preemptions", "Preemptions", data.chart, "preemptions", (v) => (Number.isInteger(v) ? String(v) : v.toFixed(1))))),
      chartLegend(data.chart),
      el("h2", { text: "Task instances" }),
      table(data));
  }

  async function refresh() {
    try {
      render(await fetchJson(`api/overview?${query()}`));
    } catch (error) {
      showMessage(content, error.status === 401 || error.status === 403
        ? `Not allowed: ${error.message}` : `Could not load the overview: ${error.message}`, true);
    }
  }

  form.addEventListener("change", () => { offset = 0; refresh(); });
  form.addEventListener("submit", (event) => { event.preventDefault(); offset = 0; refresh(); });
  refresh();
  window.setInterval(refresh, 30000);
})();
