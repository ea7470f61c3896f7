// Draws the dataset page's plotly figures. The server renders each figure as JSON (a
// json_script tag next to its <div data-chart>); this draws them on load and after every HTMX
// swap of the polled section.
(function () {
  function draw(root) {
    if (!window.Plotly) return;
    (root || document).querySelectorAll("[data-chart]").forEach(function (div) {
      var source = document.getElementById(div.dataset.chart);
      if (!source || div.dataset.drawn) return;
      var figure = JSON.parse(source.textContent);
      Plotly.newPlot(div, figure.data, figure.layout, { displayModeBar: false, responsive: true });
      div.dataset.drawn = "1";
    });
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () { draw(document); });
  } else {
    draw(document);
  }
  document.body.addEventListener("htmx:afterSettle", function () { draw(document); });
})();
