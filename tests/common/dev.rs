//! `isola dev` as a child process driven line by line: what it prints, read as it comes.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

/// How long a line may take to appear.
const PATIENCE: Duration = Duration::from_secs(30);

/// A running `isola dev DIR ARGS...`; ended (stdin closed, then killed) when dropped.
pub struct DevProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    pub lines: Receiver<String>,
}

impl DevProcess {
    pub fn start(dir: &std::path::Path, args: &[&str]) -> DevProcess {
        let mut child = super::isola_command()
            .arg("dev")
            .arg(dir)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (tx, lines) = channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let stdin = child.stdin.take();
        DevProcess { child, stdin, lines }
    }

    /// Waits for a line `matches` accepts and returns it.
    fn wait(&self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        let mut seen = String::new();
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                if matches(&line) {
                    return line;
                }
                seen.push_str(&line);
                seen.push('\n');
            }
        }
        panic!("{what} never appeared in isola dev's output:\n{seen}");
    }

    /// Waits for a line containing `what`.
    pub fn wait_for(&self, what: &str) -> String {
        self.wait(&format!("`{what}`"), |l| l.contains(what))
    }

    /// Waits for a line that is exactly `line` (a hook's printed result).
    pub fn wait_line(&self, line: &str) {
        self.wait(&format!("the line `{line}`"), |l| l.trim() == line);
    }

    /// Types one command.
    pub fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Closes stdin (dev exits at end of input) and returns whether it exited cleanly.
    pub fn finish(mut self) -> bool {
        drop(self.stdin.take());
        self.child.wait().unwrap().success()
    }
}

impl Drop for DevProcess {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
    }
}
