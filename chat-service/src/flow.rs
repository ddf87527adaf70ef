//! The live user flow: virtual users doing what the original system's users did — create rooms,
//! send, read history, mark read, react, list their rooms, leave — at a steady rate, spread over
//! several service instances, recording every write the service **acknowledged** (a 2xx answer)
//! in a [`Ledger`], so a test can check afterwards that none of them was lost.
//!
//! A call that failed or timed out is not acknowledged: it may or may not have happened, and the
//! ledger makes no claim about it. Errors are counted by operation and status ([`FlowReport`]).
//!
//! Over 600 lines: the flow, its ledger and the check of the ledger against the service belong
//! together (the check reads what the flow recorded).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rand::Rng;
use rand::seq::{IndexedRandom, SliceRandom};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::client::{CallError, ChatClient};
use crate::ids::{MessageId, RoomId, UserId};
use crate::store::Platform;

/// What the flow does and how fast.
#[derive(Clone, Debug)]
pub struct FlowConfig {
    /// One base URL per service instance; each call goes to the next one.
    pub base_urls: Vec<String>,
    pub jwt_secret: Vec<u8>,
    /// Virtual users `first_user_id ..`.
    pub users: u32,
    pub first_user_id: i32,
    /// Calls per second over all users (steady, open loop per user).
    pub rate: f64,
    /// Per-call timeout: a call slower than this counts as failed (and unacknowledged).
    pub call_timeout: Duration,
}

/// The kinds of call the flow makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    CreateRoom,
    SendMessage,
    History,
    MarkRead,
    React,
    Rooms,
    Pin,
    Leave,
    RegisterDevice,
    DeleteDevice,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::CreateRoom => "CreateRoom",
            Op::SendMessage => "SendMessage",
            Op::History => "GetMessageHistory",
            Op::MarkRead => "MarkMessagesAsRead",
            Op::React => "ReactToMessage",
            Op::Rooms => "GetRooms",
            Op::Pin => "PinRoom",
            Op::Leave => "LeaveRoom",
            Op::RegisterDevice => "RegisterDeviceToken",
            Op::DeleteDevice => "DeleteDeviceToken",
        }
    }

    /// Writes are recorded in the ledger when acknowledged.
    pub fn is_write(self) -> bool {
        !matches!(self, Op::History | Op::Rooms)
    }
}

/// How a call ended, for the error table.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Ok,
    /// HTTP status and connect code.
    Status(u16, String),
    /// No HTTP answer: connection refused or reset, timeout.
    Transport,
}

/// One acknowledged message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AckedMessage {
    pub room: RoomId,
    pub id: MessageId,
    pub sender: UserId,
    pub content: String,
}

/// Every write the service acknowledged, in the order the answers arrived.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    /// Rooms created, with their participants at creation.
    pub rooms: BTreeMap<RoomId, BTreeSet<UserId>>,
    pub messages: Vec<AckedMessage>,
    /// (room, message, user, reaction)
    pub reactions: Vec<(RoomId, MessageId, UserId, String)>,
    /// (room, user) -> messages that user marked read.
    pub read: BTreeMap<(RoomId, UserId), BTreeSet<MessageId>>,
    /// (room, user) -> what became of the user's LeaveRoom call.
    pub left: BTreeMap<(RoomId, UserId), Leave>,
    /// (room, user) -> the pin the user last set.
    pub pins: BTreeMap<(RoomId, UserId), Pin>,
    /// (user, token) -> what the user last did with the device token.
    pub devices: BTreeMap<(UserId, String), Device>,
}

/// A user's device token as the flow knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// Registration acknowledged, on this platform.
    Registered(Platform),
    /// Deletion acknowledged.
    Deleted,
    /// A call about the token went unanswered: it may land late, so the token is not checked.
    Unknown,
}

