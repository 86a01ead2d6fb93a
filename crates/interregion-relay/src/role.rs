//! The relay's role in its region, as a pure state machine.
//!
//! A region runs two relays (or more): the one holding the active-relay lease
//! (`meridian:relay:active` in the region's Redis) binds the region's QUIC port and runs the
//! links and replication; the others stand by, polling the lease every `lease.renew_ms`, with
//! `/readyz` 503 so the balancers send QUIC traffic to the active one only.
//!
//! ```text
//!            lease ours, port bound                 lease someone else's
//!  Standby ─────────────────────────▶ Active ───────────────────────────▶ LostLease (exit 1)
//!     ▲  │ lease ours, port taken
//!     └──┘ (keep the lease, retry every renewal)
//! ```
//!
//! - A standby that takes the lease may find the port still bound by its predecessor: frozen
//!   (SIGSTOP, a stalled VM) with its lease expired. It keeps the lease and retries the bind
//!   every renewal rather than exit and leave the region without a relay; the predecessor
//!   steps down when it wakes, because its next renewal finds the lease taken.
//! - An active relay that finds the lease held by another relay (its own expired, e.g. while
//!   Redis was unreachable) stops at once: two active relays must never run. It does not
//!   release the lease (it is not its own any more).
//! - An unreachable Redis changes nothing: a standby stays standby, an active relay stays
//!   active until the lease is seen taken.
//! - On shutdown an active relay stops its links first, then releases the lease so a standby
//!   takes over at once instead of after the lease's time-to-live.
//!
//! [`Lifecycle::step`] takes one [`Input`] and returns the [`Action`]s to run, in order. It has
//! no clock, Redis or sockets: the driver in [`crate::run`] performs the actions and feeds back
//! what happened (the lease check every renewal, the bind attempt, the shutdown signal).

/// What the relay is, for `/readyz` and the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not serving the region's QUIC port: another relay holds the lease, Redis is
    /// unreachable, or the lease is ours but the port is still taken.
    Standby,
    /// Holding the lease and serving the links.
    Active,
    /// Was active and found the lease held by another relay: stopped for good.
    LostLease,
}

/// The answer to one attempt to take (standby) or renew (active) the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseCheck {
    /// The lease is ours (taken or renewed).
    Ours,
    /// Another relay holds it.
    Theirs,
    /// Redis did not answer.
    Unreachable,
}

/// What happened, fed to [`Lifecycle::step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// A lease check answered (at start, then every renewal).
    Lease(LeaseCheck),
    /// The region's QUIC port was bound (after [`Action::BindPort`]).
    PortBound,
    /// The region's QUIC port is still in use by another process (after [`Action::BindPort`]).
    PortInUse,
    /// Shutdown was asked for (SIGTERM).
    Shutdown,
}

/// What the driver does, in the order returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Another relay is active: say once that this one stands by (the binary prints
    /// `standby on http <addr>`).
    AnnounceStandby,
    /// Log: the lease is ours now.
    LeaseTaken,
    /// Try to bind the region's QUIC port; answer with [`Input::PortBound`] or
    /// [`Input::PortInUse`].
    BindPort,
    /// Log (once per wait): the lease is ours but the port is taken; retrying every renewal.
    PortBusy,
    /// Log: the lease went to another relay while this one waited for the port.
    LeaseLostWhileWaiting,
    /// Start the links and replication on the bound port. `waited` when the port was taken
    /// at first (for the log).
    Activate {
        /// The port was taken at the first attempts.
        waited: bool,
    },
    /// Log: the lease could not be checked (Redis unreachable); nothing changes.
    LeaseUnreachable,
    /// Log: another relay holds the lease while this one is active.
    LeaseLost,
    /// Stop the replication and the links, and wait for them (within the grace period).
    Deactivate,
    /// Hand the lease over at once.
    ReleaseLease,
    /// End [`crate::run`]: with an error when the role is [`Role::LostLease`].
    Exit,
}

