// Plugins may import their own files (and nothing outside their folder).
export function punctuate(text) {
  return `${text}!`;
}