/// A user's leave of a room as the flow knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leave {
    /// LeaveRoom acknowledged: the user is no longer a member.
    Left,
    /// LeaveRoom went unanswered (an error, a timeout, an instance killed mid-call): it may have
    /// happened, so the user's membership is not checked, nor anything that needs it (read
    /// markers, pins, reading the room's history as them).
    Unknown,
}

/// A user's pin of a room as the flow knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pin {
    /// The last PinRoom call was acknowledged with this state.
    Set(bool),
    /// A PinRoom call went unanswered: it may land, even after a later call (another instance
    /// may serve it late), so the state is not checked.
    Unknown,
}

impl Ledger {
    pub fn writes(&self) -> usize {
        self.rooms.len()
            + self.messages.len()
            + self.reactions.len()
            + self.read.values().map(BTreeSet::len).sum::<usize>()
            + self.leaves()
            + self
                .pins
                .values()
                .filter(|p| matches!(p, Pin::Set(_)))
                .count()
            + self
                .devices
                .values()
                .filter(|d| !matches!(d, Device::Unknown))
                .count()
    }

    /// Acknowledged leaves.
    pub fn leaves(&self) -> usize {
        self.left.values().filter(|l| **l == Leave::Left).count()
    }

    /// Certain members of `room` by the ledger: participants at creation minus those who left
    /// or tried to (an unanswered leave may have happened).
    pub fn members(&self, room: RoomId) -> BTreeSet<UserId> {
        self.rooms
            .get(&room)
            .into_iter()
            .flatten()
            .copied()
            .filter(|u| !self.left.contains_key(&(room, *u)))
            .collect()
    }
}

/// Counts and latencies of one run.
#[derive(Clone, Debug, Default)]
pub struct FlowReport {
    pub calls: BTreeMap<(Op, Outcome), u64>,
    pub elapsed: Duration,
    /// Latencies of successful calls, milliseconds.
    pub latencies_ms: Vec<f64>,
}

impl FlowReport {
    pub fn ok(&self) -> u64 {
        self.count(|o| *o == Outcome::Ok)
    }

    pub fn errors(&self) -> u64 {
        self.count(|o| *o != Outcome::Ok)
    }

    /// Calls answered with a 5xx status.
    pub fn server_errors(&self) -> u64 {
        self.count(|o| matches!(o, Outcome::Status(s, _) if *s >= 500))
    }

    fn count(&self, f: impl Fn(&Outcome) -> bool) -> u64 {
        self.calls
            .iter()
            .filter(|((_, o), _)| f(o))
            .map(|(_, n)| n)
            .sum()
    }

    /// Errors by `<status> <code>` (or `transport`), for printing.
    pub fn errors_by_code(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for ((_, outcome), n) in &self.calls {
            let key = match outcome {
                Outcome::Ok => continue,
                Outcome::Status(s, code) => format!("{s} {code}"),
                Outcome::Transport => "transport".into(),
            };
            *out.entry(key).or_default() += n;
        }
        out
    }

    pub fn percentile_ms(&self, p: f64) -> f64 {
        let mut v = self.latencies_ms.clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return 0.0;
        }
        let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
        v[i.min(v.len() - 1)]
    }
}

/// The flow's view of the world, shared by the virtual users.
#[derive(Default)]
struct World {
    ledger: Ledger,
    report: FlowReport,
    /// Rooms each user is in now.
    rooms_of: BTreeMap<UserId, Vec<RoomId>>,
    /// Acknowledged messages per room (for reads, marks and reactions).
    messages_of: BTreeMap<RoomId, Vec<(MessageId, UserId)>>,
    next_text: u64,
}

