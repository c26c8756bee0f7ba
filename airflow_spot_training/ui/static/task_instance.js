// The task-instance view: attempts as a timeline, preemptions, escalations, checkpoint
// progress, cost and savings. Polls the JSON endpoint while the task can still change.
"use strict";

(() => {
  const { el, svg, card, usd, percent, duration, time, clockTime, fetchJson, showMessage, externalLink } = SpotUI;
  const POLL_MS = 5000;
  const params = new URLSearchParams(window.location.search);
  const mapIndex = Number.parseInt(params.get("map_index"), 10);
  const key = {
    dag_id: params.get("dag_id") || "",
    run_id: params.get("run_id") || "",
    task_id: params.get("task_id") || "",
    map_index: Number.isInteger(mapIndex) ? mapIndex : -1,  // "{MAP_INDEX}" when not mapped
  };
  const content = document.getElementById("content");
  let refreshes = 0;

  function subtitle(view) {
    const parts = [`${key.dag_id} · ${key.run_id} · ${key.task_id}${key.map_index >= 0 ? ` [${key.map_index}]` : ""}`];
    const node = el("span", { text: parts[0] });
    if (view.ti_state) node.append(el("span", { class: `badge ${view.ti_state}`, id: "ti-state", text: view.ti_state }));
    if (view.outcome) node.append(el("span", { class: `badge ${view.outcome}`, id: "outcome", text: `ledger: ${view.outcome}` }));
    if (view.live) node.append(el("span", { class: "badge live", id: "live", text: "live" }));
    node.append(el("span", { class: "muted", id: "updated-at", "data-refreshes": String(refreshes),
      text: `  updated ${clockTime(view.now)}` }));
    return node;
  }

  function checkpointCard(view) {
    const cp = view.checkpoint;
    const value = cp.step === null || cp.step === undefined ? "none yet" : `step ${cp.step}${cp.total ? ` / ${cp.total}` : ""}`;
    let detail = null;
    if (cp.known_at) detail = view.live ? `recorded ${duration(cp.age_seconds)} ago` : `recorded ${time(cp.known_at)}`;
    const node = card("checkpoint", "Last checkpoint", value, detail, cp.step);
    if (cp.fraction !== null && cp.fraction !== undefined) {
      node.append(el("div", { class: "progress" }, el("div", { style: `width:${Math.round(cp.fraction * 100)}%` })));
    }
    return node;
  }

  /** The spend cap, when the task has one: what was spent against it. */
  function capDetail(view) {
    const parts = [];
    if (view.max_cost !== null && view.max_cost !== undefined) parts.push(`cap ${usd(view.max_cost)}`);
    if (view.max_on_demand_cost !== null && view.max_on_demand_cost !== undefined) {
      parts.push(`on-demand ${usd(view.spent_on_demand)} of ${usd(view.max_on_demand_cost)}`);
    }
    return parts.length ? parts.join(", ") : null;
  }

  function cards(view) {
    const launched = view.attempts.filter((a) => a.outcome !== "capacity_unavailable");
    const onDemand = launched.filter((a) => a.capacity === "on_demand").length;
    const savingsDetail = view.on_demand_only_cost !== null ? `vs ${usd(view.on_demand_only_cost)} on on-demand only` : "no prices known";
    return el("section", { class: "cards" },
      card("attempt-count", "Attempts", String(launched.length), `${launched.length - onDemand} spot, ${onDemand} on-demand`, launched.length),
      card("preemption-count", "Preemptions", String(view.preemptions), null, view.preemptions),
      card("recomputed", "Recomputed steps", String(view.recomputed_steps), null, view.recomputed_steps),
      checkpointCard(view),
      card("cost", "Cost", usd(view.cost), capDetail(view), view.cost),
      card("savings", "Saved vs on-demand", view.saved === null ? "–" : `${usd(view.saved)} (${percent(view.saved_fraction)})`, savingsDetail, view.saved),
      card("spot-share", "Spot share", percent(view.spot_share), `${duration(view.spot_seconds)} spot, ${duration(view.on_demand_seconds)} on-demand`, view.spot_share),
      card("spot-wait", "Waited for spot", duration(view.spot_wait_seconds), null, view.spot_wait_seconds),
      card("deadline-card", "Deadline", view.deadline ? time(view.deadline) : "none",
        view.deadline ? (view.deadline > view.now ? `in ${duration(view.deadline - view.now)}` : `${duration(view.now - view.deadline)} ago`) : null, view.deadline));
  }

  /** The time axis: the attempts' span, stretched to the deadline when it is near enough to show. */
  function axis(view) {
    let start = view.window.start;
    let end = view.live ? Math.max(view.window.end, view.now) : view.window.end;
    const span = Math.max(1, end - start);
    const deadlineShown = view.deadline !== null && view.deadline <= start + 5 * span;
    if (deadlineShown) end = Math.max(end, view.deadline);
    end += (end - start) * 0.02;
    return { start, end, deadlineShown };
  }

  function timeline(view) {
    const width = Math.max(640, content.clientWidth || 900);
    const rowHeight = 26;
    const top = 28;
    const left = 70;
    const right = 24;
    const rows = view.attempts.length;
    const height = top + rows * rowHeight + 42;
    const { start, end, deadlineShown } = axis(view);
    const x = (t) => left + ((t - start) / (end - start)) * (width - left - right);
    const root = svg("svg", { id: "timeline", width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
      "aria-label": "attempts timeline" });
    const defs = svg("defs");
    const hatch = svg("pattern", { id: "wait-hatch", width: 6, height: 6, patternUnits: "userSpaceOnUse", patternTransform: "rotate(45)" });
    hatch.append(svg("rect", { width: 6, height: 6, fill: "transparent" }), svg("line", { x1: 0, y1: 0, x2: 0, y2: 6, stroke: "#a0aec0", "stroke-width": 3 }));
    defs.append(hatch);
    root.append(defs);

    const ticks = svg("g", { class: "axis" });
    for (let i = 0; i <= 5; i += 1) {
      const t = start + ((end - start) * i) / 5;
      ticks.append(svg("line", { class: "grid", x1: x(t), x2: x(t), y1: top - 6, y2: top + rows * rowHeight }));
      const anchor = i === 0 ? "start" : (i === 5 ? "end" : "middle");
      ticks.append(svg("text", { x: x(t), y: top + rows * rowHeight + 16, "text-anchor": anchor }, clockTime(t)));
    }
    root.append(ticks);

    view.capacity_waits.forEach((wait) => {
      const w = Math.max(3, x(wait.end) - x(wait.start));
      const node = svg("rect", { class: "capacity-wait", x: x(wait.start), y: top - 4, width: w, height: rows * rowHeight + 4,
        "data-kind": wait.kind });
      node.append(svg("title", {}, `${wait.kind === "refused" ? "launch refused" : "waiting for spot"}: ${wait.reason}`));
      root.append(node);
    });

    view.attempts.forEach((attempt, index) => {
      const y = top + index * rowHeight;
      root.append(svg("text", { x: 4, y: y + 16 }, `#${attempt.number} ${attempt.capacity === "on_demand" ? "on-dem." : attempt.capacity}`));
      if (attempt.start === null) return;
      const barEnd = attempt.end === null ? attempt.start : attempt.end;
      const bar = svg("rect", {
        class: `attempt-bar ${attempt.capacity}${attempt.live ? " live" : ""}`, x: x(attempt.start), y: y + 4,
        width: Math.max(2, x(barEnd) - x(attempt.start)), height: rowHeight - 8, rx: 3,
        "data-attempt": attempt.number, "data-capacity": attempt.capacity, "data-outcome": attempt.outcome,
      });
      bar.append(svg("title", {}, `attempt ${attempt.number} on ${attempt.capacity}: ${attempt.outcome} after ${duration(attempt.seconds)}` +
        (attempt.reason ? ` (${attempt.reason})` : "")));
      root.append(bar);
    });

    view.preemption_marks.forEach((mark) => {
      const index = view.attempts.findIndex((a) => a.number === mark.attempt);
      if (index < 0 || mark.at === null) return;
      for (let n = 0; n < mark.count; n += 1) {
        const cx = x(mark.at) - n * 9;
        const cy = top + index * rowHeight + rowHeight / 2;
        const g = svg("g", { class: "preemption-mark", "data-attempt": mark.attempt });
        g.append(svg("path", { d: `M ${cx} ${cy - 8} L ${cx + 6} ${cy + 6} L ${cx - 6} ${cy + 6} Z` }));
        g.append(svg("title", {}, `preempted (attempt ${mark.attempt})`));
        root.append(g);
      }
    });

    view.escalations.forEach((escalation) => {
      if (escalation.at === null) return;
      const ex = x(escalation.at);
      root.append(svg("line", { class: "escalation", x1: ex, x2: ex, y1: 4, y2: top + rows * rowHeight, "data-to": escalation.to }));
      const label = `${escalation.to === "spot" ? "back to spot" : "to on-demand"}: ${escalation.reason || escalation.kind}`;
      const shown = label.length > 70 ? `${label.slice(0, 69)}…` : label;
      const rightHalf = ex > left + (width - left - right) / 2;
      const text = svg("text", { class: "escalation-label", x: rightHalf ? ex - 4 : ex + 4, y: 14,
        "text-anchor": rightHalf ? "end" : "start", "data-kind": escalation.kind }, shown);
      text.append(svg("title", {}, escalation.reason));
      root.append(text);
    });

    if (view.deadline !== null && deadlineShown) {
      const dx = x(view.deadline);
      root.append(svg("line", { class: "deadline", x1: dx, x2: dx, y1: 4, y2: top + rows * rowHeight }));
      root.append(svg("text", { x: dx - 4, y: top + rows * rowHeight + 30, "text-anchor": "end" }, "deadline"));
    } else if (view.deadline !== null) {
      root.append(svg("text", { x: width - right, y: top + rows * rowHeight + 30, "text-anchor": "end" },
        `deadline ${time(view.deadline)} →`));
    }
    if (view.live) {
      const nx = x(view.now);
      root.append(svg("line", { class: "now-line", x1: nx, x2: nx, y1: top - 6, y2: top + rows * rowHeight }));
    }
    return root;
  }

  function legend() {
    const item = (label, color) => el("span", { style: `--swatch:${color}`, text: label });
    return el("div", { class: "legend" }, item("spot", "var(--spot)"), item("on-demand", "var(--on-demand)"),
      item("preemption", "var(--preempt)"), item("waiting for spot", "var(--wait)"),
      item("escalation", "var(--on-demand)"), item("deadline", "var(--deadline)"));
  }

  function escalationList(view) {
    if (!view.escalations.length) return el("p", { class: "muted", id: "escalations", text: "No escalation: every attempt ran on the capacity it started on." });
    const list = el("ul", { class: "escalations", id: "escalations" });
    view.escalations.forEach((e) => list.append(el("li", { class: "escalation-reason", "data-kind": e.kind },
      el("strong", { text: `${time(e.at)}, before attempt ${e.at_attempt}, to ${e.to === "on_demand" ? "on-demand" : e.to}: ` }),
      el("span", { class: "reason", text: e.reason }))));
    return list;
  }

  function attemptsTable(view) {
    const head = el("tr", {}, ...["#", "capacity", "outcome", "started", "ran", "steps", "try", "cost", "saved", "links"].map(
      (h) => el("th", { class: ["#", "ran", "cost", "saved", "try"].includes(h) ? "num" : null, text: h })));
    const body = el("tbody");
    view.attempts.forEach((a) => {
      const links = el("td");
      a.links.forEach((link, i) => {
        if (i) links.append(" · ");
        links.append(externalLink(link.url, link.name, { class: "attempt-link" }));
      });
      const steps = a.start_step === null && a.checkpoint_step === null ? "–" : `${a.start_step ?? "–"} → ${a.checkpoint_step ?? "–"}`;
      body.append(el("tr", { class: "attempt-row", "data-attempt": a.number },
        el("td", { class: "num", text: String(a.number) }),
        el("td", { text: a.capacity === "on_demand" ? "on-demand" : a.capacity }),
        el("td", {}, el("span", { text: a.outcome }), a.reason ? el("div", { class: "muted", text: a.reason }) : "",
          a.pool_reason ? el("div", { class: "muted pool-reason", text: `pool: ${a.pool_reason}` }) : ""),
        el("td", { text: time(a.start) }),
        el("td", { class: "num", text: duration(a.seconds) }),
        el("td", { text: steps }),
        el("td", { class: "num", text: a.try_number ?? "–" }),
        el("td", { class: "num", text: usd(a.cost) }),
        el("td", { class: "num", text: usd(a.saved) }),
        links));
    });
    return el("table", { id: "attempts" }, el("thead", {}, head), body);
  }

  function render(view) {
    document.getElementById("title").textContent = `Spot training: ${key.task_id}`;
    document.getElementById("subtitle").replaceChildren(subtitle(view));
    if (!view.found) {
      showMessage(content, "This task instance has no spot-training ledger (it is not a spot-training task, or it has not started).");
      return;
    }
    content.replaceChildren(
      cards(view),
      el("h2", { text: "Attempts" }), timeline(view), legend(),
      el("h2", { text: "Escalations" }), escalationList(view),
      el("h2", { text: "Attempt details" }), attemptsTable(view),
      el("p", { class: "muted", text: `Checkpoints under ${view.checkpoint_prefix || "–"}` }));
  }

  async function refresh() {
    const query = new URLSearchParams({ ...key, map_index: String(key.map_index) });
    let view;
    try {
      view = await fetchJson(`api/task-instance?${query}`);
    } catch (error) {
      document.getElementById("subtitle").textContent = `${key.dag_id} · ${key.run_id} · ${key.task_id}`;
      showMessage(content, error.status === 401 || error.status === 403
        ? `Not allowed: ${error.message}` : `Could not load the ledger: ${error.message}`, true);
      return;
    }
    refreshes += 1;
    render(view);
    if (view.live) window.setTimeout(refresh, POLL_MS);
  }

  refresh();
})();
