//! The room quotas: rooms one connection is in (`rooms_per_connection`),
//! rooms one user created that still exist (`rooms_created_per_user`) and
//! rooms of one app that exist (`live_rooms_per_app`).
//!
//! A connection's rooms are its room set (`keys::conn_rooms`, also what its
//! disconnect cleans up): a join adds to it with one check-and-add.
//!
//! Created rooms are counted as [`CreatedRoom`] entries in the creator's
//! set (`UserKeys::rooms_created`) and the app's (`AppKeys::rooms`), each
//! added by a check-and-add before the room is created and removed when the
//! create fails. Rooms expire silently (Redis TTL), so each entry carries
//! when to check next whether its room still exists: when it could have
//! expired at the earliest (a room with members cannot expire before
//! `idle_ttl_secs` after its last member leaves). A check that finds the
//! room gone, or another room by that id, removes the entry from both sets.
//! Checks run every second for apps ([`Rooms::sweep_quotas`]) and, for a
//! user at the quota, before the refusal. An entry whose create never ran
//! (a crash in between) is gone at its first check after [`GRACE_MS`]:
//! a crash never keeps a quota taken for longer.

use deadpool_redis::redis;
use switchboard_shared::ids::{RoomId, TenantId, UserId};
use switchboard_shared::keys::{self, AppKeys, RoomKeys, UserKeys};
use switchboard_shared::members::CreatedRoom;
use switchboard_shared::now_ms;
use switchboard_shared::quotas::Quota;

use super::Rooms;
use super::scripts::{self, Reserve};
use crate::error::{LogFailure, ServiceError};

/// How long an entry may wait for its room to be created: an entry whose
/// room does not exist is only removed once it is older than this. Far
/// longer than the two Redis round trips between the two.
pub const GRACE_MS: u64 = 5_000;

/// Most entries one check examines.
const CHECK_BATCH: usize = 500;

/// Rooms counted for one create, released if the create does not happen.
pub(super) struct Counted {
    entry: String,
    user: Option<String>,
    app: String,
}

impl Rooms {
    /// Counts a room about to be created (`entry.created_at` is its
    /// `created_at`) against the app's live rooms and, with a creator,
    /// against the creator's created rooms; `limit_exceeded` when either is
    /// full (after removing what expired).
    pub(super) async fn count_room(
        &self,
        tenant: &TenantId,
        entry: &CreatedRoom,
    ) -> Result<Option<Counted>, ServiceError> {
        if !self.quotas.enabled {
            return Ok(None);
        }
        let member = entry.to_string();
        let idle_ms = self.cfg.idle_ttl_secs.max(1).saturating_mul(1000);
        let check_at = entry.created_at + idle_ms.max(GRACE_MS);
        let app = AppKeys::new(tenant).rooms;
        let mut r = self.conn().await?;
        let user = match &entry.creator {
            Some(u) => {
                let max = self
                    .quotas
                    .limit(tenant.as_str(), Quota::RoomsCreatedPerUser);
                let key = UserKeys::new(tenant, u).rooms_created;
                if max > 0 {
                    self.reserve_or_check(&mut r, tenant, &key, &member, check_at, max)
                        .await?
                        .then_some(())
                        .ok_or_else(|| {
                            ServiceError::limit(
                                Quota::RoomsCreatedPerUser,
                                max,
                                "you created too many rooms that still exist",
                            )
                        })?;
                    Some(key)
                } else {
                    None
                }
            }
            None => None,
        };
        let max = self.quotas.limit(tenant.as_str(), Quota::LiveRoomsPerApp);
        let added = self
            .reserve_or_check(&mut r, tenant, &app, &member, check_at, max)
            .await;
        if !matches!(added, Ok(true)) {
            if let Some(key) = &user {
                release(&mut r, key, &member).await;
            }
            return Err(added.err().unwrap_or_else(|| {
                ServiceError::limit(Quota::LiveRoomsPerApp, max, "this app has too many rooms")
            }));
        }
        redis::cmd("SADD")
            .arg(keys::QUOTA_ROOM_APPS)
            .arg(tenant.as_str())
            .query_async::<()>(&mut r)
            .await
            .log_failure("indexing an app's counted rooms");
        Ok(Some(Counted {
            entry: member,
            user,
            app,
        }))
    }

