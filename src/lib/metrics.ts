/**
 * A small Prometheus text-format registry: counters and histograms with labels, gauges read on
 * scrape. A registry's state is plain data, so the auth service's primary can sum its workers'.
 */
type Labels = Record<string, string>;
type MetricType = "counter" | "gauge" | "histogram";

/** One metric as data. Per label set: [value] for a counter or gauge; for a histogram the count of each bucket, then sum and count. */
export interface MetricState {
  name: string;
  help: string;
  type: MetricType;
  /** Histograms: the buckets' upper bounds, ascending. */
  bounds?: number[];
  /** Gauges: each worker holds its own share (its connections), so workers' values add up. */
  perWorker?: boolean;
  series: { labels: Labels; values: number[] }[];
}

const labelText = (l: Labels) => {
  const parts = Object.entries(l).map(([k, v]) => `${k}="${v.replace(/["\\\n]/g, "_")}"`);
  return parts.length ? `{${parts.join(",")}}` : "";
};

/** Series by label set, each a vector of numbers that observations add to. */
class Series {
  private readonly byLabels = new Map<string, { labels: Labels; values: number[] }>();
  constructor(private readonly width: number) {}
  at(labels: Labels): number[] {
    const key = labelText(labels);
    let s = this.byLabels.get(key);
    if (!s) this.byLabels.set(key, (s = { labels, values: new Array<number>(this.width).fill(0) }));
    return s.values;
  }
  state(): MetricState["series"] {
    return [...this.byLabels.values()].map((s) => ({ labels: s.labels, values: [...s.values] }));
  }
}

export class Counter {
  readonly series = new Series(1);
  inc(labels: Labels = {}, by = 1): void {
    this.series.at(labels)[0]! += by;
  }
}

/** Observations counted into fixed buckets (upper bounds, ascending), with their sum. */
export class Histogram {
  readonly series: Series;
  constructor(readonly bounds: number[]) {
    this.series = new Series(bounds.length + 2);
  }
  observe(value: number, labels: Labels = {}): void {
    const v = this.series.at(labels);
    const i = this.bounds.findIndex((b) => value <= b);
    if (i >= 0) v[i]!++;
    v[this.bounds.length]! += value;
    v[this.bounds.length + 1]!++;
  }
}

export class Registry {
  private readonly metrics: (() => MetricState)[] = [];

  counter(name: string, help: string): Counter {
    const c = new Counter();
    this.metrics.push(() => ({ name, help, type: "counter", series: c.series.state() }));
    return c;
  }

  histogram(name: string, help: string, bounds: number[]): Histogram {
    const h = new Histogram(bounds);
    this.metrics.push(() => ({ name, help, type: "histogram", bounds, series: h.series.state() }));
    return h;
  }

  /** `read` gives one value, or one per label set. */
  gauge(name: string, help: string, read: () => number | { labels: Labels; value: number }[] | undefined, opts: { perWorker?: boolean } = {}): void {
    this.metrics.push(() => {
      const v = read();
      const series = v === undefined ? [] : typeof v === "number" ? [{ labels: {}, values: [v] }] : v.map((s) => ({ labels: s.labels, values: [s.value] }));
      return { name, help, type: "gauge", series, ...(opts.perWorker ? { perWorker: true } : {}) };
    });
  }

  state(): MetricState[] {
    return this.metrics.map((m) => m());
  }

  render(): string {
    return renderMetrics([this.state()]);
  }
}

/**
 * Prometheus text for one or more registries' states (a cluster's workers), summing counters and
 * histograms with the same name and labels; gauges are states that every worker reads alike, so the
 * highest counts, unless each worker holds its own share (perWorker): those add up too.
 */
export function renderMetrics(states: MetricState[][]): string {
  const merged = new Map<string, { metric: MetricState; series: Map<string, { labels: Labels; values: number[] }> }>();
  for (const m of states.flat()) {
    let entry = merged.get(m.name);
    if (!entry) merged.set(m.name, (entry = { metric: m, series: new Map() }));
    for (const s of m.series) {
      const key = labelText(s.labels);
      const cur = entry.series.get(key);
      if (cur) s.values.forEach((v, i) => (cur.values[i] = m.type === "gauge" && !m.perWorker ? Math.max(cur.values[i]!, v) : cur.values[i]! + v));
      else entry.series.set(key, { labels: s.labels, values: [...s.values] });
    }
  }
  const lines = [...merged.values()].map(({ metric: { name, help, type, bounds = [] }, series }) => {
    const samples = [...series.values()].flatMap(({ labels, values }) => {
      if (type !== "histogram") return [`${name}${labelText(labels)} ${values[0]}`];
      let cumulative = 0;
      const count = values[bounds.length + 1]!;
      return [
        ...bounds.map((b, i) => `${name}_bucket${labelText({ ...labels, le: String(b) })} ${(cumulative += values[i]!)}`),
        `${name}_bucket${labelText({ ...labels, le: "+Inf" })} ${count}`,
        `${name}_sum${labelText(labels)} ${values[bounds.length]}`,
        `${name}_count${labelText(labels)} ${count}`,
      ];
    });
    return [`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`, ...samples].join("\n");
  });
  return lines.join("\n") + "\n";
}
