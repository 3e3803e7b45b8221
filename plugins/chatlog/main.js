// Chain subscriber that changes nothing: it returns undefined and just observes.
let seen = 0;

export default {
  onChat(message) {
    seen += 1;
    console.log(`${message.user}: ${message.text}`);
  },
  count() {
    return seen;
  },
};
