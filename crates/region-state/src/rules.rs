//! The rules both stores apply the same way, as plain functions over what each store read:
//! what a resume replays, and how a user's live connections add up to presence. Kept in one
//! place so the Redis and the in-memory store cannot disagree.

use std::collections::{BTreeSet, HashMap};

use bytes::Bytes;
use meridian_protocol::{OriginPosition, PresenceEntry, UserId};

use crate::Recovery;

/// A user's presence, given the region of each of their live connections (connections on
/// nodes whose lease is alive), one item per connection.
pub(crate) fn presence_from_live<'a>(
    user: &UserId,
    live_regions: impl IntoIterator<Item = &'a str>,
) -> PresenceEntry {
    let mut connections = 0;
    let mut regions = BTreeSet::new();
    for region in live_regions {
        connections += 1;
        regions.insert(region.to_owned());
    }
    PresenceEntry {
        user: user.clone(),
        online: connections > 0,
        connections,
        regions: regions.into_iter().collect(),
    }
}

/// Cross-region resume over a room's whole retained history (`entries`: local seq, origin
/// tag `"<region> <epoch> <seq>"` for replicated entries, frame). An entry is replayed when
/// its origin is in `vector` with the same epoch and a lower seq; entries of origins the
/// client does not list were not part of what it followed, and entries of another epoch of
/// a listed origin are not comparable with its position (both skipped). Lost when more than
/// `max_replay` events would be needed, or when the history was trimmed and does not reach
/// back to a listed origin's position.
pub(crate) fn decide_vector_recovery(
    region: &str,
    cur_epoch: &str,
    cur_seq: u64,
    vector: &[OriginPosition],
    max_replay: u32,
    entries: Vec<(u64, Option<String>, Bytes)>,
) -> Recovery {
    let lost = || Recovery::Lost {
        epoch: cur_epoch.to_owned(),
        seq: cur_seq,
    };
    let trimmed = entries.first().is_some_and(|(s, _, _)| *s > 1);
    let want: HashMap<&str, (&str, u64)> = vector
        .iter()
        .map(|o| (o.region.as_str(), (o.epoch.as_str(), o.seq)))
        .collect();
    // Per listed origin: whether the retained history reaches back to the client's position.
    let mut reaches: HashMap<&str, bool> = HashMap::new();
    let mut events = Vec::new();
    for (seq, tag, frame) in &entries {
        let (o_region, o_epoch, o_seq) = match tag {
            Some(t) => {
                let mut p = t.splitn(3, ' ');
                match (
                    p.next(),
                    p.next(),
                    p.next().and_then(|s| s.parse::<u64>().ok()),
                ) {
                    (Some(r), Some(e), Some(s)) => (r, e, s),
                    _ => continue,
                }
            }
            None => (region, cur_epoch, *seq),
        };
        let Some((w_epoch, w_seq)) = want.get(o_region) else {
            continue;
        };
        if *w_epoch != o_epoch {
            // Another run of that region's room sequence (it restarted): not comparable.
            continue;
        }
        reaches.entry(o_region).or_insert(o_seq <= *w_seq);
        if o_seq > *w_seq {
            events.push((*seq, frame.clone()));
        }
    }
    if trimmed && reaches.values().any(|r| !r) {
        return lost();
    }
    if events.len() > max_replay as usize {
        return lost();
    }
    Recovery::Replay {
        epoch: cur_epoch.to_owned(),
        events,
    }
}

