//! `tcpstate-churn`: makes the host busy, in the network namespace it runs in.
//!
//! ```text
//! tcpstate-churn [--rate N] [--threads T] [--hogs H] [--seconds S]
//! tcpstate-churn --burst PAIRS
//! ```
//! `--threads` threads (default 2; 0: hogs only) open and close loopback connections,
//! each through CLOSE_WAIT, at `--rate` connections per second in all (default: as fast
//! as they can); `--hogs` more threads spin on the CPU. After `--seconds` (default 0: until
//! killed) it prints one line, `made=M seconds=W rate=R cpu_seconds=C`: the connections
//! made, the wall time, the rate reached and the churning threads' CPU time. It dies with
//! its parent (PR_SET_PDEATHSIG), so a test or a CI step never leaves it behind.
//!
//! `--burst PAIRS` opens PAIRS connections (at most ~9,900: two fds each), prints
//! `ready`, waits for a line on stdin, then closes them all at once (clients first, so
//! every server end passes through CLOSE_WAIT) and prints the same line, the time and
//! rate being those of the closes. Several processes started together and released at
//! once make a burst bigger than one process's descriptors allow.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tcpstate_testkit::churn::{self, Churn, Plan};

struct Options {
    rate: Option<f64>,
    threads: usize,
    hogs: usize,
    seconds: u64,
    burst: Option<usize>,
}

fn parse() -> Result<Options, String> {
    let mut o = Options {
        rate: None,
        threads: 2,
        hogs: 0,
        seconds: 0,
        burst: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = value
            .replace('_', "")
            .parse::<u64>()
            .map_err(|_| format!("{flag}: not a whole number: {value}"))?;
        match flag.as_str() {
            "--rate" => o.rate = (number > 0).then_some(number as f64),
            "--threads" => o.threads = number as usize,
            "--hogs" => o.hogs = number as usize,
            "--seconds" => o.seconds = number,
            "--burst" => o.burst = Some(number as usize),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(o)
}

fn main() -> ExitCode {
    let options = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!(
                "tcpstate-churn: {e}\nusage: tcpstate-churn [--rate N] [--threads T] [--hogs H] [--seconds S] | --burst PAIRS"
            );
            return ExitCode::from(2);
        }
    };
    // SAFETY: prctl on this process only.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    let result = match options.burst {
        Some(pairs) => churn::burst(pairs, ready_then_wait),
        None => run(&options),
    };
    match result {
        Ok(total) => {
            println!(
                "made={} seconds={:.3} rate={:.0} cpu_seconds={:.3}",
                total.made,
                total.wall.as_secs_f64(),
                total.per_wall_second(),
                total.cpu.as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tcpstate-churn: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The burst's go signal: `ready` on stdout, then a line on stdin.
fn ready_then_wait() -> Result<(), String> {
    use std::io::{BufRead, Write};
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")
        .and_then(|()| out.flush())
        .map_err(|e| format!("stdout: {e}"))?;
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("stdin: {e}"))?;
    Ok(())
}

/// Churn and hogs per the options, until the duration passes.
fn run(options: &Options) -> Result<Churn, String> {
    let plan = Plan {
        duration: (options.seconds > 0).then(|| Duration::from_secs(options.seconds)),
        rate: options.rate.map(|r| r / options.threads.max(1) as f64),
    };
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let hogs: Vec<_> = (0..options.hogs)
            .map(|_| scope.spawn(|| churn::hog(&stop)))
            .collect();
        let churners: Vec<_> = (0..options.threads)
            .map(|_| scope.spawn(|| churn::churn(plan, &stop)))
            .collect();
        let mut total = Churn::default();
        let mut error = None;
        if churners.is_empty() {
            // Hogs only: until the duration passes (or forever).
            match plan.duration {
                Some(d) => std::thread::sleep(d),
                None => loop {
                    std::thread::park();
                },
            }
        }
        for churner in churners {
            match churner.join() {
                Ok(Ok(one)) => total.add(one),
                Ok(Err(e)) => error = Some(e),
                Err(_) => error = Some("a churning thread panicked".to_string()),
            }
        }
        stop.store(true, Ordering::Relaxed);
        for hog in hogs {
            let _ = hog.join();
        }
        error.map_or(Ok(total), Err)
    })
}