/// A running flow; [`Flow::stop`] ends it and returns what it saw.
pub struct Flow {
    stop: watch::Sender<bool>,
    world: Arc<Mutex<World>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

impl Flow {
    /// Starts every virtual user. Needs at least one base URL, one user and a rate above zero.
    pub fn start(config: FlowConfig) -> Flow {
        let (stop, stopped) = watch::channel(false);
        let world = Arc::new(Mutex::new(World::default()));
        let clients: Vec<ChatClient> = config
            .base_urls
            .iter()
            .map(|u| ChatClient::new(u, &config.jwt_secret))
            .collect();
        let users = config.users.max(1);
        let per_user = Duration::from_secs_f64(f64::from(users) / config.rate.max(0.1));
        let tasks = (0..users)
            .map(|i| {
                let user = UserId(config.first_user_id + i as i32);
                let everyone: Vec<UserId> = (0..users)
                    .map(|j| UserId(config.first_user_id + j as i32))
                    .collect();
                let ctx = UserCtx {
                    user,
                    everyone,
                    clients: clients.clone(),
                    world: world.clone(),
                    timeout: config.call_timeout,
                    calls: i as usize,
                };
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    let mut ctx = ctx;
                    // Spread the users' first calls over one period.
                    let offset = per_user.mul_f64(f64::from(i) / f64::from(users));
                    let mut tick =
                        tokio::time::interval_at(tokio::time::Instant::now() + offset, per_user);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            _ = stopped.changed() => break,
                            _ = tick.tick() => ctx.act().await,
                        }
                    }
                })
            })
            .collect();
        Flow {
            stop,
            world,
            tasks,
            started: Instant::now(),
        }
    }

    /// Calls made so far (all outcomes), and acknowledged writes so far.
    pub fn progress(&self) -> (u64, usize) {
        let w = lock(&self.world);
        (w.report.calls.values().sum(), w.ledger.writes())
    }

    /// A copy of the report so far.
    pub fn report(&self) -> FlowReport {
        let mut r = lock(&self.world).report.clone();
        r.elapsed = self.started.elapsed();
        r
    }

    /// Stops every user, waits for calls in flight, and returns the ledger and the report.
    pub async fn stop(self) -> (Ledger, FlowReport) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        let mut w = lock(&self.world);
        let mut report = std::mem::take(&mut w.report);
        report.elapsed = self.started.elapsed();
        (std::mem::take(&mut w.ledger), report)
    }
}

fn lock(world: &Mutex<World>) -> std::sync::MutexGuard<'_, World> {
    world.lock().unwrap_or_else(PoisonError::into_inner)
}

struct UserCtx {
    user: UserId,
    everyone: Vec<UserId>,
    clients: Vec<ChatClient>,
    world: Arc<Mutex<World>>,
    timeout: Duration,
    calls: usize,
}

impl UserCtx {
    fn client(&mut self) -> ChatClient {
        self.calls += 1;
        self.clients[self.calls % self.clients.len()].clone()
    }

    /// One action, chosen by the original system's mix: mostly sending and reading. About a
    /// third of the calls read (history, room lists): with the 10 % shadow sample that is the
    /// rate of compared reads the shipped drift gate asks for (200 in 5 minutes, scaled).
    async fn act(&mut self) {
        let (my_rooms, roll) = {
            let w = lock(&self.world);
            (
                w.rooms_of.get(&self.user).cloned().unwrap_or_default(),
                rand::rng().random_range(0..100u32),
            )
        };
        if my_rooms.is_empty() || roll < 6 {
            return self.create_room().await;
        }
        let room = *my_rooms.choose(&mut rand::rng()).unwrap_or(&my_rooms[0]);
        match roll {
            6..=40 => self.send(room).await,
            41..=70 => self.history(room).await,
            71..=80 => self.mark_read(room).await,
            81..=90 => self.react(room).await,
            91..=92 => self.list_rooms().await,
            93..=94 => self.device().await,
            95..=97 => self.pin(room).await,
            _ => self.leave(room, my_rooms.len()).await,
        }
    }

