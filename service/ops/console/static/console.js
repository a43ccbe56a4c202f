// bss-relay console: the overview's live view of the buckets. Polls GET /api/quota (the
// session cookie authenticates it) and rebuilds the table's rows with textContent only:
// nothing from the answer is ever parsed as HTML. Without JavaScript the page still shows
// the rows as of its load; reload to refresh.
"use strict";
(function () {
  var PERIOD_MS = 2000;
  var status = document.getElementById("quota-updated");
  var body = document.getElementById("quota-rows");
  if (!status || !body) { return; }
  var source = status.getAttribute("data-source");

  function number(value) {
    if (value === null || value === undefined) { return "-"; }
    return String(Math.round(value * 1000) / 1000);
  }
  function cell(row, text, numeric) {
    var td = document.createElement("td");
    td.textContent = text;
    if (numeric) { td.className = "num"; }
    row.appendChild(td);
  }
  function render(rows) {
    var fresh = document.createDocumentFragment();
    rows.forEach(function (r) {
      var tr = document.createElement("tr");
      if (r.waiting > 0) { tr.className = "waiting"; }
      cell(tr, r.api); cell(tr, r.kind); cell(tr, r.key);
      cell(tr, number(r.limit), true); cell(tr, number(r.rate), true);
      cell(tr, String(r.waiting), true);
      cell(tr, r.oldest_wait_s === null ? "-" : r.oldest_wait_s.toFixed(1) + " s", true);
      cell(tr, String(r.throttled_5m), true);
      cell(tr, r.paused ? "paused" : "");
      fresh.appendChild(tr);
    });
    if (!rows.length) {
      var tr = document.createElement("tr");
      tr.className = "empty";
      var td = document.createElement("td");
      td.colSpan = 9;
      td.textContent = "No bucket is busy.";
      tr.appendChild(td);
      fresh.appendChild(tr);
    }
    body.replaceChildren(fresh);
  }
  function poll() {
    fetch(source, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (answer) {
        if (answer.status === 401) { throw new Error("signed out: reload to sign in again"); }
        if (!answer.ok) { throw new Error("the console answered " + answer.status); }
        return answer.json();
      })
      .then(function (rows) {
        render(rows);
        status.textContent = "Live: updated " + new Date().toLocaleTimeString() + ".";
        status.setAttribute("data-live", "1");
        window.setTimeout(poll, PERIOD_MS);
      })
      .catch(function (error) {
        status.textContent = "Not live (" + error.message + ").";
        window.setTimeout(poll, PERIOD_MS * 3);
      });
  }
  poll();
})();
