// Chain subscriber: returning { cancel: true } stops the chain; nothing later sees the message.
const BANNED = ["spam", "scam"];

export default {
  onChat(message) {
    const text = String(message.text).toLowerCase();
    if (BANNED.some((word) => text.includes(word))) {
      console.warn(`blocked a message from ${message.user}`);
      return { cancel: true };
    }
  },
};
