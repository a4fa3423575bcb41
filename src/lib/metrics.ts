/** A small Prometheus text-format registry: counters and histograms with labels, gauges read on scrape. */
type Labels = Record<string, string>;

interface Metric {
  name: string;
  help: string;
  type: "counter" | "gauge" | "histogram";
  render(): string[];
}

const labelText = (l: Labels) => {
  const parts = Object.entries(l).map(([k, v]) => `${k}="${v.replace(/["\\\n]/g, "_")}"`);
  return parts.length ? `{${parts.join(",")}}` : "";
};

export class Counter {
  private readonly values = new Map<string, { labels: Labels; value: number }>();
  inc(labels: Labels = {}, by = 1): void {
    const key = labelText(labels);
    const cur = this.values.get(key);
    if (cur) cur.value += by;
    else this.values.set(key, { labels, value: by });
  }
  get(labels: Labels = {}): number {
    return this.values.get(labelText(labels))?.value ?? 0;
  }
  samples(): [Labels, number][] {
    return [...this.values.values()].map((v) => [v.labels, v.value]);
  }
}

/** Observations counted into fixed buckets (upper bounds, ascending), with their sum. */
export class Histogram {
  private readonly series = new Map<string, { labels: Labels; counts: number[]; sum: number; count: number }>();
  constructor(readonly bounds: number[]) {}
  observe(value: number, labels: Labels = {}): void {
    const key = labelText(labels);
    let s = this.series.get(key);
    if (!s) this.series.set(key, (s = { labels, counts: this.bounds.map(() => 0), sum: 0, count: 0 }));
    const i = this.bounds.findIndex((b) => value <= b);
    if (i >= 0) s.counts[i]!++;
    s.sum += value;
    s.count++;
  }
  /** Prometheus lines: cumulative `_bucket{le}` per bound and +Inf, then `_sum` and `_count`. */
  render(name: string): string[] {
    return [...this.series.values()].flatMap(({ labels, counts, sum, count }) => {
      let cumulative = 0;
      return [
        ...this.bounds.map((b, i) => `${name}_bucket${labelText({ ...labels, le: String(b) })} ${(cumulative += counts[i]!)}`),
        `${name}_bucket${labelText({ ...labels, le: "+Inf" })} ${count}`,
        `${name}_sum${labelText(labels)} ${sum}`,
        `${name}_count${labelText(labels)} ${count}`,
      ];
    });
  }
}

export class Registry {
  private readonly metrics: Metric[] = [];

  counter(name: string, help: string): Counter {
    const c = new Counter();
    this.metrics.push({ name, help, type: "counter", render: () => c.samples().map(([l, v]) => `${name}${labelText(l)} ${v}`) });
    return c;
  }

  histogram(name: string, help: string, bounds: number[]): Histogram {
    const h = new Histogram(bounds);
    this.metrics.push({ name, help, type: "histogram", render: () => h.render(name) });
    return h;
  }

  gauge(name: string, help: string, read: () => number | undefined): void {
    this.metrics.push({
      name,
      help,
      type: "gauge",
      render: () => {
        const v = read();
        return v === undefined ? [] : [`${name} ${v}`];
      },
    });
  }

  render(): string {
    return this.metrics.map((m) => [`# HELP ${m.name} ${m.help}`, `# TYPE ${m.name} ${m.type}`, ...m.render()].join("\n")).join("\n") + "\n";
  }
}
