//! Why the VM ended, in words. QEMU runs with `-no-reboot` and the guest
//! with `panic=-1`, so a guest reboot and a guest kernel panic both end
//! QEMU with exit code 0, exactly like a clean power-off. Only QEMU's
//! `SHUTDOWN` event (its `reason`) and `GUEST_PANICKED` tell them apart; the
//! launcher watches them on its own QMP connection and feeds them here,
//! with the guest console's last lines. Pure.

use std::collections::VecDeque;

use serde_json::Value;

/// Console lines kept for the message.
pub const CONSOLE_LINES: usize = 12;
/// Longer console lines are cut (Kubernetes keeps 4096 bytes of a
/// termination message; the message must fit with every line at this).
const LINE_MAX: usize = 200;
/// A line without a newline is not buffered beyond this.
const PARTIAL_MAX: usize = 4096;
/// What the kernel prints first when it panics
/// (`Kernel panic - not syncing: ...`).
const PANIC_MARK: &str = "Kernel panic";

/// What QEMU's QMP events said, in the order they came.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Events {
    /// The first `SHUTDOWN` event: the one that ended the VM (a later one,
    /// e.g. our SIGTERM arriving during a guest reset, changes nothing).
    pub shutdown: Option<Shutdown>,
    /// `GUEST_PANICKED` was seen (needs a panic device such as pvpanic).
    pub panicked: bool,
}

/// A `SHUTDOWN` event's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shutdown {
    /// QEMU's `guest`: the guest caused it.
    pub guest: bool,
    /// QEMU's `ShutdownCause`, e.g. `guest-reset`, `host-signal`.
    pub reason: String,
}

impl Events {
    /// Records one event; events other than the two above are ignored.
    pub fn observe(&mut self, name: &str, data: &Value) {
        match name {
            "SHUTDOWN" if self.shutdown.is_none() => {
                self.shutdown = Some(Shutdown {
                    guest: data.get("guest").and_then(Value::as_bool).unwrap_or(false),
                    reason: data
                        .get("reason")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown")
                        .to_string(),
                });
            }
            "GUEST_PANICKED" => self.panicked = true,
            _ => {}
        }
    }
}

/// How the VM ended, as far as the launcher can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// `guest-shutdown`: the guest powered itself off.
    GuestShutdown,
    /// `guest-reset`: a reboot, or a kernel panic with `panic=-1`; with
    /// `-no-reboot` QEMU ends instead of resetting.
    GuestReset,
    /// `guest-panic` or `GUEST_PANICKED`: the guest told QEMU it panicked.
    GuestPanic,
    /// `host-error`: QEMU stopped the VM because of an error on its side.
    HostError,
    /// Another host-side cause (`host-qmp-quit`, `host-signal`,
    /// `host-qmp-system-reset`, `host-ui`, ...).
    Host(String),
    /// No `SHUTDOWN` event: the connection was never made or was lost, or
    /// QEMU died without one.
    Unknown,
}

impl Ending {
    pub fn of(events: &Events) -> Ending {
        if events.panicked {
            return Ending::GuestPanic;
        }
        let Some(s) = &events.shutdown else {
            return Ending::Unknown;
        };
        match s.reason.as_str() {
            "guest-shutdown" => Ending::GuestShutdown,
            "guest-reset" => Ending::GuestReset,
            "guest-panic" => Ending::GuestPanic,
            "host-error" => Ending::HostError,
            other => Ending::Host(other.to_string()),
        }
    }

    /// The launcher's exit code when QEMU itself exited 0: 0, or non-zero
    /// for an end the user must not take for a clean shutdown (4 for the
    /// guest resetting or panicking, 1 for a host-side error).
    pub fn exit_code(&self) -> i32 {
        match self {
            Ending::GuestReset | Ending::GuestPanic => 4,
            Ending::HostError => 1,
            Ending::GuestShutdown | Ending::Host(_) | Ending::Unknown => 0,
        }
    }

