// uPlot charts in the page's theme. uPlot (the pinned npm package, served from
// /app/static/vendor) draws to a canvas: ~50 KB, tens of thousands of points in milliseconds.
/* global uPlot */

function css(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

function axes(unit) {
  const stroke = css("--muted");
  const grid = { stroke: css("--chart-grid"), width: 1 };
  return [
    { stroke, grid, ticks: grid },
    { stroke, grid, ticks: grid, label: unit || undefined, size: 60 },
  ];
}

/** Seconds since the epoch, as uPlot wants them. */
export function seconds(iso) {
  return Date.parse(iso) / 1000;
}

/** A streaming chart of one metric: `data` is [[t...], [v...]] plus, for roles that see
 * invalid readings, [invalid v or null...] drawn as red points. */
export function liveChart(el, { metric, unit, width, height = 160, data }) {
  const crit = css("--crit");
  const invalid = data.length > 2
    ? [{ label: "invalid", stroke: crit, fill: crit, paths: () => null, points: { show: true, size: 7, fill: crit } }]
    : [];
  return new uPlot(
    {
      width,
      height,
      scales: { x: { time: true } },
      legend: { show: true },
      cursor: { drag: { x: false, y: false } },
      axes: axes(unit),
      series: [
        {},
        { label: unit ? `${metric} (${unit})` : metric, stroke: css("--chart-1"), width: 1.5, points: { show: false }, spanGaps: false },
        ...invalid,
      ],
    },
    data,
    el,
  );
}

/** A history chart: average line with a min/max band (and invalid buckets marked). `rows`
 * are bucket rows of the query API ({timestamp, <m>_avg, <m>_min, <m>_max[, <m>_invalid]}). */
export function historyData(rows, metric, { invalid = false } = {}) {
  const n = rows.length;
  const t = new Float64Array(n);
  const avg = new Array(n);
  const min = new Array(n);
  const max = new Array(n);
  const bad = new Array(n);
  for (let i = 0; i < n; i++) {
    const row = rows[i];
    t[i] = Date.parse(row.timestamp) / 1000;
    avg[i] = row[`${metric}_avg`];
    min[i] = row[`${metric}_min`];
    max[i] = row[`${metric}_max`];
    bad[i] = row[`${metric}_invalid`] > 0 ? avg[i] : null;
  }
  return invalid ? [t, avg, min, max, bad] : [t, avg, min, max];
}

export function historyChart(el, { metric, unit, width, height = 300, data, onSelect }) {
  const marked = data.length > 4;
  const line = css("--chart-1");
  const band = css("--chart-band");
  const crit = css("--crit");
  const options = {
    width,
    height,
    scales: { x: { time: true } },
    axes: axes(unit),
    cursor: { drag: { x: true, y: false, setScale: false } },
    series: [
      {},
      { label: unit ? `${metric} avg (${unit})` : `${metric} avg`, stroke: line, width: 1.5, points: { show: false } },
      { label: "min", stroke: band, width: 0.5, points: { show: false } },
      { label: "max", stroke: band, width: 0.5, points: { show: false } },
      ...(marked ? [{ label: "invalid", stroke: crit, paths: () => null, points: { show: true, size: 7, fill: crit } }] : []),
    ],
    bands: [{ series: [3, 2], fill: band }],
    hooks: {
      setSelect: [
        (u) => {
          if (u.select.width < 5) return;
          const from = u.posToVal(u.select.left, "x");
          const to = u.posToVal(u.select.left + u.select.width, "x");
          u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
          onSelect?.(from * 1000, to * 1000);
        },
      ],
    },
  };
  return new uPlot(options, data, el);
}
