//! A live progress line for long builds: `[kernel] compiling 734/~1612 3m12s`.
//! On a terminal it redraws in place; in a log (CI) it prints a line every
//! 30 seconds so the job shows life without flooding.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub struct Progress {
    task: &'static str,
    phase: String,
    estimate: usize,
    start: Instant,
    last: Instant,
    tty: bool,
}

impl Progress {
    pub fn new(task: &'static str, phase: &str, estimate: usize) -> Self {
        let now = Instant::now();
        Progress {
            task,
            phase: phase.to_string(),
            estimate,
            start: now,
            last: now,
            tty: std::io::stderr().is_terminal(),
        }
    }

    pub fn tick(&mut self, done: usize) {
        let every = if self.tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(30)
        };
        if self.last.elapsed() < every {
            return;
        }
        self.last = Instant::now();
        let line = self.render(done);
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[K{line}");
        } else {
            let _ = writeln!(err, "{line}");
        }
    }

    pub fn done(&mut self, done: usize) {
        let elapsed = fmt_duration(self.start.elapsed());
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[K");
        }
        if done > 0 {
            let _ = writeln!(
                err,
                "[{}] {}: {done} objects in {elapsed}",
                self.task, self.phase
            );
        }
    }

    fn render(&self, done: usize) -> String {
        let est = if self.estimate > 0 {
            format!("/~{}", self.estimate.max(done))
        } else {
            String::new()
        };
        format!(
            "[{}] {} {done}{est} objects, {}",
            self.task,
            self.phase,
            fmt_duration(self.start.elapsed())
        )
    }
}

pub fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(fmt_duration(Duration::from_secs(192)), "3m12s");
    }

    #[test]
    fn the_estimate_never_reads_below_done() {
        let p = Progress::new("kernel", "compiling", 100);
        assert!(p
            .render(150)
            .starts_with("[kernel] compiling 150/~150 objects"));
    }
}
