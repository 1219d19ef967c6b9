// Draws the usage dashboard's chart from the figures the server put in the page
// (#usage-chart-data); the table below the chart shows the same numbers.
(function () {
  "use strict";
  const canvas = document.getElementById("usage-chart");
  const source = document.getElementById("usage-chart-data");
  if (!canvas || !source || typeof Chart === "undefined") return;
  const data = JSON.parse(source.textContent);
  const style = getComputedStyle(document.documentElement);
  const accent = style.getPropertyValue("--accent").trim() || "#3b5bdb";
  const text = style.getPropertyValue("--muted").trim() || "#6a6f78";
  Chart.defaults.color = text;
  new Chart(canvas, {
    data: {
      labels: data.labels,
      datasets: [
        { type: "bar", label: "Tokens", data: data.tokens, yAxisID: "tokens", backgroundColor: accent },
        { type: "line", label: "Cost (USD)", data: data.cost, yAxisID: "cost", borderColor: "#e67700", backgroundColor: "#e67700", pointRadius: 2 },
      ],
    },
    options: {
      maintainAspectRatio: false,
      animation: false,
      interaction: { mode: "index", intersect: false },
      scales: {
        tokens: { type: "linear", position: "left", beginAtZero: true, title: { display: true, text: "tokens" } },
        cost: { type: "linear", position: "right", beginAtZero: true, grid: { drawOnChartArea: false }, title: { display: true, text: "USD" } },
      },
    },
  });
})();