/// The role machine of one relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifecycle {
    role: Role,
    /// Standby with the lease ours, waiting for the QUIC port.
    waiting_for_port: bool,
    /// `AnnounceStandby` was returned already.
    announced: bool,
    /// `Exit` was returned: every later input is ignored.
    exited: bool,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifecycle {
    /// A relay starting up: standby until the lease is ours.
    pub fn new() -> Self {
        Self {
            role: Role::Standby,
            waiting_for_port: false,
            announced: false,
            exited: false,
        }
    }

    /// The current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether this relay holds the lease (active, or standby waiting for the port).
    pub fn holds_lease(&self) -> bool {
        self.role == Role::Active || (self.role == Role::Standby && self.waiting_for_port)
    }

    /// Whether [`Action::Exit`] was returned.
    pub fn exited(&self) -> bool {
        self.exited
    }

    /// One transition.
    pub fn step(&mut self, input: Input) -> Vec<Action> {
        use Action as A;
        if self.exited {
            return Vec::new();
        }
        match (self.role, input) {
            (Role::Standby, Input::Lease(LeaseCheck::Ours)) => {
                if self.waiting_for_port {
                    vec![A::BindPort]
                } else {
                    vec![A::LeaseTaken, A::BindPort]
                }
            }
            (Role::Standby, Input::Lease(LeaseCheck::Theirs)) => {
                let mut out = Vec::new();
                if self.waiting_for_port {
                    self.waiting_for_port = false;
                    out.push(A::LeaseLostWhileWaiting);
                }
                if !self.announced {
                    self.announced = true;
                    out.push(A::AnnounceStandby);
                }
                out
            }
            (Role::Standby, Input::PortBound) => {
                let waited = std::mem::take(&mut self.waiting_for_port);
                self.role = Role::Active;
                vec![A::Activate { waited }]
            }
            (Role::Standby, Input::PortInUse) => {
                if self.waiting_for_port {
                    Vec::new()
                } else {
                    self.waiting_for_port = true;
                    vec![A::PortBusy]
                }
            }
            (Role::Standby | Role::Active, Input::Lease(LeaseCheck::Unreachable)) => {
                vec![A::LeaseUnreachable]
            }
            (Role::Standby, Input::Shutdown) => {
                self.exited = true;
                if std::mem::take(&mut self.waiting_for_port) {
                    vec![A::ReleaseLease, A::Exit]
                } else {
                    vec![A::Exit]
                }
            }
            (Role::Active, Input::Lease(LeaseCheck::Ours)) => Vec::new(),
            (Role::Active, Input::Lease(LeaseCheck::Theirs)) => {
                self.role = Role::LostLease;
                self.exited = true;
                vec![A::LeaseLost, A::Deactivate, A::Exit]
            }
            (Role::Active, Input::Shutdown) => {
                self.exited = true;
                vec![A::Deactivate, A::ReleaseLease, A::Exit]
            }
            // A bind answer while active cannot happen (one bind per activation); nothing
            // happens after the lease is lost.
            (Role::Active, Input::PortBound | Input::PortInUse) | (Role::LostLease, _) => {
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action as A;
    use Input as I;
    use LeaseCheck as L;

    fn run(inputs: &[Input]) -> (Lifecycle, Vec<Vec<Action>>) {
        let mut m = Lifecycle::new();
        let out = inputs.iter().map(|i| m.step(*i)).collect();
        (m, out)
    }

    #[test]
    fn a_free_lease_and_port_make_the_relay_active() {
        let (m, out) = run(&[I::Lease(L::Ours), I::PortBound, I::Lease(L::Ours)]);
        assert_eq!(
            out,
            [
                vec![A::LeaseTaken, A::BindPort],
                vec![A::Activate { waited: false }],
                vec![],
            ]
        );
        assert_eq!(m.role(), Role::Active);
        assert!(m.holds_lease());
    }

    #[test]
    fn a_standby_announces_itself_once_and_stays_standby() {
        let (m, out) = run(&[
            I::Lease(L::Theirs),
            I::Lease(L::Theirs),
            I::Lease(L::Unreachable),
            I::Lease(L::Theirs),
        ]);
        assert_eq!(
            out,
            [
                vec![A::AnnounceStandby],
                vec![],
                vec![A::LeaseUnreachable],
                vec![],
            ]
        );
        assert_eq!(m.role(), Role::Standby);
        assert!(!m.holds_lease());
    }

    #[test]
    fn an_unreachable_redis_at_start_announces_nothing() {
        // The binary prints `standby on http` only once another relay is seen active.
        let (m, out) = run(&[I::Lease(L::Unreachable), I::Lease(L::Unreachable)]);
        assert_eq!(out, [vec![A::LeaseUnreachable], vec![A::LeaseUnreachable]]);
        assert_eq!(m.role(), Role::Standby);
    }

    #[test]
    fn a_taken_port_keeps_the_lease_and_retries_every_renewal() {
        let (m, out) = run(&[
            I::Lease(L::Theirs),
            I::Lease(L::Ours),
            I::PortInUse,
            I::Lease(L::Ours),
            I::PortInUse,
            I::Lease(L::Ours),
            I::PortBound,
        ]);
        assert_eq!(
            out,
            [
                vec![A::AnnounceStandby],
                vec![A::LeaseTaken, A::BindPort],
                vec![A::PortBusy],
                vec![A::BindPort],
                vec![],
                vec![A::BindPort],
                vec![A::Activate { waited: true }],
            ]
        );
        assert_eq!(m.role(), Role::Active);
    }

    #[test]
    fn waiting_for_the_port_while_the_lease_is_lost_goes_back_to_standby() {
        let (m, out) = run(&[
            I::Lease(L::Ours),
            I::PortInUse,
            I::Lease(L::Theirs),
            I::Lease(L::Ours),
        ]);
        assert_eq!(
            out,
            [
                vec![A::LeaseTaken, A::BindPort],
                vec![A::PortBusy],
                vec![A::LeaseLostWhileWaiting, A::AnnounceStandby],
                vec![A::LeaseTaken, A::BindPort],
            ]
        );
        assert_eq!(m.role(), Role::Standby);
    }

    #[test]
    fn an_active_relay_that_finds_the_lease_taken_steps_down_without_releasing() {
        // A frozen (SIGSTOP) active relay wakes up: its renewal finds the lease taken.
        let (m, out) = run(&[
            I::Lease(L::Ours),
            I::PortBound,
            I::Lease(L::Unreachable),
            I::Lease(L::Theirs),
            I::Lease(L::Ours),
            I::Shutdown,
        ]);
        assert_eq!(out[2], [A::LeaseUnreachable]);
        assert_eq!(out[3], [A::LeaseLost, A::Deactivate, A::Exit]);
        assert!(out[4].is_empty() && out[5].is_empty(), "{out:?}");
        assert_eq!(m.role(), Role::LostLease);
        assert!(m.exited() && !m.holds_lease());
    }

    #[test]
    fn shutdown_of_an_active_relay_stops_the_links_then_releases_the_lease() {
        let (m, out) = run(&[I::Lease(L::Ours), I::PortBound, I::Shutdown, I::Shutdown]);
        assert_eq!(out[2], [A::Deactivate, A::ReleaseLease, A::Exit]);
        assert!(out[3].is_empty());
        assert_eq!(m.role(), Role::Active);
        assert!(m.exited());
    }

    #[test]
    fn shutdown_of_a_standby_releases_only_a_lease_it_holds() {
        let (_, out) = run(&[I::Lease(L::Theirs), I::Shutdown]);
        assert_eq!(out[1], [A::Exit]);
        let (_, out) = run(&[I::Lease(L::Ours), I::PortInUse, I::Shutdown]);
        assert_eq!(out[2], [A::ReleaseLease, A::Exit]);
    }

    #[test]
    fn every_input_in_every_state_is_answered_without_panic() {
        // Exhaustive over short sequences: the machine never activates without a bound port
        // and never exits twice.
        let inputs = [
            I::Lease(L::Ours),
            I::Lease(L::Theirs),
            I::Lease(L::Unreachable),
            I::PortBound,
            I::PortInUse,
            I::Shutdown,
        ];
        let mut seqs: Vec<Vec<Input>> = vec![vec![]];
        for _ in 0..4 {
            seqs = seqs
                .iter()
                .flat_map(|s| {
                    inputs.iter().map(move |i| {
                        let mut s = s.clone();
                        s.push(*i);
                        s
                    })
                })
                .collect();
        }
        for seq in seqs {
            let (m, out) = run(&seq);
            let flat: Vec<Action> = out.into_iter().flatten().collect();
            let exits = flat.iter().filter(|a| **a == A::Exit).count();
            assert!(exits <= 1, "{seq:?}: {flat:?}");
            assert_eq!(exits == 1, m.exited(), "{seq:?}");
            let activations = flat
                .iter()
                .filter(|a| matches!(a, A::Activate { .. }))
                .count();
            assert!(activations <= 1, "{seq:?}: {flat:?}");
            if activations == 1 {
                let bound = seq.iter().position(|i| *i == I::PortBound);
                assert!(bound.is_some(), "{seq:?}");
            }
            if m.role() == Role::LostLease {
                assert!(!flat.contains(&A::ReleaseLease), "{seq:?}: {flat:?}");
            }
        }
    }
}
