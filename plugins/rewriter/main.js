// Chain subscriber: returning { payload } replaces the message for later subscribers and the host.
const EMOJI = { ":)": "🙂", ":(": "🙁", "<3": "❤️" };

function rewrite(text) {
  let out = String(text);
  for (const [from, to] of Object.entries(EMOJI)) out = out.split(from).join(to);
  if (out.length > 3 && out === out.toUpperCase() && /[A-Z]/.test(out)) out = out.toLowerCase();
  return out;
}

export default {
  rewrite,
  onChat(message) {
    const text = rewrite(message.text);
    if (text !== message.text) return { payload: { ...message, text } };
  },
};
