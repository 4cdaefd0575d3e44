// watchkeeper dashboard: live updates over Server-Sent Events. No build step, no inline script
// (the Content-Security-Policy forbids it). Untrusted text (alert titles, errors) is only ever
// set with textContent, never as HTML.
"use strict";

(function () {
  const live = document.getElementById("live");

  function rel(iso) {
    const delta = (Date.now() - Date.parse(iso)) / 1000;
    const a = Math.abs(delta);
    if (a < 1) return "now";
    const units = [["d", 86400], ["h", 3600], ["m", 60], ["s", 1]];
    let text = "";
    let left = Math.round(a);
    let parts = 0;
    for (const [unit, size] of units) {
      if (left >= size && parts < 2) {
        text += Math.floor(left / size) + unit;
        left %= size;
        parts += 1;
      }
    }
    return delta > 0 ? text + " ago" : "in " + text;
  }

  function refreshTimes() {
    for (const t of document.querySelectorAll("time[datetime]")) {
      t.textContent = rel(t.getAttribute("datetime"));
    }
  }
  refreshTimes();
  setInterval(refreshTimes, 1000);

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function timeNode(iso) {
    if (!iso) return el("span", "muted", "never");
    const t = el("time", null, rel(iso));
    t.setAttribute("datetime", iso);
    t.title = iso;
    return t;
  }

  const SEVERITIES = ["debug", "info", "warning", "error", "critical"];

  function alertRow(alert, showWatcher) {
    const tr = el("tr", "fresh");
    tr.dataset.id = String(alert.id);
    const when = el("td", "shrink");
    when.appendChild(timeNode(alert.created_at));
    tr.appendChild(when);
    const sev = el("td", "shrink");
    if (alert.status === "resolved") sev.appendChild(el("span", "badge sev-resolved", "resolved"));
    else sev.appendChild(el("span", "badge sev-" + alert.severity, alert.severity));
    tr.appendChild(sev);
    if (showWatcher) {
      const cell = el("td", "shrink");
      const link = el("a", null, alert.watcher);
      link.href = "/watchers/" + encodeURIComponent(alert.watcher);
      cell.appendChild(link);
      tr.appendChild(cell);
    }
    const title = el("td", "title", alert.title);
    if (alert.body) {
      const details = el("details");
      details.appendChild(el("summary", null, "details"));
      details.appendChild(el("pre", null, alert.body));
      title.appendChild(details);
    }
    tr.appendChild(title);
    return tr;
  }

  function matches(table, alert) {
    const watcher = table.dataset.watcher;
    const severity = table.dataset.severity;
    const q = (table.dataset.q || "").toLowerCase();
    if (watcher && alert.watcher !== watcher) return false;
    if (severity && SEVERITIES.indexOf(alert.severity) < SEVERITIES.indexOf(severity)) return false;
    if (q) {
      const hay = [alert.title, alert.body, alert.key].join("\n").toLowerCase();
      if (hay.indexOf(q) < 0) return false;
    }
    return true;
  }

  function addAlert(alert) {
    const table = document.getElementById("alerts");
    if (!table || !matches(table, alert)) return;
    const body = table.tBodies[0];
    if (body.querySelector('tr[data-id="' + alert.id + '"]')) return;
    body.insertBefore(alertRow(alert, !table.dataset.hideWatcher), body.firstChild);
    const limit = parseInt(table.dataset.limit || "0", 10);
    while (limit && body.rows.length > limit) body.deleteRow(body.rows.length - 1);
    table.hidden = false;
    const empty = document.getElementById("no-alerts");
    if (empty) empty.hidden = true;
  }

  function setCell(scope, field, node) {
    const cell = scope.querySelector('[data-cell="' + field + '"]');
    if (!cell) return;
    cell.replaceChildren(node);
  }

  function stateNode(w) {
    const frag = document.createDocumentFragment();
    frag.appendChild(el("span", "badge state-" + w.state, w.state));
    if (w.muted_until) {
      frag.appendChild(document.createTextNode(" "));
      const m = el("span", "badge muted-badge", "muted");
      m.title = "until " + w.muted_until;
      frag.appendChild(m);
    }
    return frag;
  }

  function updateWatcher(w) {
    for (const scope of document.querySelectorAll("[data-watcher]")) {
      if (scope.dataset.watcher !== w.name || scope.classList.contains("actions")) continue;
      setCell(scope, "state", stateNode(w));
      setCell(scope, "last_check", timeNode(w.last_check));
      setCell(scope, "next_check", w.paused ? el("span", "muted", "paused") : timeNode(w.next_check));
      setCell(scope, "checks", document.createTextNode(String(w.checks)));
      setCell(scope, "failures", document.createTextNode(String(w.failures)));
      setCell(scope, "failures_total", document.createTextNode(String(w.failures_total)));
      setCell(scope, "alerts_24h", document.createTextNode(String(w.alerts_24h)));
      setCell(scope, "last_error", document.createTextNode(w.last_error || ""));
      const toggle = scope.querySelector("button[data-action]");
      if (toggle) {
        const verb = w.paused ? "resume" : "pause";
        toggle.dataset.action = verb;
        toggle.textContent = w.paused ? "Resume" : "Pause";
        toggle.form.action = "/watchers/" + encodeURIComponent(w.name) + "/" + verb;
      }
    }
  }

  const url = document.body.dataset.stream;
  if (!url || !window.EventSource) {
    live.hidden = true;
    return;
  }
  const source = new EventSource(url);
  source.addEventListener("open", function () {
    live.textContent = "live";
    live.classList.add("on");
  });
  source.addEventListener("error", function () {
    live.textContent = "reconnecting";
    live.classList.remove("on");
  });
  source.addEventListener("alert", function (event) {
    addAlert(JSON.parse(event.data));
  });
  source.addEventListener("watcher", function (event) {
    updateWatcher(JSON.parse(event.data));
  });
})();
