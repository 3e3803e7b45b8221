// A classic-script plugin: one file, defining a global `plugin` object of hooks.
// Its state lives as long as the plugin does.
var count = 0;

var plugin = {
  increment(by) {
    count += by === undefined ? 1 : by;
    return count;
  },
  main() {
    return `counter at ${plugin.increment()}`;
  },
};
