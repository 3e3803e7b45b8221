//! `isola new NAME [--ts] [DIR]`: a working plugin to start from.
//!
//! Why these files: `plugin.json` and the entry are what isola loads; `isola.d.ts` and
//! `tsconfig.json` are for the author's editor (autocompletion for `host`, the web globals
//! that exist inside a plugin and no others), in JavaScript plugins too (`checkJs`).

use std::path::{Path, PathBuf};

use isola::HostApi;
use serde_json::json;

/// Writes the plugin `name` into `dir/name` and returns its folder.
pub fn new_plugin(host: &HostApi, dir: &Path, name: &str, typescript: bool) -> Result<PathBuf, String> {
    isola::manifest::validate_id(name).map_err(|e| format!("`{name}` cannot be a plugin id: {e}"))?;
    let folder = dir.join(name);
    if folder.exists() {
        return Err(format!("{} already exists; pick another name or remove it", folder.display()));
    }
    let main = if typescript { "main.ts" } else { "main.js" };
    let manifest = json!({
        "id": name,
        "name": name,
        "version": "0.1.0",
        "description": format!("The {name} plugin."),
        "main": main,
        "apiVersion": 1,
        "permissions": [],
    });
    let write = |file: &str, text: &str| {
        std::fs::write(folder.join(file), text)
            .map_err(|e| format!("cannot write {}: {e}", folder.join(file).display()))
    };
    // The entry last: a watching `isola dev` loads the plugin when its files appear, and
    // should find them all there.
    std::fs::create_dir_all(&folder).map_err(|e| format!("cannot create {}: {e}", folder.display()))?;
    isola::typings::write(host, &folder).map_err(|e| format!("cannot write isola.d.ts: {e}"))?;
    write("tsconfig.json", TSCONFIG)?;
    write(main, &if typescript { main_ts(name) } else { main_js(name) })?;
    write("plugin.json", &(serde_json::to_string_pretty(&manifest).unwrap() + "\n"))?;
    Ok(folder)
}

fn main_ts(name: &str) -> String {
    format!(
        r#"// {name}: an isola plugin. Each function of the default export is a hook; try it with
//   isola call . {name} hello Ada
// Types are for your editor (isola.d.ts types `host`); isola strips them at load.

interface Greeting {{
  text: string;
  count: number;
}}

let count = 0;

export default {{
  hello(name: string = "world"): Greeting {{
    count += 1;
    console.log(`hello #${{count}} for ${{name}}`);
    return {{ text: `Hello, ${{name}}!`, count }};
  }},
}} satisfies Plugin;
"#
    )
}

fn main_js(name: &str) -> String {
    format!(
        r#"// {name}: an isola plugin. Each function of the default export is a hook; try it with
//   isola call . {name} hello Ada
// isola.d.ts and tsconfig.json give your editor the types of `host` and the globals.

let count = 0;

export default /** @satisfies {{Plugin}} */ ({{
  /** @param {{string}} [name] */
  hello(name = "world") {{
    count += 1;
    console.log(`hello #${{count}} for ${{name}}`);
    return {{ text: `Hello, ${{name}}!`, count }};
  }},
}});
"#
    )
}

const TSCONFIG: &str = r#"{
  // For the editor and `npx tsc --noEmit`: isola itself only strips types.
  "compilerOptions": {
    "target": "es2022",
    "module": "esnext",
    "moduleResolution": "bundler",
    "lib": ["es2022"],
    "types": [],
    "strict": true,
    "noEmit": true,
    "allowImportingTsExtensions": true,
    "resolveJsonModule": true,
    "allowJs": true,
    "checkJs": true,
    "isolatedModules": true
  },
  "include": ["**/*.ts", "**/*.mts", "**/*.js"]
}
"#;