    async fn call(&mut self, op: Op, body: Value) -> Option<Value> {
        let client = self.client();
        let start = Instant::now();
        let result =
            tokio::time::timeout(self.timeout, client.call(self.user, op.as_str(), &body)).await;
        let latency = start.elapsed();
        let (outcome, value) = match result {
            Ok(Ok(v)) => (Outcome::Ok, Some(v)),
            Ok(Err(CallError::Status { status, code, .. })) => {
                (Outcome::Status(status, code), None)
            }
            Ok(Err(CallError::Unexpected { .. })) => {
                (Outcome::Status(200, "unexpected_body".into()), None)
            }
            Ok(Err(CallError::Transport { .. })) | Err(_) => (Outcome::Transport, None),
        };
        let mut w = lock(&self.world);
        if outcome == Outcome::Ok {
            w.report.latencies_ms.push(latency.as_secs_f64() * 1000.0);
        }
        *w.report.calls.entry((op, outcome)).or_default() += 1;
        value
    }

    async fn create_room(&mut self) {
        let mut others: Vec<UserId> = self
            .everyone
            .iter()
            .copied()
            .filter(|u| *u != self.user)
            .collect();
        let n = rand::rng().random_range(1..=3usize).min(others.len());
        let (picked, _) = others.partial_shuffle(&mut rand::rng(), n);
        let participants: BTreeSet<UserId> = picked.iter().copied().chain([self.user]).collect();
        let body = json!({ "name": format!("room of {}", self.user), "type": "group", "participants": participants });
        let Some(reply) = self.call(Op::CreateRoom, body).await else {
            return;
        };
        let Some(room) = reply["room"]["id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .map(RoomId)
        else {
            return;
        };
        let mut w = lock(&self.world);
        for u in &participants {
            w.rooms_of.entry(*u).or_default().push(room);
        }
        w.ledger.rooms.insert(room, participants);
    }

    async fn send(&mut self, room: RoomId) {
        let content = {
            let mut w = lock(&self.world);
            w.next_text += 1;
            format!("message {} from {}", w.next_text, self.user)
        };
        let body = json!({ "roomId": room, "content": content, "type": "user_message" });
        let Some(reply) = self.call(Op::SendMessage, body).await else {
            return;
        };
        let Some(id) = reply["message"]["id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .map(MessageId)
        else {
            return;
        };
        let mut w = lock(&self.world);
        w.messages_of.entry(room).or_default().push((id, self.user));
        w.ledger.messages.push(AckedMessage {
            room,
            id,
            sender: self.user,
            content,
        });
    }

    async fn history(&mut self, room: RoomId) {
        self.call(Op::History, json!({ "id": room, "limit": 20 }))
            .await;
    }

    async fn list_rooms(&mut self) {
        self.call(Op::Rooms, json!({ "page": 1, "limit": 20 }))
            .await;
    }

    /// Marks the latest few messages of others read.
    async fn mark_read(&mut self, room: RoomId) {
        let ids: Vec<MessageId> = {
            let w = lock(&self.world);
            w.messages_of
                .get(&room)
                .into_iter()
                .flatten()
                .rev()
                .filter(|(_, sender)| *sender != self.user)
                .take(5)
                .map(|(id, _)| *id)
                .collect()
        };
        if ids.is_empty() {
            return self.history(room).await;
        }
        let body = json!({ "roomId": room, "messageIds": ids });
        if self.call(Op::MarkRead, body).await.is_some() {
            let mut w = lock(&self.world);
            w.ledger
                .read
                .entry((room, self.user))
                .or_default()
                .extend(ids);
        }
    }

    async fn react(&mut self, room: RoomId) {
        let target = {
            let w = lock(&self.world);
            w.messages_of
                .get(&room)
                .and_then(|m| m.choose(&mut rand::rng()).copied())
        };
        let Some((message, _)) = target else {
            return self.send(room).await;
        };
        let reaction = ["👍", "🎉", ":ok:"]
            .choose(&mut rand::rng())
            .copied()
            .unwrap_or("👍");
        let body = json!({ "messageId": message, "reaction": reaction });
        if self.call(Op::React, body).await.is_some() {
            let mut w = lock(&self.world);
            w.ledger
                .reactions
                .push((room, message, self.user, reaction.to_owned()));
        }
    }

    /// Pins the room, or unpins it if the user's last pin of it was acknowledged as pinned.
    async fn pin(&mut self, room: RoomId) {
        let key = (room, self.user);
        let current = lock(&self.world).ledger.pins.get(&key).copied();
        let pinned = current != Some(Pin::Set(true));
        let acked = self
            .call(Op::Pin, json!({ "id": room, "pinned": pinned }))
            .await
            .is_some();
        let next = match (current, acked) {
            (Some(Pin::Unknown), _) | (_, false) => Pin::Unknown,
            (_, true) => Pin::Set(pinned),
        };
        lock(&self.world).ledger.pins.insert(key, next);
    }

    /// Registers a new device token, or deletes one of the user's (up to 4 held at once).
    async fn device(&mut self) {
        let (held, next) = {
            let mut w = lock(&self.world);
            w.next_text += 1;
            let held: Vec<String> = w
                .ledger
                .devices
                .iter()
                .filter(|((u, _), d)| *u == self.user && matches!(d, Device::Registered(_)))
                .map(|((_, t), _)| t.clone())
                .collect();
            (held, w.next_text)
        };
        let delete = !held.is_empty() && (held.len() >= 4 || rand::rng().random_bool(0.4));
        let (token, state, acked) = if delete {
            let token = held.choose(&mut rand::rng()).cloned().unwrap_or_default();
            let acked = self
                .call(Op::DeleteDevice, json!({ "token": token }))
                .await
                .is_some();
            (token, Device::Deleted, acked)
        } else {
            let token = format!("device-{}-{next}", self.user);
            let platform = *Platform::ALL
                .choose(&mut rand::rng())
                .unwrap_or(&Platform::Web);
            let acked = self
                .call(
                    Op::RegisterDevice,
                    json!({ "token": token, "platform": platform }),
                )
                .await
                .is_some();
            (token, Device::Registered(platform), acked)
        };
        let mut w = lock(&self.world);
        let entry = w.ledger.devices.entry((self.user, token)).or_insert(state);
        *entry = match (*entry, acked) {
            (Device::Unknown, _) | (_, false) => Device::Unknown,
            (_, true) => state,
        };
    }

    /// Leaves a room, keeping at least one room per user so the flow goes on.
    async fn leave(&mut self, room: RoomId, rooms_now: usize) {
        if rooms_now < 2 {
            return self.send(room).await;
        }
        // Forget the room first: no other action of this user targets it from now on.
        {
            let mut w = lock(&self.world);
            if let Some(rooms) = w.rooms_of.get_mut(&self.user) {
                rooms.retain(|r| *r != room);
            }
        }
        let leave = match self.call(Op::Leave, json!({ "id": room })).await {
            Some(_) => Leave::Left,
            None => Leave::Unknown,
        };
        lock(&self.world)
            .ledger
            .left
            .insert((room, self.user), leave);
    }
}

/// What a check of the ledger against the service found missing.
#[derive(Clone, Debug, Default)]
pub struct Missing {
    /// Acknowledged messages not in their room's history.
    pub messages: Vec<AckedMessage>,
    /// (user, room): a room the user is in (by the ledger) that GetRooms does not list, or one
    /// they left that it still lists.
    pub memberships: Vec<(UserId, RoomId, &'static str)>,
    /// (room, user, message): marked read, but the service counts it unread again.
    pub read_markers: Vec<(RoomId, UserId, MessageId)>,
    /// (room, user, pin acknowledged): GetRoom shows the other state.
    pub pins: Vec<(RoomId, UserId, bool)>,
    /// (user, token, what): a registered token ListDeviceTokens does not show (or with another
    /// platform), or a deleted one it still shows.
    pub devices: Vec<(UserId, String, &'static str)>,
}

impl Missing {
    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }

    pub fn total(&self) -> usize {
        self.messages.len()
            + self.memberships.len()
            + self.read_markers.len()
            + self.pins.len()
            + self.devices.len()
    }
}

/// Checks every acknowledged message, membership, read marker and pin through the API of `client`
/// (reactions have no read method: check them in the stores). Read markers are checked by
/// marking the same messages again: an intact marker answers `updated: 0`.
pub async fn verify(ledger: &Ledger, client: &ChatClient) -> Result<Missing, CallError> {
    let mut missing = Missing::default();
    let mut by_room: BTreeMap<RoomId, Vec<&AckedMessage>> = BTreeMap::new();
    for m in &ledger.messages {
        by_room.entry(m.room).or_default().push(m);
    }
    for (room, messages) in by_room {
        let Some(reader) = ledger.members(room).into_iter().next() else {
            continue;
        };
        let mut seen = BTreeSet::new();
        let mut before = None;
        loop {
            let (items, next) = client.history(reader, room, 100, before).await?;
            seen.extend(
                items
                    .iter()
                    .filter_map(|i| i["id"].as_str()?.parse().ok().map(MessageId)),
            );
            match next {
                Some(cursor) => before = Some(cursor),
                None => break,
            }
        }
        missing.messages.extend(
            messages
                .into_iter()
                .filter(|m| !seen.contains(&m.id))
                .cloned(),
        );
    }
    let users: BTreeSet<UserId> = ledger.rooms.values().flatten().copied().collect();
    for user in users {
        let mut listed = BTreeSet::new();
        for page in 1.. {
            let reply = client.rooms(user, page, 100).await?;
            let items = reply["items"].as_array().cloned().unwrap_or_default();
            listed.extend(
                items
                    .iter()
                    .filter_map(|r| r["id"].as_str()?.parse().ok().map(RoomId)),
            );
            if items.len() < 100 {
                break;
            }
        }
        for (room, participants) in &ledger.rooms {
            if !participants.contains(&user) {
                continue;
            }
            match (ledger.left.get(&(*room, user)), listed.contains(room)) {
                (None, false) => missing
                    .memberships
                    .push((user, *room, "joined, not listed")),
                (Some(Leave::Left), true) => {
                    missing
                        .memberships
                        .push((user, *room, "left, still listed"))
                }
                _ => {}
            }
        }
    }
    for ((room, user), ids) in &ledger.read {
        if ledger.left.contains_key(&(*room, *user)) {
            continue;
        }
        let ids: Vec<MessageId> = ids.iter().copied().collect();
        let reply = client
            .call(
                *user,
                "MarkMessagesAsRead",
                &json!({ "roomId": room, "messageIds": ids }),
            )
            .await?;
        if reply["updated"].as_u64().unwrap_or(0) > 0 {
            missing.read_markers.push((*room, *user, ids[0]));
        }
    }
    for ((room, user), pin) in &ledger.pins {
        let Pin::Set(pinned) = *pin else { continue };
        if ledger.left.contains_key(&(*room, *user)) {
            continue;
        }
        let reply = client
            .call(*user, "GetRoom", &json!({ "id": room }))
            .await?;
        if reply["room"]["isPinned"].as_bool() != Some(pinned) {
            missing.pins.push((*room, *user, pinned));
        }
    }
    let device_users: BTreeSet<UserId> = ledger.devices.keys().map(|(u, _)| *u).collect();
    for user in device_users {
        let reply = client.call(user, "ListDeviceTokens", &json!({})).await?;
        let listed: BTreeMap<String, String> = reply["devices"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| {
                Some((
                    d["token"].as_str()?.to_owned(),
                    d["platform"].as_str()?.to_owned(),
                ))
            })
            .collect();
        for ((u, token), device) in ledger.devices.range((user, String::new())..) {
            if *u != user {
                break;
            }
            let what = match device {
                Device::Registered(p)
                    if listed.get(token).map(String::as_str) != Some(p.as_str()) =>
                {
                    "registered, not listed"
                }
                Device::Deleted if listed.contains_key(token) => "deleted, still listed",
                _ => continue,
            };
            missing.devices.push((user, token.clone(), what));
        }
    }
    Ok(missing)
}
