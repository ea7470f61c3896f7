// Draws the job's metric charts from the JSON the server renders into #chart-data, and redraws
// after every HTMX poll swaps the live section in.
(function () {
  function draw() {
    var holder = document.getElementById("charts");
    var source = document.getElementById("chart-data");
    if (!holder || !source || !window.Plotly) return;
    var charts = JSON.parse(source.textContent || "[]");
    if (!charts.length) { holder.innerHTML = '<p class="muted">Charts appear after the first training steps.</p>'; return; }
    holder.innerHTML = "";
    charts.forEach(function (chart, i) {
      var div = document.createElement("div");
      div.id = "chart-" + i;
      div.className = "chart";
      div.style.minHeight = "280px";
      holder.appendChild(div);
      var traces = chart.series.map(function (s) {
        return { x: s.x, y: s.y, name: s.name, mode: s.x.length > 30 ? "lines" : "lines+markers", type: "scatter" };
      });
      Plotly.newPlot(div, traces, {
        title: { text: chart.title, font: { size: 14 } }, margin: { t: 36, r: 10, b: 36, l: 44 },
        xaxis: { title: { text: "step" } }, legend: { orientation: "h" }, height: 280
      }, { displayModeBar: false, responsive: true });
    });
  }
  document.addEventListener("DOMContentLoaded", draw);
  document.body.addEventListener("htmx:afterSettle", draw);
})();
