// Types only: `import type` of this file disappears from the JavaScript.
export interface Item {
  sku: string;
  name: string;
  quantity: number;
}

export type Report = { total: number; low: string[]; level: string };