    /// In words, for the log and the termination message.
    pub fn describe(&self) -> String {
        match self {
            Ending::GuestShutdown => "the guest shut itself down (guest-shutdown)".into(),
            Ending::GuestReset => "the guest reset itself (a reboot or a kernel panic); QEMU runs with -no-reboot, so the VM ended".into(),
            Ending::GuestPanic => "the guest kernel panicked (QEMU saw guest-panic), so the VM ended".into(),
            Ending::HostError => "QEMU stopped the VM after an error on the host side (host-error)".into(),
            Ending::Host(r) => match r.as_str() {
                "host-qmp-quit" => "QEMU was told to quit over QMP (host-qmp-quit; the agent does so to a migration's source)".into(),
                "host-signal" => "QEMU was stopped by a signal (host-signal; the launcher passes SIGTERM on)".into(),
                "host-qmp-system-reset" => "the VM was reset over QMP (host-qmp-system-reset); QEMU runs with -no-reboot, so the VM ended".into(),
                other => format!("QEMU ended the VM ({other})"),
            },
            Ending::Unknown => "why is unknown (no SHUTDOWN event on the launcher's QMP connection)".into(),
        }
    }
}

/// The guest console's last lines and its first kernel panic line, fed
/// with the console's bytes as they come.
#[derive(Debug, Default)]
pub struct ConsoleTail {
    lines: VecDeque<String>,
    partial: Vec<u8>,
    panic_line: Option<String>,
}

impl ConsoleTail {
    pub fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                let line = std::mem::take(&mut self.partial);
                self.line(&line);
            } else if self.partial.len() < PARTIAL_MAX {
                self.partial.push(b);
            }
        }
    }

    /// Takes a last line that has no newline (the console stopped mid-line).
    pub fn finish(&mut self) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.line(&line);
        }
    }

    fn line(&mut self, raw: &[u8]) {
        let text = String::from_utf8_lossy(raw);
        let text = text.trim_end_matches('\r');
        if text.trim().is_empty() {
            return;
        }
        let text = cut(text);
        if self.panic_line.is_none() && text.contains(PANIC_MARK) {
            self.panic_line = Some(text.clone());
        }
        if self.lines.len() == CONSOLE_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(text);
    }

    pub fn last_lines(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().map(String::as_str)
    }

    /// The first console line with `Kernel panic` (the panic's cause).
    pub fn panic_line(&self) -> Option<&str> {
        self.panic_line.as_deref()
    }
}

fn cut(line: &str) -> String {
    if line.len() <= LINE_MAX {
        return line.to_string();
    }
    let mut end = LINE_MAX;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &line[..end])
}

