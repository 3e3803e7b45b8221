import type { Item, Report } from "./types.ts";

export enum Level {
  Empty = "empty",
  Low = "low",
  Plenty = "plenty",
}

export class Stock {
  private items = new Map<string, Item>();

  constructor(private readonly lowMark: number) {}

  add(item: Item): number {
    const known = this.items.get(item.sku);
    const quantity = (known?.quantity ?? 0) + item.quantity;
    this.items.set(item.sku, { ...item, quantity });
    return quantity;
  }

  take(sku: string, n: number): number {
    const item = this.items.get(sku);
    if (!item) throw new Error(`unknown item ${sku}`);
    if (item.quantity < n) throw new RangeError(`only ${item.quantity} of ${sku} left`);
    item.quantity -= n;
    return item.quantity;
  }

  report(): Report {
    const all = [...this.items.values()];
    const total = all.reduce((sum, i) => sum + i.quantity, 0);
    const low = all.filter((i) => i.quantity <= this.lowMark).map((i) => i.sku);
    return { total, low, level: levelOf(total, this.lowMark) };
  }
}

export function levelOf(total: number, lowMark: number): Level {
  if (total === 0) return Level.Empty;
  return total <= lowMark ? Level.Low : Level.Plenty;
}
