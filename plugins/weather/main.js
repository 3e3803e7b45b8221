// Async hooks may await async host functions; the call's time limit covers the whole await.
export default {
  async report(userId) {
    const user = await host.fetchUser(userId);
    console.log(`report for ${user.name}`);
    return { user: user.name, city: user.city, forecast: `Sunny in ${user.city}` };
  },

  async main() {
    const users = await Promise.all([1, 2].map((id) => host.fetchUser(id)));
    return users.map((u) => `${u.name} (${u.city})`).join(", ");
  },
};