/// The termination message of a VM that ended abnormally: what happened,
/// the kernel panic line if the console has one, the console's last lines.
pub fn failure_message(ending: &Ending, console: &ConsoleTail) -> String {
    let mut m = ending.describe();
    if let Some(p) = console.panic_line() {
        m.push_str("\nthe console shows a kernel panic: ");
        m.push_str(p);
    }
    let mut lines = console.last_lines().peekable();
    if lines.peek().is_none() {
        m.push_str("\nthe console is empty");
    } else {
        m.push_str("\nthe console's last lines:");
        for l in lines {
            m.push('\n');
            m.push_str(l);
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn shutdown(guest: bool, reason: &str) -> Events {
        let mut e = Events::default();
        e.observe("SHUTDOWN", &json!({"guest": guest, "reason": reason}));
        e
    }

    #[test]
    fn reasons_map_to_endings_and_exit_codes() {
        let table = [
            ("guest-shutdown", true, Ending::GuestShutdown, 0),
            ("guest-reset", true, Ending::GuestReset, 4),
            ("guest-panic", true, Ending::GuestPanic, 4),
            ("host-error", false, Ending::HostError, 1),
            (
                "host-qmp-quit",
                false,
                Ending::Host("host-qmp-quit".into()),
                0,
            ),
            ("host-signal", false, Ending::Host("host-signal".into()), 0),
            (
                "host-qmp-system-reset",
                false,
                Ending::Host("host-qmp-system-reset".into()),
                0,
            ),
            ("host-ui", false, Ending::Host("host-ui".into()), 0),
        ];
        for (reason, guest, ending, code) in table {
            let got = Ending::of(&shutdown(guest, reason));
            assert_eq!((reason, &got, got.exit_code()), (reason, &ending, code));
        }
        assert_eq!(Ending::of(&Events::default()), Ending::Unknown);
        assert_eq!(Ending::Unknown.exit_code(), 0);
    }

    #[test]
    fn the_first_shutdown_wins_and_guest_panicked_overrides() {
        // A guest reset, then the launcher's SIGTERM during the exit.
        let mut e = shutdown(true, "guest-reset");
        e.observe(
            "SHUTDOWN",
            &json!({"guest": false, "reason": "host-signal"}),
        );
        assert_eq!(Ending::of(&e), Ending::GuestReset);
        // A panic device's event, then the shutdown of the panic action.
        let mut e = Events::default();
        e.observe("GUEST_PANICKED", &json!({"action": "pause"}));
        e.observe("STOP", &Value::Null);
        e.observe(
            "SHUTDOWN",
            &json!({"guest": false, "reason": "host-signal"}),
        );
        assert_eq!(Ending::of(&e), Ending::GuestPanic);
        // No data at all (an old or odd QEMU) is not a guest failure.
        let mut e = Events::default();
        e.observe("SHUTDOWN", &Value::Null);
        assert_eq!(Ending::of(&e), Ending::Host("unknown".into()));
    }

    #[test]
    fn console_tail_keeps_last_lines_and_the_first_panic_line() {
        let mut c = ConsoleTail::default();
        for i in 0..30 {
            c.push(format!("tick {i}\r\n").as_bytes());
        }
        // Split across reads, like serial.log growing under the copier.
        c.push(b"[    8.82] Kernel pa");
        c.push(b"nic - not syncing: NMI: Not continuing\r\n\r\n[    8.83] Call Trace:\n");
        c.push(b"---[ end Kernel panic - not syncing: NMI ]---");
        c.finish();
        assert_eq!(
            c.panic_line(),
            Some("[    8.82] Kernel panic - not syncing: NMI: Not continuing")
        );
        let lines: Vec<&str> = c.last_lines().collect();
        assert_eq!(lines.len(), CONSOLE_LINES);
        assert_eq!(lines[0], "tick 21");
        assert_eq!(
            lines[CONSOLE_LINES - 1],
            "---[ end Kernel panic - not syncing: NMI ]---"
        );
    }

    #[test]
    fn failure_message_in_words_and_within_the_termination_limit() {
        let mut c = ConsoleTail::default();
        c.push(b"tick 7\n[    8.82] Kernel panic - not syncing: NMI: Not continuing\n");
        let m = failure_message(&Ending::GuestReset, &c);
        assert_eq!(
            m,
            "the guest reset itself (a reboot or a kernel panic); QEMU runs with -no-reboot, so the VM ended\n\
             the console shows a kernel panic: [    8.82] Kernel panic - not syncing: NMI: Not continuing\n\
             the console's last lines:\n\
             tick 7\n\
             [    8.82] Kernel panic - not syncing: NMI: Not continuing"
        );
        let m = failure_message(&Ending::GuestReset, &ConsoleTail::default());
        assert!(m.ends_with("\nthe console is empty"), "{m}");

        // Worst case: every kept line at its limit, multi-byte characters cut.
        let mut c = ConsoleTail::default();
        c.push(format!("Kernel panic {}\n", "é".repeat(3000)).as_bytes());
        for _ in 0..CONSOLE_LINES {
            c.push(format!("{}\n", "x".repeat(10_000)).as_bytes());
        }
        let m = failure_message(&Ending::GuestPanic, &c);
        assert!(m.len() < 4096, "{} bytes", m.len());
        assert!(c.panic_line().unwrap().ends_with("..."));
    }
}
