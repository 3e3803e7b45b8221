// host.storage is private to this plugin and durable: `isola call plugins notes add "buy milk"`
// twice, then `isola call plugins notes all`.
export default {
  add(text) {
    const id = `note:${String(Date.now()).padStart(15, "0")}:${Math.random().toString(36).slice(2, 6)}`;
    host.storage.set(id, { text, at: new Date().toISOString() });
    return id;
  },
  all() {
    return host.storage.list("note:").map((id) => ({ id, ...host.storage.get(id) }));
  },
  remove(id) {
    return host.storage.delete(id);
  },
  main() {
    return `${host.storage.list("note:").length} note(s) stored`;
  },
};
