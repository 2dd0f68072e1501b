//! Which nodes of a job share a machine, and from that how each node's
//! ranks wait and which core each is bound to: hosts that are one machine
//! under several names (or "hosts" on loopback addresses) share its cores.

use serde::{Deserialize, Serialize};

use spmd::wire::WaitMode;

use crate::spawn::{Place, usable_cores};

/// The longest machine id an agent may report.
const MAX_ID: usize = 64;

/// A machine as spmdrun, or the agent on a host, sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// The running kernel's boot id: the same under every name the machine
    /// has, and different on every other machine.
    pub id: String,
    /// How many cores the ranks started here may use.
    pub cores: usize,
}

impl Machine {
    /// The machine this process runs on.
    pub fn this() -> Machine {
        let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .ok()
            .filter(|s| !s.is_empty() && s.len() <= MAX_ID)
            // Unknown: a machine of its own, shared with no other node.
            .unwrap_or_else(|| format!("pid {} of {}", std::process::id(), hostname()));
        Machine {
            id,
            cores: usable_cores().len().max(1),
        }
    }

    /// Checks a machine an agent reported.
    pub fn check(&self) -> Result<(), String> {
        if self.id.is_empty() || self.id.len() > MAX_ID {
            return Err(format!(
                "the agent reported a machine id of {} bytes (1 to {MAX_ID})",
                self.id.len()
            ));
        }
        if self.cores == 0 || self.cores > libc::CPU_SETSIZE as usize {
            return Err(format!("the agent reported {} usable cores", self.cores));
        }
        Ok(())
    }
}

fn hostname() -> String {
    nix::unistd::gethostname().map_or_else(|_| "?".into(), |h| h.to_string_lossy().into_owned())
}

/// How the ranks of a job wait and where they run, from the machines their
/// nodes are on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Each node's wait mode.
    pub wait: Vec<WaitMode>,
    /// Each rank's core, as an index into its machine's usable cores.
    pub core: Vec<Option<usize>>,
    /// Each node's machine, as an index into `ranks_on` and `cores_of`.
    pub machine_of: Vec<usize>,
    /// How many ranks of the job each machine runs.
    pub ranks_on: Vec<usize>,
    /// How many cores each machine has.
    pub cores_of: Vec<usize>,
}

impl Plan {
    /// Plans the ranks at `places`, each node on `machines[node]`: a
    /// machine whose ranks fit its cores gets a core per rank (if `bind`)
    /// and ranks that spin; one with more ranks than cores, ranks that
    /// yield and are left to the scheduler. `chosen` overrides the wait.
    pub fn new(places: &[Place], machines: &[Machine], chosen: Option<WaitMode>, bind: bool) -> Plan {
        let mut ids: Vec<&str> = Vec::new();
        let machine_of: Vec<usize> = machines
            .iter()
            .map(|m| match ids.iter().position(|id| *id == m.id) {
                Some(i) => i,
                None => {
                    ids.push(&m.id);
                    ids.len() - 1
                }
            })
            .collect();
        let mut cores_of = vec![usize::MAX; ids.len()];
        for (node, m) in machines.iter().enumerate() {
            // The names of one machine may see different affinities: the
            // smallest is the one every rank there can count on.
            cores_of[machine_of[node]] = cores_of[machine_of[node]].min(m.cores);
        }
        let mut ranks_on = vec![0usize; ids.len()];
        let mut index = Vec::with_capacity(places.len());
        for p in places {
            let m = machine_of[p.node];
            index.push(ranks_on[m]);
            ranks_on[m] += 1;
        }
        let fits = |m: usize| ranks_on[m] <= cores_of[m];
        let wait = machine_of
            .iter()
            .map(|&m| match chosen {
                Some(w) => w,
                None if fits(m) => WaitMode::Spin,
                None => WaitMode::Yield,
            })
            .collect();
        let core = places
            .iter()
            .zip(index)
            .map(|(p, i)| (bind && fits(machine_of[p.node])).then_some(i))
            .collect();
        Plan {
            wait,
            core,
            machine_of,
            ranks_on,
            cores_of,
        }
    }

    /// One line on node `node`'s machine for `--verbose`.
    pub fn describe(&self, node: usize) -> String {
        let m = self.machine_of[node];
        let shared = self.machine_of.iter().filter(|&&o| o == m).count();
        let with = if shared > 1 {
            format!(", shared by {shared} nodes of the job")
        } else {
            String::new()
        };
        let wait = match self.wait[node] {
            WaitMode::Spin => "spin",
            WaitMode::Yield => "yield",
            WaitMode::Sleep => "sleep",
        };
        format!(
            "{} ranks on {} cores of its machine{with}: its ranks {wait}",
            self.ranks_on[m], self.cores_of[m]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(id: &str, cores: usize) -> Machine {
        Machine { id: id.into(), cores }
    }

    #[test]
    fn nodes_on_one_machine_share_its_cores() {
        let places = Place::all(&[0, 0, 1, 1, 2, 2]);
        let one = [machine("a", 2), machine("a", 2), machine("a", 2)];
        let plan = Plan::new(&places, &one, None, true);
        assert_eq!(plan.wait, vec![WaitMode::Yield; 3]);
        assert_eq!(plan.core, vec![None; 6]);
        let three = [machine("a", 2), machine("b", 2), machine("c", 2)];
        let plan = Plan::new(&places, &three, None, true);
        assert_eq!(plan.wait, vec![WaitMode::Spin; 3]);
        assert_eq!(plan.core, [0, 1, 0, 1, 0, 1].map(Some));
        // Two nodes of one machine that fit: distinct cores across them.
        let places = Place::all(&[0, 1]);
        let plan = Plan::new(&places, &[machine("a", 2), machine("a", 2)], None, true);
        assert_eq!(plan.core, [Some(0), Some(1)]);
        assert_eq!(plan.wait, [WaitMode::Spin; 2]);
        let plan = Plan::new(
            &places,
            &[machine("a", 2), machine("a", 2)],
            Some(WaitMode::Sleep),
            false,
        );
        assert_eq!(plan.core, [None, None]);
        assert_eq!(plan.wait, [WaitMode::Sleep; 2]);
    }

    #[test]
    fn reported_machines_are_checked() {
        assert!(machine("", 2).check().is_err());
        assert!(machine(&"x".repeat(65), 2).check().is_err());
        assert!(machine("a", 0).check().is_err());
        assert!(machine("a", 1 << 20).check().is_err());
        assert!(Machine::this().check().is_ok());
    }
}
