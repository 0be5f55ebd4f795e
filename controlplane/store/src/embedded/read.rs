//! Reads over any redb table handle (a read snapshot or the writer's own transaction): ranges
//! at the current or a past revision, and the history a watch catches up from.

use std::ops::Bound;

use redb::{AccessGuard, ReadableTable, StorageError};

use super::codec::{decode_keys, Record, RecordRef};
use super::Error;
use crate::{Event, EventKind, KeyRange, KeyValue, RangeRequest, RangeResponse, Revision};

type Result<T> = std::result::Result<T, Error>;

fn storage(op: &'static str) -> impl FnOnce(StorageError) -> Error {
    move |e| Error::Storage { op, source: e.into() }
}

/// The bounds of `range` in a table keyed by the key alone.
fn key_bounds(range: &KeyRange) -> (Bound<&[u8]>, Bound<&[u8]>) {
    if range.is_single() {
        return (Bound::Included(&range.key), Bound::Included(&range.key));
    }
    let hi = match range.end() {
        Some(end) => Bound::Excluded(end),
        None => Bound::Unbounded,
    };
    (Bound::Included(range.start()), hi)
}

/// One version read from the history table: its `(key, revision)` and its record, still on
/// their pages.
type HistoryEntry<'a> = (AccessGuard<'a, (&'static [u8], i64)>, AccessGuard<'a, &'static [u8]>);

/// The pairs of `range` at `revision`, which the caller has checked lies between the compaction
/// revision and `current`.
pub(crate) fn range<C, H>(
    current_table: &C,
    history: &H,
    req: &RangeRequest,
    revision: Revision,
    current: Revision,
) -> Result<RangeResponse>
where
    C: ReadableTable<&'static [u8], &'static [u8]>,
    H: ReadableTable<(&'static [u8], i64), &'static [u8]>,
{
    let mut resp = RangeResponse { header_revision: current, ..Default::default() };
    if req.range.is_empty_range() {
        return Ok(resp);
    }
    let limit = usize::try_from(req.limit).ok().filter(|l| *l > 0);
    // Past the limit a pair is only counted: its value is never copied.
    let mut push = |key: &[u8], rec: RecordRef<'_>| {
        resp.count += 1;
        if req.count_only {
            return;
        }
        if limit.is_some_and(|l| resp.kvs.len() >= l) {
            resp.more = true;
            return;
        }
        resp.kvs.push(rec.to_kv(key, req.keys_only));
    };
    if revision >= current {
        for entry in current_table
            .range::<&[u8]>(key_bounds(&req.range))
            .map_err(storage("range current"))?
        {
            let (k, v) = entry.map_err(storage("range current"))?;
            push(k.value(), RecordRef::decode(v.value())?);
        }
    } else {
        let (lo, hi) = key_bounds(&req.range);
        let lo = match lo {
            Bound::Included(k) => Bound::Included((k, i64::MIN)),
            _ => Bound::Unbounded,
        };
        let hi = match hi {
            Bound::Included(k) => Bound::Included((k, i64::MAX)),
            Bound::Excluded(k) => Bound::Excluded((k, i64::MIN)),
            Bound::Unbounded => Bound::Unbounded,
        };
        // Versions come grouped by key, oldest first: hold the newest one not after `revision`
        // (its page, not a copy) and emit it when the key changes.
        let mut pending = None;
        let mut flush = |pending: Option<HistoryEntry<'_>>| match pending {
            Some((k, v)) => {
                let rec = RecordRef::decode(v.value())?;
                if !rec.tombstone {
                    push(k.value().0, rec);
                }
                Ok::<_, Error>(())
            }
            None => Ok(()),
        };
        let mut last_key: Vec<u8> = Vec::new();
        for entry in history.range::<(&[u8], i64)>((lo, hi)).map_err(storage("range history"))? {
            let (k, v) = entry.map_err(storage("range history"))?;
            let (key, rev) = k.value();
            if key != last_key.as_slice() {
                flush(pending.take())?;
                last_key.clear();
                last_key.extend_from_slice(key);
            }
            if rev <= revision {
                pending = Some((k, v));
            }
        }
        flush(pending)?;
    }
    Ok(resp)
}

/// The newest version of `key` strictly before `revision`, if it is a live pair.
pub(crate) fn prev_version<H>(
    history: &H,
    key: &[u8],
    revision: Revision,
) -> Result<Option<KeyValue>>
where
    H: ReadableTable<(&'static [u8], i64), &'static [u8]>,
{
    let mut it = history
        .range::<(&[u8], i64)>((key, i64::MIN)..(key, revision))
        .map_err(storage("previous version"))?;
    match it.next_back() {
        Some(entry) => {
            let (_, v) = entry.map_err(storage("previous version"))?;
            let rec = Record::decode(v.value())?;
            Ok((!rec.tombstone).then(|| rec.into_kv(key)))
        }
        None => Ok(None),
    }
}

/// The events in `range` of revisions `from..=to`, oldest first, each with its previous pair
/// when `prev_kv` (and the store still has it).
pub(crate) fn history_events<C, H>(
    changes: &C,
    history: &H,
    range: &KeyRange,
    from: Revision,
    to: Revision,
    prev_kv: bool,
) -> Result<Vec<Event>>
where
    C: ReadableTable<i64, &'static [u8]>,
    H: ReadableTable<(&'static [u8], i64), &'static [u8]>,
{
    let mut events = Vec::new();
    if from > to {
        return Ok(events);
    }
    for entry in changes.range(from..=to).map_err(storage("read changes"))? {
        let (rev, keys) = entry.map_err(storage("read changes"))?;
        let rev = rev.value();
        for key in decode_keys(keys.value())? {
            if !range.contains(&key) {
                continue;
            }
            let rec = match history.get((key.as_slice(), rev)).map_err(storage("read history"))? {
                Some(v) => Record::decode(v.value())?,
                None => return Err(Error::MissingHistory { revision: rev }),
            };
            let prev = if prev_kv { prev_version(history, &key, rev)? } else { None };
            events.push(event(&key, rec, prev));
        }
    }
    Ok(events)
}

/// The event for a version `rec` of `key`.
pub(crate) fn event(key: &[u8], rec: Record, prev_kv: Option<KeyValue>) -> Event {
    if rec.tombstone {
        Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: key.to_vec(),
                mod_revision: rec.mod_revision,
                ..Default::default()
            },
            prev_kv,
        }
    } else {
        Event { kind: EventKind::Put, kv: rec.into_kv(key), prev_kv }
    }
}
