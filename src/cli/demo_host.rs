//! The small host API the CLI gives plugins, so the bundled examples run from the shell:
//! `host.log(msg)`, `host.config` and the async `host.fetchUser(id)`.

use std::time::Duration;

use isola::HostApi;
use serde_json::json;

pub fn demo_host() -> HostApi {
    HostApi::new()
        .func("log", |(msg,): (String,)| {
            let plugin = isola::current_plugin().unwrap_or_default();
            tracing::info!(target: "isola::plugin", plugin, "host.log: {msg}");
            Ok(())
        })
        .value("config", json!({ "app": "isola", "version": env!("CARGO_PKG_VERSION") }))
        .async_func("fetchUser", |(id,): (u64,)| async move {
            // Stands in for a database or HTTP lookup.
            tokio::time::sleep(Duration::from_millis(5)).await;
            let (name, city) = match id {
                1 => ("Ada", "London"),
                2 => ("Grace", "Arlington"),
                3 => ("Linus", "Helsinki"),
                _ => anyhow::bail!("no user with id {id}"),
            };
            Ok(json!({ "id": id, "name": name, "city": city }))
        })
        // Looking users up is not for every plugin: it needs the `users` permission.
        .requires("fetchUser", "users")
        // What `isola types` and `isola new` write into isola.d.ts for plugin authors.
        .describe(
            "log",
            "(message: string) => void",
            "Writes a line to the host's log (shown by `isola -v` and `isola dev`).",
        )
        .describe("config", "{ readonly app: string; readonly version: string }", "The application's name and version.")
        .describe(
            "fetchUser",
            "(id: number) => Promise<{ id: number; name: string; city: string }>",
            "Looks a user up by id (1, 2 and 3 exist); rejects for an unknown id.",
        )
}
