//! Wall time and peak RSS of a child process, shared by the benches that run pibake itself.

use std::process::Command;
use std::time::{Duration, Instant};

pub type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Wall time and peak resident set of one child process.
pub struct Run {
    pub time: Duration,
    pub max_rss_mib: f64,
}

/// Run `cmd` to completion, measuring its wall time and (on Unix) its peak RSS.
pub fn measure(cmd: &mut Command) -> Res<Run> {
    let start = Instant::now();
    let child = cmd.spawn()?;
    #[cfg(unix)]
    {
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: the pid is our own unreaped child; both pointers are to live locals.
        let r = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
        let time = start.elapsed();
        if r < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            return Err(format!("{cmd:?} failed (status {status})").into());
        }
        // ru_maxrss is in KiB on Linux.
        Ok(Run {
            time,
            max_rss_mib: usage.ru_maxrss as f64 / 1024.0,
        })
    }
    #[cfg(not(unix))]
    {
        let mut child = child;
        let st = child.wait()?;
        if !st.success() {
            return Err(format!("{cmd:?} failed").into());
        }
        Ok(Run {
            time: start.elapsed(),
            max_rss_mib: f64::NAN,
        })
    }
}
