//! CPU time spent per event, by this process and by a local broker, read
//! from `/proc` (Linux; `None` elsewhere, or when the broker runs on
//! another machine). On a machine whose cores the client and the broker
//! share, throughput is their CPU per event: this says whose it is.

/// `/proc` counts CPU time in ticks of 1/100 s (`USER_HZ`).
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU ticks (user + system) used so far by process `pid` ("self" for this one).
fn ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

/// CPU ticks used so far by every process named `comm`.
fn ticks_of(comm: &str) -> Option<u64> {
    let mut total = None;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let pid = entry.file_name();
        let Some(pid) = pid
            .to_str()
            .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let named = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| c.trim_end() == comm);
        if named && let Some(t) = ticks(pid) {
            *total.get_or_insert(0) += t;
        }
    }
    total
}

/// CPU used by this process and by the broker's processes (named `broker`)
/// since [`Mark::now`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mark {
    own: Option<u64>,
    broker: Option<u64>,
    broker_comm: &'static str,
}

impl Mark {
    pub(crate) fn now(broker_comm: &'static str) -> Self {
        Self {
            own: ticks("self"),
            broker: ticks_of(broker_comm),
            broker_comm,
        }
    }

    /// Microseconds of CPU per event since the mark: (this process, the broker).
    pub(crate) fn per_event(&self, events: usize) -> (Option<f64>, Option<f64>) {
        let us = |before: Option<u64>, after: Option<u64>| {
            let spent = after?.checked_sub(before?)?;
            Some(spent as f64 / TICKS_PER_SECOND * 1e6 / events.max(1) as f64)
        };
        (
            us(self.own, ticks("self")),
            us(self.broker, ticks_of(self.broker_comm)),
        )
    }
}
