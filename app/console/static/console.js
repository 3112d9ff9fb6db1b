// The staff console's own script: the dashboard charts (uPlot), drawn from the JSON
// block the page carries. No inline script anywhere (the CSP forbids it).
(function () {
  "use strict";

  function drawCharts() {
    var source = document.getElementById("daily-series");
    if (!source || typeof window.uPlot === "undefined") return;
    var data = JSON.parse(source.textContent);
    var xs = data.dates.map(function (d) { return Date.parse(d + "T00:00:00Z") / 1000; });
    var charts = [
      ["chart-volume", [
        { label: "Conversations", stroke: "#0b5cad", values: data.conversations },
        { label: "Escalations", stroke: "#a4161a", values: data.escalations }]],
      ["chart-rate", [{ label: "Escalation rate %", stroke: "#7a4b00", values: data.escalation_rate }]],
      ["chart-response", [
        { label: "p50 s", stroke: "#1d6b2f", values: data.response_p50 },
        { label: "p95 s", stroke: "#6b2fa0", values: data.response_p95 }]]
    ];
    var plots = [];
    charts.forEach(function (chart) {
      var box = document.getElementById(chart[0]);
      if (!box) return;
      var series = [{}].concat(chart[1].map(function (s) {
        return { label: s.label, stroke: s.stroke, width: 2, spanGaps: true };
      }));
      var values = [xs].concat(chart[1].map(function (s) { return s.values; }));
      var plot = new window.uPlot(
        { width: Math.max(280, box.clientWidth), height: 220, series: series,
          scales: { x: { time: true } } },
        values, box);
      plots.push([plot, box]);
    });
    window.addEventListener("resize", function () {
      plots.forEach(function (p) { p[0].setSize({ width: Math.max(280, p[1].clientWidth), height: 220 }); });
    });
  }

  // The live feed's state, for people (the status line) and for tests (data-live).
  function showLive(event, state, words) {
    var source = event.detail && event.detail.elt ? event.detail.elt : event.target;
    if (!source || !source.setAttribute) return;
    source.setAttribute("data-live", state);
    var line = source.querySelector(".live-status");
    if (line) line.textContent = words;
  }
  document.addEventListener("htmx:sseOpen", function (event) {
    var source = event.detail && event.detail.elt ? event.detail.elt : event.target;
    var again = source && source.getAttribute && source.getAttribute("data-live") === "reconnecting";
    showLive(event, "open", "Live: changes appear here by themselves.");
    // The feed does not replay what happened while it was down: refetch instead.
    if (again && window.htmx) {
      source.querySelectorAll("[hx-trigger^='sse:']").forEach(function (element) {
        window.htmx.trigger(element, element.getAttribute("hx-trigger").split(",")[0].trim());
      });
    }
  });
  document.addEventListener("htmx:sseError", function (event) {
    showLive(event, "reconnecting", "Connection lost, reconnecting…");
  });

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", drawCharts);
  } else {
    drawCharts();
  }
})();
