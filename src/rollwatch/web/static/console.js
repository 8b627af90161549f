// Live progress for the console: a long poll on /ops/progress, no build step.
"use strict";
(function () {
  var state = document.getElementById("live-state");
  if (!state) { return; }
  var after = parseInt(state.dataset.head || "0", 10) || 0;
  function set(row, field, text) {
    var el = row.querySelector('[data-field="' + field + '"]');
    if (el) { el.textContent = text; }
  }
  function apply(data) {
    data.runs.forEach(function (r) {
      var row = document.getElementById("run-" + r.run_id);
      if (!row) { return; }
      set(row, "status", r.status);
      set(row, "done", String(r.done));
      set(row, "planned", String(r.planned));
      set(row, "rate", r.rate);
      set(row, "cost", r.cost);
      var bar = row.querySelector('[data-field="bar"]');
      if (bar) { bar.value = r.progress; }
    });
    // A run shown as running that is no longer among the running ones has ended:
    // reload once for its final figures.
    var running = {};
    data.runs.forEach(function (r) { running[r.run_id] = true; });
    var ended = Array.prototype.some.call(document.querySelectorAll("[data-run]"), function (row) {
      var st = row.querySelector('[data-field="status"]');
      return st && st.textContent === "running" && !running[row.dataset.run];
    });
    if (ended) { window.location.reload(); }
  }
  var wait = 0; // the first poll answers at once (the page may be stale already), then long polls
  function poll() {
    fetch("/ops/progress?after=" + after + "&wait=" + wait, { credentials: "same-origin", cache: "no-store" })
      .then(function (resp) {
        if (!resp.ok) { throw new Error("HTTP " + resp.status); }
        return resp.json();
      })
      .then(function (data) {
        after = data.head;
        wait = 25;
        state.textContent = "live at seq " + after;
        apply(data);
        setTimeout(poll, 250);
      })
      .catch(function () {
        state.textContent = "reconnecting";
        setTimeout(poll, 3000);
      });
  }
  poll();
})();
