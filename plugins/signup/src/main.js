// Source of the `signup` example plugin: real npm libraries (zod for validation, uuid for ids)
// bundled into one file with esbuild. `main.js` beside this folder is the bundled output that
// isola loads; rebuild it with `./build.sh` after editing this file.
//
// What they need from the platform: zod's `.url()` parses with the standard `URL` class,
// `uuid` draws from `crypto.getRandomValues`, and the byte count uses `TextEncoder`.
import { z } from "zod";
import { v4 as uuidv4, validate as isUuid } from "uuid";

const Signup = z.object({
  name: z.string().min(1).max(80),
  email: z.string().email(),
  homepage: z.string().url().optional(),
  age: z.number().int().min(13).optional(),
});

export default {
  // Validates a signup; the accepted one gets an id and its size in UTF-8 bytes.
  signup(input) {
    const parsed = Signup.safeParse(input);
    if (!parsed.success) {
      return { ok: false, errors: parsed.error.issues.map((i) => `${i.path.join(".") || "input"}: ${i.message}`) };
    }
    const id = uuidv4();
    return { ok: true, id, validId: isUuid(id), bytes: new TextEncoder().encode(JSON.stringify(parsed.data)).length, user: parsed.data };
  },

  main() {
    const good = this.signup({ name: "Zoë", email: "zoe@example.com", homepage: "https://zoe.example/" });
    const bad = this.signup({ name: "", email: "nope", homepage: "not a url" });
    return `accepted ${good.user.name} (${good.bytes} bytes), refused ${bad.errors.length} fields`;
  },
};
