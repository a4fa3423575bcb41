/** A small Prometheus text-format registry: counters with labels and gauges read on scrape. */
type Labels = Record<string, string>;

interface Metric {
  name: string;
  help: string;
  type: "counter" | "gauge";
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

export class Registry {
  private readonly metrics: Metric[] = [];

  counter(name: string, help: string): Counter {
    const c = new Counter();
    this.metrics.push({ name, help, type: "counter", render: () => c.samples().map(([l, v]) => `${name}${labelText(l)} ${v}`) });
    return c;
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