    /// Un-counts a room whose create did not happen.
    pub(super) async fn uncount_room(&self, counted: Option<Counted>) {
        let Some(c) = counted else { return };
        match self.conn().await {
            Ok(mut r) => {
                if let Some(key) = &c.user {
                    release(&mut r, key, &c.entry).await;
                }
                release(&mut r, &c.app, &c.entry).await;
            }
            Err(e) => tracing::warn!(error = %e, "un-counting a room that was not created failed"),
        }
    }

    /// Adds `member` to `key` unless full; when full, removes the entries
    /// whose room is gone and tries once more. Whether it was added.
    async fn reserve_or_check(
        &self,
        r: &mut deadpool_redis::Connection,
        tenant: &TenantId,
        key: &str,
        member: &str,
        check_at: u64,
        max: u64,
    ) -> Result<bool, ServiceError> {
        if scripts::reserve(r, key, member, check_at, max).await? == Reserve::Added {
            return Ok(true);
        }
        if self.check_due(r, tenant, key, now_ms()).await? == 0 {
            return Ok(false);
        }
        Ok(scripts::reserve(r, key, member, check_at, max).await? == Reserve::Added)
    }

    /// Checks the entries of set `key` whose time has come: a room that
    /// still exists is checked again when it could expire at the earliest;
    /// one that is gone (or replaced by a later room with its id) leaves
    /// the app's and the creator's sets. Returns how many left.
    async fn check_due(
        &self,
        r: &mut deadpool_redis::Connection,
        tenant: &TenantId,
        key: &str,
        now: u64,
    ) -> Result<usize, ServiceError> {
        let due: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(key)
            .arg("-inf")
            .arg(now)
            .arg("LIMIT")
            .arg(0)
            .arg(CHECK_BATCH)
            .query_async(r)
            .await?;
        if due.is_empty() {
            return Ok(0);
        }
        let parsed: Vec<Option<CreatedRoom>> = due.iter().map(|m| CreatedRoom::parse(m)).collect();
        let mut read = redis::pipe();
        for e in parsed.iter().flatten() {
            let meta = RoomKeys::new(tenant, &e.room).meta;
            read.hget(&meta, "created_at").pttl(&meta);
        }
        let seen: Vec<(Option<u64>, i64)> = read.query_async(r).await?;
        let mut seen = seen.into_iter();
        let idle_ms = self.cfg.idle_ttl_secs.max(1).saturating_mul(1000);
        let app = AppKeys::new(tenant).rooms;
        let mut write = redis::pipe();
        let mut gone = 0;
        for (raw, e) in due.iter().zip(&parsed) {
            let Some(e) = e else {
                tracing::warn!(key, entry = %raw, "dropped a malformed counted room");
                write.zrem(key, raw).ignore();
                continue;
            };
            let Some((created_at, pttl)) = seen.next() else {
                break;
            };
            let next = match Existence::of(e, created_at, pttl, now) {
                Existence::Exists => now + if pttl > 0 { pttl as u64 + 1 } else { idle_ms },
                Existence::NotYet => e.created_at + GRACE_MS,
                Existence::Gone => {
                    gone += 1;
                    write.zrem(&app, raw).ignore();
                    if let Some(u) = &e.creator {
                        write
                            .zrem(UserKeys::new(tenant, u).rooms_created, raw)
                            .ignore();
                    }
                    continue;
                }
            };
            write
                .cmd("ZADD")
                .arg(key)
                .arg("XX")
                .arg(next)
                .arg(raw)
                .ignore();
        }
        let () = write.query_async(r).await?;
        Ok(gone)
    }

    /// Removes counted rooms that expired, for every app that counts rooms
    /// (every replica runs it every second; the work is idempotent).
    pub async fn sweep_quotas(&self) {
        self.sweep_apps().await.log_failure("room quota sweep");
    }

