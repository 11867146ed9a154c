//! Progress while hosts work, drawn from the jobs' events: a spinner line per host with
//! indicatif on a terminal; plain lines when stderr is not one or `CI` is set; nothing for JSON.

/// Progress while hosts work: a spinner line per host with indicatif on a terminal; plain
/// lines when stderr is not one or `CI` is set; nothing for JSON.
pub struct CliProgress {
    bars: Option<(
        indicatif::MultiProgress,
        std::sync::Mutex<std::collections::HashMap<String, indicatif::ProgressBar>>,
    )>,
    plain: bool,
    /// `-v`: every step of every host, with the seconds since the run started (on stderr,
    /// whatever the format; it carries host names and step names only, never file contents).
    steps: Option<std::time::Instant>,
}

impl CliProgress {
    /// A renderer for text output (`text`: nothing is drawn for JSON); `timed` prints each step
    /// with the time since the start (`-v`).
    pub fn new(text: bool, timed: bool) -> Self {
        use std::io::IsTerminal;
        let tty = std::io::stderr().is_terminal() && std::env::var_os("CI").is_none();
        CliProgress {
            bars: (tty && text).then(|| (indicatif::MultiProgress::new(), Default::default())),
            plain: !tty && text,
            steps: timed.then(std::time::Instant::now),
        }
    }

    fn step(&self, line: &str) {
        if let Some(t) = self.steps {
            let line = format!("[{:7.3}s] {line}", t.elapsed().as_secs_f64());
            match &self.bars {
                Some((mp, _)) => {
                    let _ = mp.println(line);
                }
                None => eprintln!("{line}"),
            }
        }
    }
}

impl crate::fleet::Progress for CliProgress {
    fn phase(&self, host: &str, phase: &str) {
        self.step(&format!("{host}: {phase}"));
        if let Some((mp, bars)) = &self.bars {
            let mut bars = bars.lock().unwrap();
            let bar = bars.entry(host.to_string()).or_insert_with(|| {
                let b = mp.add(indicatif::ProgressBar::new_spinner());
                b.enable_steady_tick(std::time::Duration::from_millis(120));
                b
            });
            bar.set_message(format!("{host}: {phase}"));
        }
    }
    fn done(&self, host: &str, outcome: &str) {
        self.step(&format!("{host}: done, {outcome}"));
        if let Some((_, bars)) = &self.bars {
            if let Some(b) = bars.lock().unwrap().remove(host) {
                b.finish_and_clear();
            }
        } else if self.plain {
            eprintln!("{host}: {outcome}");
        }
    }
    fn note(&self, line: &str) {
        if let Some((mp, _)) = &self.bars {
            let _ = mp.println(line);
        } else if self.plain {
            eprintln!("{line}");
        } else {
            self.step(line);
        }
    }
}
