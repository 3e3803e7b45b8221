// A TypeScript plugin: isola strips the types at load (no type checking: that is the editor's
// and `tsc --noEmit`'s job) and maps errors back to these lines.
import type { Item, Report } from "./lib/types.ts";
import { Stock } from "./lib/stock.ts";

const stock = new Stock(5);

export default {
  add(item: Item): number {
    host.log(`adding ${item.quantity} × ${item.sku}`);
    return stock.add(item);
  },

  take({ sku, n }: { sku: string; n: number }): number {
    return stock.take(sku, n);
  },

  report(): Report {
    return stock.report();
  },
} satisfies Plugin;