    async fn sweep_apps(&self) -> Result<(), ServiceError> {
        let mut r = self.conn().await?;
        let apps: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys::QUOTA_ROOM_APPS)
            .query_async(&mut r)
            .await?;
        let apps: Vec<TenantId> = apps
            .iter()
            .filter_map(|a| {
                let t = TenantId::parse(a).ok();
                if t.is_none() {
                    tracing::warn!(app = %a, "skipping a malformed app of the room quotas");
                }
                t
            })
            .collect();
        let now = now_ms();
        // One round trip tells which apps have anything due.
        for batch in apps.chunks(CHECK_BATCH) {
            let mut any = redis::pipe();
            for t in batch {
                any.zcount(AppKeys::new(t).rooms, "-inf", now);
            }
            let due: Vec<u64> = any.query_async(&mut r).await?;
            for (t, n) in batch.iter().zip(due) {
                if n > 0 {
                    self.check_due(&mut r, t, &AppKeys::new(t).rooms, now)
                        .await
                        .log_failure("checking an app's counted rooms");
                }
            }
        }
        Ok(())
    }

    /// Counts `room` among the connection's rooms (`rooms_per_connection`):
    /// whether it was added now (and so must be removed if the join fails).
    pub(super) async fn count_join(
        &self,
        r: &mut deadpool_redis::Connection,
        tenant: &TenantId,
        conn_rooms: &str,
        room: &str,
    ) -> Result<bool, ServiceError> {
        let max = self
            .quotas
            .limit(tenant.as_str(), Quota::RoomsPerConnection);
        match scripts::conn_room(r, conn_rooms, room, max).await? {
            scripts::ConnRoom::Already => Ok(false),
            scripts::ConnRoom::Added => Ok(true),
            scripts::ConnRoom::Full => Err(ServiceError::limit(
                Quota::RoomsPerConnection,
                max,
                "this connection is in too many rooms",
            )),
        }
    }
}

/// Whether a counted room exists, from its meta's `created_at` and TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Existence {
    Exists,
    /// Not there (yet): the entry is younger than [`GRACE_MS`].
    NotYet,
    Gone,
}

impl Existence {
    fn of(e: &CreatedRoom, created_at: Option<u64>, pttl: i64, now: u64) -> Self {
        if created_at == Some(e.created_at) && pttl != -2 {
            Self::Exists
        } else if now < e.created_at.saturating_add(GRACE_MS) {
            Self::NotYet
        } else {
            Self::Gone
        }
    }
}

/// Removes `entry` from the counted set `key` (best effort: a failure
/// leaves it to the next check).
async fn release(r: &mut deadpool_redis::Connection, key: &str, entry: &str) {
    redis::cmd("ZREM")
        .arg(key)
        .arg(entry)
        .query_async::<()>(r)
        .await
        .log_failure("releasing a counted room");
}

/// The entry a room created now by `creator` (counted against their quota
/// when `Some`) is counted as.
pub(super) fn entry(room: &RoomId, created_at: u64, creator: Option<&UserId>) -> CreatedRoom {
    CreatedRoom {
        created_at,
        room: room.clone(),
        creator: creator.cloned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counted_room_exists_while_its_meta_says_so() {
        let r = RoomId::parse("r").unwrap_or_else(|e| panic!("{e}"));
        let e = entry(&r, 1_000, None);
        assert_eq!(
            Existence::of(&e, Some(1_000), -1, 99_000),
            Existence::Exists
        );
        assert_eq!(
            Existence::of(&e, Some(1_000), 500, 99_000),
            Existence::Exists
        );
        // Another room by the same id, created later: this one is gone.
        assert_eq!(Existence::of(&e, Some(2_000), -1, 99_000), Existence::Gone);
        assert_eq!(Existence::of(&e, None, -2, 99_000), Existence::Gone);
        // Not created yet, or its create is still on the way.
        assert_eq!(
            Existence::of(&e, None, -2, 1_000 + GRACE_MS - 1),
            Existence::NotYet
        );
    }
}