/// Decides what a resume from `(epoch, seq)` gets, given the room's current epoch and sequence,
/// the oldest sequence still in history, and the history entries after `seq` (at most
/// `max_replay + 1` of them). Shared by both stores so they cannot disagree.
pub(crate) fn decide_recovery(
    cur_epoch: &str,
    cur_seq: u64,
    oldest: Option<u64>,
    epoch: &str,
    seq: u64,
    max_replay: u32,
    events: Vec<(u64, Bytes)>,
) -> Recovery {
    let lost = || Recovery::Lost {
        epoch: cur_epoch.to_owned(),
        seq: cur_seq,
    };
    let fresh = epoch.is_empty() && seq == 0;
    if cur_epoch.is_empty() {
        // The room has no history at all (never used, or expired).
        return if fresh {
            Recovery::Replay {
                epoch: String::new(),
                events: Vec::new(),
            }
        } else {
            lost()
        };
    }
    if epoch != cur_epoch && !fresh {
        return lost();
    }
    if seq > cur_seq || cur_seq - seq > u64::from(max_replay) {
        return lost();
    }
    if seq == cur_seq {
        return Recovery::Replay {
            epoch: cur_epoch.to_owned(),
            events: Vec::new(),
        };
    }
    match oldest {
        Some(oldest) if oldest <= seq + 1 => Recovery::Replay {
            epoch: cur_epoch.to_owned(),
            events: events.into_iter().filter(|(s, _)| *s > seq).collect(),
        },
        _ => lost(),
    }
}

#[cfg(test)]
mod vector_tests {
    use super::*;

    fn pos(region: &str, epoch: &str, seq: u64) -> OriginPosition {
        OriginPosition {
            region: region.into(),
            epoch: epoch.into(),
            seq,
        }
    }

    /// `ap` history: 1 local, 2 from eu (eu seq 5), 3 local, 4 from eu (eu seq 9), 5 local.
    fn history(from: u64) -> Vec<(u64, Option<String>, Bytes)> {
        let all = vec![
            (1, None, Bytes::from_static(b"a1")),
            (2, Some("eu e1 5".to_owned()), Bytes::from_static(b"eu5")),
            (3, None, Bytes::from_static(b"a3")),
            (4, Some("eu e1 9".to_owned()), Bytes::from_static(b"eu9")),
            (5, None, Bytes::from_static(b"a5")),
        ];
        all.into_iter().filter(|(s, _, _)| *s >= from).collect()
    }

    fn replayed(r: Recovery) -> Vec<u64> {
        match r {
            Recovery::Replay { events, .. } => events.into_iter().map(|(s, _)| s).collect(),
            Recovery::Lost { .. } => panic!("lost"),
        }
    }

    #[test]
    fn replays_exactly_what_each_origin_had_not_delivered() {
        // Saw ap's events up to ap seq 1 (through eu) and eu's up to eu seq 5.
        let v = [pos("ap", "a0", 1), pos("eu", "e1", 5)];
        let r = decide_vector_recovery("ap", "a0", 5, &v, 100, history(1));
        assert_eq!(replayed(r), vec![3, 4, 5]);
        // An origin the client never followed contributes nothing.
        let r = decide_vector_recovery("ap", "a0", 5, &[pos("eu", "e1", 5)], 100, history(1));
        assert_eq!(replayed(r), vec![4]);
        // Another epoch of an origin is not comparable: skipped.
        let r = decide_vector_recovery("ap", "a0", 5, &[pos("eu", "e0", 1)], 100, history(1));
        assert_eq!(replayed(r), Vec::<u64>::new());
    }

    #[test]
    fn trimmed_history_or_too_much_to_replay_is_lost() {
        // The history starts at 3: eu's first kept entry (eu 9) is past the client's eu 5.
        let v = [pos("ap", "a0", 3), pos("eu", "e1", 5)];
        let r = decide_vector_recovery("ap", "a0", 5, &v, 100, history(3));
        assert!(matches!(r, Recovery::Lost { .. }));
        // ... but a client already at eu 9 is covered.
        let v = [pos("ap", "a0", 3), pos("eu", "e1", 9)];
        let r = decide_vector_recovery("ap", "a0", 5, &v, 100, history(3));
        assert_eq!(replayed(r), vec![5]);
        // More than max_replay events.
        let v = [pos("ap", "a0", 0), pos("eu", "e1", 0)];
        let r = decide_vector_recovery("ap", "a0", 5, &v, 2, history(1));
        assert!(matches!(r, Recovery::Lost { .. }));
    }
}
