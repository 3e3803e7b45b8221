// A folder plugin: an ES module whose default export is an object of hooks.
// `host` holds exactly what the host application whitelisted.
import { punctuate } from "./lib/format.js";

export default {
  greet(name) {
    host.log(`greeting ${name}`);
    return punctuate(`Hello, ${name}`) + ` App version: ${host.config.version}`;
  },

  farewell(name) {
    return punctuate(`Goodbye, ${name}`);
  },
};
