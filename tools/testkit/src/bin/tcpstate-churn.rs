//! `tcpstate-churn`: makes the host busy, in the network namespace it runs in.
//!
//! ```text
//! tcpstate-churn [--rate N] [--threads T] [--hogs H] [--seconds S]
//! ```
//! `--threads` threads (default 2; 0: hogs only) open and close loopback connections,
//! each through CLOSE_WAIT, at `--rate` connections per second in all (default: as fast
//! as they can); `--hogs` more threads spin on the CPU. After `--seconds` (default 0: until
//! killed) it prints one line, `made=M seconds=W rate=R cpu_seconds=C`: the connections
//! made, the wall time, the rate reached and the churning threads' CPU time. It dies with
//! its parent (PR_SET_PDEATHSIG), so a test or a CI step never leaves it behind.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tcpstate_testkit::churn::{self, Churn, Plan};

struct Options {
    rate: Option<f64>,
    threads: usize,
    hogs: usize,
    seconds: u64,
}

fn parse() -> Result<Options, String> {
    let mut o = Options {
        rate: None,
        threads: 2,
        hogs: 0,
        seconds: 0,
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
                "tcpstate-churn: {e}\nusage: tcpstate-churn [--rate N] [--threads T] [--hogs H] [--seconds S]"
            );
            return ExitCode::from(2);
        }
    };
    // SAFETY: prctl on this process only.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    let plan = Plan {
        duration: (options.seconds > 0).then(|| Duration::from_secs(options.seconds)),
        rate: options.rate.map(|r| r / options.threads.max(1) as f64),
    };
    let stop = AtomicBool::new(false);
    let result = std::thread::scope(|scope| {
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
    });
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
