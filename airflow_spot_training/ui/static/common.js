// Shared helpers of the spot-training pages: formatting, fetching, small SVG builders.
"use strict";

const SpotUI = (() => {
  const SVG_NS = "http://www.w3.org/2000/svg";

  function usd(value) {
    if (value === null || value === undefined) return "–";
    const digits = Math.abs(value) >= 1 ? 2 : 4;
    return (value < 0 ? "-$" : "$") + Math.abs(value).toFixed(digits);
  }

  function percent(fraction) {
    return fraction === null || fraction === undefined ? "–" : `${Math.round(fraction * 100)}%`;
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    const s = Math.max(0, seconds);
    if (s < 90) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
    if (s < 5400) return `${(s / 60).toFixed(1)} min`;
    return `${(s / 3600).toFixed(1)} h`;
  }

  function time(epochSeconds) {
    if (epochSeconds === null || epochSeconds === undefined) return "–";
    return new Date(epochSeconds * 1000).toLocaleString(undefined, {
      month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
    });
  }

  function clockTime(epochSeconds) {
    return new Date(epochSeconds * 1000).toLocaleTimeString(undefined, {
      hour: "2-digit", minute: "2-digit", second: "2-digit",
    });
  }

  async function fetchJson(url) {
    const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (!response.ok) {
      let detail = response.statusText;
      try { detail = (await response.json()).detail || detail; } catch (e) { /* not JSON */ }
      const error = new Error(`${response.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
      error.status = response.status;
      throw error;
    }
    return response.json();
  }

  function el(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attributes)) {
      if (value === null || value === undefined) continue;
      if (key === "text") node.textContent = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) node.append(child);
    return node;
  }

  function svg(tag, attributes = {}, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attributes)) {
      if (value !== null && value !== undefined) node.setAttribute(key, value);
    }
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function card(id, label, value, detail, rawValue) {
    const node = el("div", { class: "card", id },
      el("div", { class: "label", text: label }),
      el("div", { class: "value", text: value, "data-value": rawValue === undefined ? null : String(rawValue) }));
    if (detail) node.append(el("div", { class: "detail", text: detail }));
    return node;
  }

  function showMessage(container, text, isError) {
    container.replaceChildren(el("div", { class: `message${isError ? " error" : ""}`, role: "status", text }));
  }

  /** The Airflow UI page of a task instance: links open it in the whole window, not in the iframe. */
  function taskInstanceHref(row) {
    const mapped = row.map_index >= 0 ? `/mapped/${row.map_index}` : "";
    return `/dags/${encodeURIComponent(row.dag_id)}/runs/${encodeURIComponent(row.run_id)}` +
      `/tasks/${encodeURIComponent(row.task_id)}${mapped}/plugin/spot-training-task-instance`;
  }

  /** A link to another site (a cloud console, a log page): opened in a new tab, http(s) only.
   *  Airflow's iframe sandbox has no allow-popups, so the new tab is opened by the parent
   *  window (same origin) when the page is inside Airflow's UI. */
  function externalLink(url, text, attributes = {}) {
    let parsed = null;
    try { parsed = new URL(url, window.location.href); } catch (e) { parsed = null; }
    if (!parsed || !["http:", "https:"].includes(parsed.protocol)) return el("span", { ...attributes, text: `${text}: ${url}` });
    const link = el("a", { ...attributes, href: parsed.href, rel: "noopener noreferrer", target: "_blank", text });
    link.addEventListener("click", (event) => {
      if (event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey) return;
      const host = window.parent !== window ? window.parent : window;
      event.preventDefault();
      host.open(parsed.href, "_blank", "noopener,noreferrer");
    });
    return link;
  }

  /** A link to a page of Airflow's UI: navigates the whole UI, not the iframe. */
  function airflowLink(path, text, attributes = {}) {
    const link = el("a", { ...attributes, href: path, text });
    link.addEventListener("click", (event) => {
      if (event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey) return;
      event.preventDefault();
      try {
        if (window.parent === window) throw new Error("not in Airflow's UI");
        // Airflow's UI routes on the History API: push the path and tell its router.
        window.parent.history.pushState({}, "", path);
        window.parent.dispatchEvent(new PopStateEvent("popstate", { state: {} }));
      } catch (e) {
        window.location.href = path;
      }
    });
    return link;
  }

  const PALETTE = ["#3182ce", "#dd6b20", "#38a169", "#805ad5", "#d53f8c", "#319795", "#d69e2e", "#e53e3e"];

  return { usd, percent, duration, time, clockTime, fetchJson, el, svg, card, showMessage, taskInstanceHref,
           externalLink, airflowLink, PALETTE };
})();
