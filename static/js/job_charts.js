// The job's metric charts. Each chart is drawn once (Plotly.newPlot) into a cell of #charts and
// then updated in place (Plotly.react) with the series the charts endpoint returns: on load, and
// after every poll that swaps in a #job-live whose data-charts-version differs from the one drawn.
// Plotly follows its cell's size (responsive), so a chart fits any width, also after a reload
// mid-run; legends sit between the title and the plot, with short names ("training", "validation").
(function () {
  "use strict";
  var COLORS = ["#3a5bd9", "#d9480f", "#2b8a3e", "#862e9c", "#c2255c", "#1098ad", "#5c940d", "#495057"];
  var drawn = null;

  function traces(chart) {
    if (chart.kind === "bar") {
      // One evaluation of several metrics: a bar per metric, its value written on it.
      var last = chart.series.map(function (s) { return s.y[s.y.length - 1]; });
      return [{
        type: "bar",
        x: chart.series.map(function (s) { return s.name; }),
        y: last,
        text: last.map(function (v) { return chart.share ? (100 * v).toFixed(1) + "%" : v.toFixed(4); }),
        textposition: "auto",
        marker: { color: COLORS[0] },
        hovertemplate: "%{x}: %{text}<extra>step " + chart.series[0].x[0] + "</extra>",
        showlegend: false
      }];
    }
    return chart.series.map(function (s, i) {
      var few = s.x.length <= 30;
      return {
        type: "scatter",
        name: s.name,
        x: s.x,
        y: s.y,
        mode: few ? "lines+markers" : "lines",
        marker: { size: s.x.length <= 3 ? 10 : 6, color: COLORS[i % COLORS.length] },
        line: { color: COLORS[i % COLORS.length], width: 2 },
        hovertemplate: "step %{x}: %{y" + (chart.share ? ":.1%" : ":.4f") + "}<extra>" + s.name + "</extra>"
      };
    });
  }

  function layout(chart, div) {
    var bar = chart.kind === "bar";
    return {
      title: { text: chart.title, x: 0.5, xanchor: "center", yref: "container", y: 1, yanchor: "top",
        pad: { t: 10 }, font: { size: 15 } },
      autosize: true,
      margin: { t: (div && div._tuneryTop) || (bar ? 44 : 72), r: 16, b: 8, l: 8 },
      xaxis: bar ? { type: "category", automargin: true }
        : { title: { text: "step", standoff: 6 }, automargin: true, rangemode: "tozero" },
      yaxis: { automargin: true, tickformat: chart.share ? ".0%" : "", rangemode: chart.share ? "tozero" : "normal" },
      // Above the plot, under the title: plotly grows the top margin to fit it, but not past
      // the title; fitLegend moves the plot down when a narrow screen wraps it in rows.
      legend: { orientation: "h", x: 0.5, xanchor: "center", y: 1.02, yanchor: "bottom" },
      showlegend: !bar && chart.series.length > 1,
      uirevision: chart.id  // keeps a user's zoom across updates
    };
  }

  // The top margin that puts a wrapped legend between the title and the plot, remembered per
  // chart so that the next update starts from it (no jump on every poll).
  function fitLegend(div) {
    var legend = div.querySelector(".legend");
    var title = div.querySelector(".gtitle");
    if (!legend || !title || !div._fullLayout) return;
    var top = div.getBoundingClientRect().top;
    var l = legend.getBoundingClientRect();
    var t = title.getBoundingClientRect();
    var margin = div._fullLayout.margin.t;
    var gap = margin - (l.bottom - top);  // the legend's distance above the plot
    var wanted = Math.ceil(Math.max(72, t.bottom - top + 6 + l.height + gap));
    if (Math.abs(wanted - margin) > 1) {
      div._tuneryTop = wanted;
      Plotly.relayout(div, { "margin.t": wanted });
    }
  }

  function render(charts) {
    var holder = document.getElementById("charts");
    if (!holder || !window.Plotly) return;
    if (!charts.length) {
      holder.innerHTML = '<p class="muted">Charts appear after the first training steps.</p>';
      return;
    }
    var placeholder = holder.querySelector("p.muted");
    if (placeholder) placeholder.remove();
    var wanted = {};
    // Every cell first, then the plots: drawn one by one, the first would take the whole row
    // and keep that width after the grid reflowed (the clipped charts of issue #15).
    var fresh = [];
    charts.forEach(function (chart) {
      wanted[chart.id] = true;
      if (document.getElementById(chart.id)) return;
      var div = document.createElement("div");
      div.id = chart.id;
      div.className = "chart";
      div.setAttribute("role", "img");
      div.setAttribute("aria-label", chart.title + " chart");
      div._tuneryConfig = { displayModeBar: false, responsive: true };
      holder.appendChild(div);
      fresh.push(div);
    });
    charts.forEach(function (chart) {
      var div = document.getElementById(chart.id);
      var drawn;
      if (fresh.indexOf(div) >= 0) {
        drawn = Plotly.newPlot(div, traces(chart), layout(chart, div), div._tuneryConfig);
        // responsive: true follows the window only; the cell also changes with the grid.
        if (window.ResizeObserver) {
          new ResizeObserver(function () {
            Plotly.Plots.resize(div).then(function () { fitLegend(div); });
          }).observe(div);
        }
      } else {
        drawn = Plotly.react(div, traces(chart), layout(chart, div), div._tuneryConfig);
      }
      if (chart.kind !== "bar") drawn.then(function () { fitLegend(div); });
    });
    holder.querySelectorAll(".chart").forEach(function (div) {
      if (!wanted[div.id]) { Plotly.purge(div); div.remove(); }
    });
  }

  function refresh() {
    var holder = document.getElementById("charts");
    var live = document.getElementById("job-live");
    if (!holder || !live) return;
    var version = live.dataset.chartsVersion;
    if (version === drawn) return;
    drawn = version;
    fetch(holder.dataset.src, { credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (charts) { if (charts) render(charts); });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", refresh);
  else refresh();
  document.body.addEventListener("htmx:afterSettle", refresh);
})();
