//! Where a client is in a room, kept by the rules of `docs/protocol.md` §7, so that a new
//! connection (to another node, or another region) resumes without loss or duplicates: a
//! cursor in the connected region's sequence and a version vector (per origin region, the
//! last of that region's own events seen). The same rules as the JavaScript SDK's
//! `src/position.ts`, checked against the same scenarios (`crates/protocol/tests/vectors/
//! resume.json`).

use std::collections::BTreeMap;

use meridian_protocol::{JoinResult, OriginPosition, ResumePoint, ResumedRoom, RoomId};

use crate::frame::RoomEvent;

/// One room's cursor and version vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomPosition {
    room: RoomId,
    /// The region the connection is in (events without `origin` happened there).
    region: String,
    epoch: String,
    seq: u64,
    /// Per origin region: (epoch, seq) of the last of its own events seen.
    vector: BTreeMap<String, (String, u64)>,
    /// A resume's replay still under way: merged once its last event has passed.
    replay: Option<Replay>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Replay {
    left: u64,
    region: String,
    epoch: String,
    seq: u64,
    origins: Vec<OriginPosition>,
}

impl RoomPosition {
    /// Rule 1: the position a `join` in `region` gave.
    pub fn joined(region: &str, join: &JoinResult) -> Self {
        let mut p = Self {
            room: join.room.clone(),
            region: region.to_owned(),
            epoch: join.epoch.clone(),
            seq: join.seq,
            vector: BTreeMap::new(),
            replay: None,
        };
        p.merge(region, &join.epoch, join.seq);
        p.merge_all(&join.origins);
        p
    }

    /// The room.
    pub fn room(&self) -> &RoomId {
        &self.room
    }

    /// Rule 5: merge by maximum (another epoch replaces).
    fn merge(&mut self, region: &str, epoch: &str, seq: u64) {
        match self.vector.get_mut(region) {
            Some((e, s)) if e == epoch => *s = (*s).max(seq),
            _ => {
                self.vector
                    .insert(region.to_owned(), (epoch.to_owned(), seq));
            }
        }
    }

    fn merge_all(&mut self, origins: &[OriginPosition]) {
        for o in origins {
            self.merge(&o.region, &o.epoch, o.seq);
        }
    }

    /// Rule 2 (and 7): takes a room event of this room; returns whether the app should see
    /// it (`false`: already seen on this connection, or a duplicate of one seen elsewhere).
    pub fn event(&mut self, event: &RoomEvent) -> bool {
        let seen_here = event.epoch == self.epoch && event.seq <= self.seq;
        let deliver = if seen_here {
            false
        } else {
            let (region, epoch, seq) = match &event.origin {
                Some(o) => (o.region.as_str(), o.epoch.as_str(), o.seq),
                None => (self.region.as_str(), event.epoch.as_str(), event.seq),
            };
            let duplicate = self
                .vector
                .get(region)
                .is_some_and(|(e, s)| e == epoch && *s >= seq);
            if !duplicate {
                let (region, epoch) = (region.to_owned(), epoch.to_owned());
                self.merge(&region, &epoch, seq);
            }
            !duplicate
        };
        if !seen_here {
            self.epoch.clone_from(&event.epoch);
            self.seq = event.seq;
        }
        if let Some(r) = &mut self.replay {
            r.left = r.left.saturating_sub(1);
            if r.left == 0 {
                self.finish_replay();
            }
        }
        deliver
    }

    /// Rule 4, after the replay's last event: the cursor and vector take the resume's
    /// position.
    fn finish_replay(&mut self) {
        if let Some(r) = self.replay.take() {
            self.seq = self.seq.max(r.seq);
            self.merge(&r.region, &r.epoch, r.seq);
            self.merge_all(&r.origins);
        }
    }

    /// Rule 3: what `hello` sends to resume the room.
    pub fn resume_point(&self) -> ResumePoint {
        ResumePoint {
            room: self.room.clone(),
            epoch: self.epoch.clone(),
            seq: self.seq,
            origins: self
                .vector
                .iter()
                .map(|(region, (epoch, seq))| OriginPosition {
                    region: region.clone(),
                    epoch: epoch.clone(),
                    seq: *seq,
                })
                .collect(),
        }
    }

    /// Rules 4 and 6: takes the `hello` reply's entry for this room from a node of `region`.
    /// Returns `false` when the history was lost (the app must resync: `members`,
    /// `state_get`).
    pub fn resumed(&mut self, region: &str, entry: &ResumedRoom) -> bool {
        match entry {
            ResumedRoom::Recovered {
                epoch,
                seq,
                replayed,
                origins,
                ..
            } => {
                self.region = region.to_owned();
                if *epoch != self.epoch {
                    self.epoch.clone_from(epoch);
                    self.seq = 0;
                }
                self.replay = Some(Replay {
                    left: *replayed,
                    region: region.to_owned(),
                    epoch: epoch.clone(),
                    seq: *seq,
                    origins: origins.clone(),
                });
                if *replayed == 0 {
                    self.finish_replay();
                }
                true
            }
            ResumedRoom::HistoryLost {
                epoch,
                seq,
                origins,
                ..
            } => {
                self.region = region.to_owned();
                self.epoch.clone_from(epoch);
                self.seq = *seq;
                self.replay = None;
                self.merge(region, epoch, *seq);
                self.merge_all(origins);
                false
            }
            // Not rejoined: the position stays for a later attempt.
            ResumedRoom::Error { .. } => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{decode, Event, Frame};

    /// The shared resume scenarios, step by step.
    #[test]
    fn the_shared_resume_scenarios_hold() {
        let vectors: serde_json::Value =
            serde_json::from_str(include_str!("../../protocol/tests/vectors/resume.json")).unwrap();
        let room = |v: &serde_json::Value| RoomId::new(v.as_str().unwrap()).unwrap();
        for scenario in vectors["scenarios"].as_array().unwrap() {
            let name = scenario["name"].as_str().unwrap();
            let mut position: Option<RoomPosition> = None;
            for step in scenario["steps"].as_array().unwrap() {
                if let Some(join) = step.get("join") {
                    let result = JoinResult {
                        epoch: join["epoch"].as_str().unwrap().into(),
                        first: true,
                        origins: serde_json::from_value(join["origins"].clone()).unwrap(),
                        room: room(&scenario["room"]),
                        seq: join["seq"].as_u64().unwrap(),
                    };
                    position = Some(RoomPosition::joined(
                        join["region"].as_str().unwrap(),
                        &result,
                    ));
                    continue;
                }
                let p = position.as_mut().unwrap();
                if let Some(event) = step.get("event") {
                    let Frame::Event(Event::Room(e)) = decode(&event.to_string()).unwrap() else {
                        panic!("{name}: not a room event: {event}")
                    };
                    assert_eq!(p.event(&e), step["deliver"] == true, "{name}: {event}");
                } else if let Some(expected) = step.get("resume") {
                    let point = serde_json::to_value(p.resume_point()).unwrap();
                    assert_eq!(&point, expected, "{name}");
                } else if let Some(resumed) = step.get("resumed") {
                    let entry: ResumedRoom =
                        serde_json::from_value(resumed["entry"].clone()).unwrap();
                    let kept = p.resumed(resumed["region"].as_str().unwrap(), &entry);
                    assert_eq!(kept, step["outcome"] != "lost", "{name}");
                } else {
                    panic!("{name}: unknown step {step}");
                }
            }
        }
    }
}
