//! [`AnswerCache`]: finished routing answers per client address, shared by DNS and HTTP.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{PoisonError, RwLock};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;

use super::{Route, RouterState};
use crate::decision::Reason;
use crate::quick_hash::QuickHash;

/// Client addresses whose answers an [`AnswerCache`] keeps before emptying itself.
const ROUTE_CACHE_CAPACITY: usize = 65_536;

/// Finished routing answers per client address (a DNS answer, a rendered HTTP body), reused
/// while [`RouterState::generation`] is unchanged, i.e. until health, load, controls, the GeoIP
/// database or the RTT table change. Answers that used measured RTTs are not kept, since those
/// estimates fade with time and no event says so. A reused answer still counts in `answers`
/// (and `all_down_answers`); `decision_seconds` times the decisions actually computed. Full, it
/// empties itself (a bound, not an eviction policy: clients ask again and again for the same
/// few networks, and a miss costs one decision).
#[derive(Debug)]
pub struct AnswerCache<T> {
    entries: RwLock<HashMap<IpAddr, Cached<T>, QuickHash>>,
}

#[derive(Debug)]
struct Cached<T> {
    generation: u64,
    answer: T,
    /// The `answers` series this answer counts in.
    counter: Counter,
    all_down: bool,
}

impl<T: Clone> Default for AnswerCache<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Clone> AnswerCache<T> {
    /// An empty cache.
    pub fn new() -> Self {
        AnswerCache {
            entries: RwLock::new(HashMap::default()),
        }
    }

    /// The answer kept for `client` at `generation`, counted as given.
    pub fn get(&self, state: &RouterState, client: IpAddr, generation: u64) -> Option<T> {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        let cached = entries
            .get(&client)
            .filter(|c| c.generation == generation)?;
        cached.counter.inc();
        if cached.all_down {
            state.metrics.all_down_answers.inc();
        }
        Some(cached.answer.clone())
    }

    /// Keeps `answer`, made from `route` for `client` after reading `generation`, unless the
    /// route used measured RTTs.
    pub fn keep(
        &self,
        state: &RouterState,
        client: IpAddr,
        generation: u64,
        route: &Route,
        answer: T,
    ) {
        let winner = route.decision.ranked.first();
        let uses_rtt = winner.is_some_and(|w| w.reason == Reason::Rtt)
            || !state.rtt.lookup(client, Instant::now()).is_empty();
        if uses_rtt {
            return;
        }
        let entry = Cached {
            generation,
            answer,
            counter: state.answer_counter(&route.decision),
            all_down: route.decision.all_down,
        };
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= ROUTE_CACHE_CAPACITY && !entries.contains_key(&client) {
            entries.clear();
        }
        entries.insert(client, entry);
    }

    /// Addresses with an answer kept (of any generation).
    pub fn len(&self) -> usize {
        self.entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether an answer for `client` at `generation` is kept.
    pub fn holds(&self, client: IpAddr, generation: u64) -> bool {
        self.entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&client)
            .is_some_and(|c| c.generation == generation)
    }
}
