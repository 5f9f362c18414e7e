//! One proxied connection: two directions, each copying bytes from one socket
//! to the other through the toxics of its stream.
//!
//! A direction with no toxics copies straight from socket to socket, one read
//! and one write per chunk, which is what keeps the proxy's own cost low. Once
//! its stream has toxics it switches to a pipeline: a reader timestamps chunks
//! into a bounded channel and a writer takes them through the toxics in order,
//! so that latency is counted from when a chunk was read and bulk traffic stays
//! pipelined. Both watch the stream's toxic list, so a toxic added, updated or
//! removed acts on live connections, as in Toxiproxy; a pipeline whose list has
//! emptied and whose buffers have drained goes back to the direct copy.
//!
//! Both directions run in the connection's one task, so that disabling or
//! deleting the proxy ends the connection by aborting that task.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};

use super::model::{Stream, ToxicKind};
use super::registry::{ActiveToxic, Chain};
use crate::seed;

/// What a connection needs to know about where it runs.
pub(crate) struct LinkContext {
    /// The run's seed.
    pub seed: u64,
    /// The proxy's name.
    pub proxy: Arc<str>,
    /// The proxy's accept counter when this connection was accepted.
    pub connection: u64,
    /// The largest read, in bytes.
    pub chunk_bytes: usize,
    /// Chunks a pipeline buffers per direction, in its channel and again in
    /// its queue.
    pub channel_chunks: usize,
}

/// How a direction, or the connection, ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// The source ended and the end was passed on (a half-close).
    Eof,
    /// The connection must close: an error, or a toxic closed it.
    Close,
    /// The connection must be reset (`reset_peer`).
    Reset,
}

/// Proxies between `client` and `upstream` until both directions end, a toxic
/// closes or resets the connection, or the task is aborted.
pub(crate) async fn run(
    client: TcpStream,
    upstream: TcpStream,
    chains: [watch::Receiver<Chain>; 2],
    ctx: LinkContext,
) {
    // Small writes are the point of some toxics, and request/response
    // latency is what the proxy is measured by; Go, and so Toxiproxy, sets
    // TCP_NODELAY on every connection too.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    let [mut up_chain, mut down_chain] = chains;

    let end = {
        let up = pump(
            &mut client_read,
            &mut upstream_write,
            &mut up_chain,
            &ctx,
            Stream::Upstream,
        );
        let down = pump(
            &mut upstream_read,
            &mut client_write,
            &mut down_chain,
            &ctx,
            Stream::Downstream,
        );
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            tokio::select! {
                end = &mut up, if !up_done => match end {
                    End::Eof => up_done = true,
                    other => break other,
                },
                end = &mut down, if !down_done => match end {
                    End::Eof => down_done = true,
                    other => break other,
                },
                else => break End::Eof,
            }
        }
    };

    match end {
        End::Eof => {}
        End::Close => {
            // A FIN first, so that the peer reads what was written before
            // the close, even if unread input makes the close itself an RST.
            let _ = client_write.shutdown().await;
            let _ = upstream_write.shutdown().await;
        }
        End::Reset => {
            // Dropping a write half would send a FIN before the RST, and the
            // peer would read an orderly end first: reunite the halves and
            // close each socket once, with SO_LINGER 0, which sends only RST.
            for (read, write) in [(client_read, client_write), (upstream_read, upstream_write)] {
                if let Ok(stream) = read.reunite(write) {
                    let _ = stream.set_zero_linger();
                }
            }
        }
    }
}

/// What ended a stretch of a direction.
enum Outcome {
    /// The direction ended.
    End(End),
    /// The direct copy saw toxics appear.
    Toxics,
    /// The pipeline has no toxics and nothing buffered.
    Passthrough,
}

/// One direction: `src` to `dst` through the toxics of `stream`.
async fn pump(
    src: &mut OwnedReadHalf,
    dst: &mut OwnedWriteHalf,
    chain: &mut watch::Receiver<Chain>,
    ctx: &LinkContext,
    stream: Stream,
) -> End {
    // Once the proxy is gone its list can no longer change.
    let mut watching = true;
    let mut buf = Vec::new();
    loop {
        let toxics = chain.borrow_and_update().clone();
        let outcome = if toxics.is_empty() {
            if buf.is_empty() {
                buf = vec![0; ctx.chunk_bytes];
            }
            passthrough(src, dst, chain, &mut watching, &mut buf).await
        } else {
            Pipeline::new(ctx, stream, toxics)
                .run(src, dst, chain, &mut watching)
                .await
        };
        match outcome {
            Outcome::End(end) => return end,
            Outcome::Toxics | Outcome::Passthrough => {}
        }
    }
}

/// Copies with no toxics until the source ends or toxics appear.
async fn passthrough(
    src: &mut OwnedReadHalf,
    dst: &mut OwnedWriteHalf,
    chain: &mut watch::Receiver<Chain>,
    watching: &mut bool,
    buf: &mut [u8],
) -> Outcome {
    loop {
        tokio::select! {
            biased;
            changed = chain.changed(), if *watching => match changed {
                Ok(()) => {
                    if !chain.borrow().is_empty() {
                        return Outcome::Toxics;
                    }
                }
                Err(_) => *watching = false,
            },
            read = src.read(buf) => match read {
                Ok(0) => {
                    let _ = dst.shutdown().await;
                    return Outcome::End(End::Eof);
                }
                Ok(n) => {
                    if dst.write_all(&buf[..n]).await.is_err() {
                        return Outcome::End(End::Close);
                    }
                }
                Err(_) => return Outcome::End(End::Close),
            },
        }
    }
}

/// What flows through a pipeline.
#[derive(Debug)]
enum Item {
    /// Bytes read.
    Data(Bytes),
    /// The source ended; `failed` if by an error rather than an orderly end.
    End {
        /// Whether a read failed.
        failed: bool,
    },
    /// A slicer's pause after a slice.
    Pause(Duration),
    /// `limit_data` closes the connection here.
    Close,
}

/// An item on its way through the toxics.
#[derive(Debug)]
struct Work {
    /// The index of the next toxic it meets; the chain's length means the
    /// socket.
    stage: usize,
    item: Item,
    /// When it was read.
    read_at: Instant,
    /// When the toxic at `stage` lets it through, once computed.
    ready_at: Option<Instant>,
}

impl Work {
    fn new(stage: usize, item: Item, read_at: Instant) -> Work {
        Work {
            stage,
            item,
            read_at,
            ready_at: None,
        }
    }

    /// Moves on to the next toxic.
    fn pass(mut self) -> Work {
        self.stage += 1;
        self.ready_at = None;
        self
    }
}

/// A toxic's state on one connection and direction.
struct Runtime {
    toxic: Arc<ActiveToxic>,
    /// Whether the toxic affects this connection (its toxicity, drawn once).
    applies: bool,
    /// Jitter and slice sizes.
    rng: ChaCha8Rng,
    /// `bandwidth`: when the link is next free.
    free_at: Option<Instant>,
    /// `limit_data`: bytes let through.
    sent_bytes: u64,
    /// `timeout`: when it closes; `reset_peer`: when it resets, once armed.
    deadline: Option<Instant>,
}

impl Runtime {
    /// The toxic meets the connection.
    fn meet(ctx: &LinkContext, stream: Stream, toxic: Arc<ActiveToxic>, now: Instant) -> Runtime {
        let connection = ctx.connection.to_be_bytes();
        let labels: [&[u8]; 4] = [
            ctx.proxy.as_bytes(),
            &connection,
            stream.as_str().as_bytes(),
            toxic.toxic.name.as_bytes(),
        ];
        let mut runtime = Runtime {
            applies: false,
            rng: seed::rng(ctx.seed, &labels),
            free_at: None,
            sent_bytes: 0,
            deadline: None,
            toxic,
        };
        runtime.configure(ctx, now);
        runtime
    }

    /// Draws whether the toxic applies and (re)starts a timeout; also run
    /// when the toxic is updated, as Toxiproxy restarts a toxic then.
    fn configure(&mut self, ctx: &LinkContext, now: Instant) {
        let toxic = &self.toxic.toxic;
        let draw = seed::unit(
            ctx.seed,
            &[
                ctx.proxy.as_bytes(),
                toxic.name.as_bytes(),
                &ctx.connection.to_be_bytes(),
            ],
        );
        self.applies = draw < f64::from(toxic.toxicity);
        if let ToxicKind::Timeout { timeout_ms } = toxic.kind {
            self.deadline =
                (self.applies && timeout_ms > 0).then(|| now + millis(u64::from(timeout_ms)));
        }
    }

    /// `latency` plus or minus `jitter`, never negative.
    fn delay(&mut self, latency_ms: u32, jitter_ms: u32) -> Duration {
        let mut delay_ms = i64::from(latency_ms);
        if jitter_ms > 0 {
            let jitter_ms = i64::from(jitter_ms);
            delay_ms += self.rng.random_range(0..2 * jitter_ms) - jitter_ms;
        }
        millis(u64::try_from(delay_ms).unwrap_or(0))
    }
}

/// How late a `bandwidth` piece may start and still count as back to back.
const BANDWIDTH_SLACK: Duration = Duration::from_millis(10);

fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// The time `len` bytes take at `rate_kb_per_s` kilobytes per second.
fn transmit_time(len: usize, rate_kb_per_s: u32) -> Duration {
    // Bytes per second is 1000 times the rate, so nanoseconds are
    // len * 1e9 / (rate * 1e3); a chunk is at most 100 ms at the rate, which
    // keeps the product far from overflowing.
    Duration::from_nanos(len as u64 * 1_000_000 / u64::from(rate_kb_per_s.max(1)))
}

/// The size of the next slice of a `len`-byte chunk, or `None` to send the
/// rest whole: as in Toxiproxy, a chunk within `variation` of the average
/// is not cut.
fn slice_len(len: usize, average: u32, variation: u32, rng: &mut ChaCha8Rng) -> Option<usize> {
    let (average, variation) = (average as usize, variation as usize);
    if len.saturating_sub(average) <= variation {
        return None;
    }
    let size = if variation > 0 {
        (average + rng.random_range(0..2 * variation)).saturating_sub(variation)
    } else {
        average
    };
    Some(size.clamp(1, len - 1))
}

/// A direction with toxics: a reader and a writer in one task.
struct Pipeline<'a> {
    ctx: &'a LinkContext,
    stream: Stream,
    chain: Chain,
    runtimes: Vec<Runtime>,
    pending: VecDeque<Work>,
}

impl<'a> Pipeline<'a> {
    fn new(ctx: &'a LinkContext, stream: Stream, chain: Chain) -> Pipeline<'a> {
        let now = Instant::now();
        let runtimes = chain
            .iter()
            .map(|toxic| Runtime::meet(ctx, stream, toxic.clone(), now))
            .collect();
        Pipeline {
            ctx,
            stream,
            chain,
            runtimes,
            pending: VecDeque::new(),
        }
    }

    async fn run(
        mut self,
        src: &mut OwnedReadHalf,
        dst: &mut OwnedWriteHalf,
        chain: &mut watch::Receiver<Chain>,
        watching: &mut bool,
    ) -> Outcome {
        let (tx, mut rx) = mpsc::channel(self.ctx.channel_chunks);
        let holding = AtomicBool::new(false);
        let reader = read_chunks(src, tx, self.ctx.chunk_bytes, &holding);
        tokio::pin!(reader);
        let mut reader_done = false;
        let mut channel_open = true;
        loop {
            let wait = match self.advance(dst).await {
                Ok(wait) => wait,
                Err(end) => return Outcome::End(end),
            };
            if wait.is_none()
                && self.chain.is_empty()
                && !reader_done
                && rx.is_empty()
                && !holding.load(Ordering::Relaxed)
            {
                // Nothing is buffered anywhere (the reader holds no chunk and
                // is waiting on the socket), so dropping the reader loses
                // nothing and the direct copy can take over.
                return Outcome::Passthrough;
            }
            let timer = self.next_timer();
            tokio::select! {
                biased;
                changed = chain.changed(), if *watching => match changed {
                    Ok(()) => {
                        let next = chain.borrow_and_update().clone();
                        if let Some(end) = self.resync(next) {
                            return Outcome::End(end);
                        }
                    }
                    Err(_) => *watching = false,
                },
                () = sleep_until(timer.map_or_else(Instant::now, |(at, _)| at)), if timer.is_some() => {
                    if let Some((_, end)) = timer {
                        return Outcome::End(end);
                    }
                },
                () = sleep_until(wait.unwrap_or_else(Instant::now)), if wait.is_some() => {},
                () = &mut reader, if !reader_done => reader_done = true,
                item = rx.recv(), if channel_open && self.pending.len() < self.ctx.channel_chunks => {
                    match item {
                        Some(work) => self.pending.push_back(work),
                        None => channel_open = false,
                    }
                },
            }
        }
    }

    /// The earliest `timeout` close or `reset_peer` reset.
    fn next_timer(&self) -> Option<(Instant, End)> {
        self.runtimes
            .iter()
            .filter(|r| r.applies)
            .filter_map(|r| {
                let end = match r.toxic.toxic.kind {
                    ToxicKind::Timeout { .. } => End::Close,
                    ToxicKind::ResetPeer { .. } => End::Reset,
                    _ => return None,
                };
                r.deadline.map(|at| (at, end))
            })
            .min_by_key(|(at, _)| *at)
    }

    /// Takes a new toxic list: toxics kept keep their state, new ones meet the
    /// connection, and queued items move to the same place in the new chain
    /// (the next surviving toxic; toxics are only ever appended). Returns
    /// `Close` if a `timeout` that held this connection was removed, which
    /// closes it in Toxiproxy too.
    fn resync(&mut self, next: Chain) -> Option<End> {
        let now = Instant::now();
        let survives = |id: u64| next.iter().any(|t| t.id == id);
        let old_ids: Vec<u64> = self.runtimes.iter().map(|r| r.toxic.id).collect();
        let mut close = false;
        let mut old: Vec<Option<Runtime>> = std::mem::take(&mut self.runtimes)
            .into_iter()
            .map(|runtime| {
                if survives(runtime.toxic.id) {
                    Some(runtime)
                } else {
                    close |= runtime.applies
                        && matches!(runtime.toxic.toxic.kind, ToxicKind::Timeout { .. });
                    None
                }
            })
            .collect();
        if close {
            return Some(End::Close);
        }
        let mut changed = vec![false; next.len()];
        for (index, toxic) in next.iter().enumerate() {
            let kept = old
                .iter_mut()
                .find(|r| r.as_ref().is_some_and(|r| r.toxic.id == toxic.id))
                .and_then(Option::take);
            let runtime = match kept {
                Some(mut runtime) => {
                    if !Arc::ptr_eq(&runtime.toxic, toxic) {
                        runtime.toxic = toxic.clone();
                        runtime.configure(self.ctx, now);
                        changed[index] = true;
                    }
                    runtime
                }
                None => {
                    changed[index] = true;
                    Runtime::meet(self.ctx, self.stream, toxic.clone(), now)
                }
            };
            self.runtimes.push(runtime);
        }
        let pending = std::mem::take(&mut self.pending);
        for mut work in pending {
            let removed = old_ids.get(work.stage).is_some_and(|id| !survives(*id));
            if removed && matches!(work.item, Item::Pause(_)) {
                // The slicer whose pause this was is gone.
                continue;
            }
            work.stage = old_ids[..work.stage.min(old_ids.len())]
                .iter()
                .filter(|id| survives(**id))
                .count();
            if removed || changed.get(work.stage).copied().unwrap_or(false) {
                work.ready_at = None;
            }
            self.pending.push_back(work);
        }
        self.chain = next;
        None
    }

    /// Moves queued items through the toxics and onto the socket until the
    /// queue is empty (`None`) or the first item must wait (its time).
    async fn advance(&mut self, dst: &mut OwnedWriteHalf) -> Result<Option<Instant>, End> {
        loop {
            let Some(work) = self.pending.pop_front() else {
                return Ok(None);
            };
            let Some(runtime) = self.runtimes.get_mut(work.stage) else {
                match work.item {
                    Item::Data(bytes) => {
                        if dst.write_all(&bytes).await.is_err() {
                            return Err(End::Close);
                        }
                    }
                    Item::Pause(_) => {}
                    Item::End { failed: false } => {
                        let _ = dst.shutdown().await;
                        return Err(End::Eof);
                    }
                    Item::End { failed: true } | Item::Close => return Err(End::Close),
                }
                continue;
            };
            if !runtime.applies {
                self.pending.push_front(work.pass());
                continue;
            }
            if let Some(at) = step(&mut self.pending, runtime, work, Instant::now()) {
                return Ok(Some(at));
            }
        }
    }
}

/// Takes `work` through the toxic of `runtime`: puts what comes out (if
/// anything) back at the front of `pending`, and returns a time if the item
/// must wait until then.
fn step(
    pending: &mut VecDeque<Work>,
    runtime: &mut Runtime,
    mut work: Work,
    now: Instant,
) -> Option<Instant> {
    let stage = work.stage;
    match (runtime.toxic.toxic.kind, &mut work.item) {
        (
            ToxicKind::Latency {
                latency_ms,
                jitter_ms,
            },
            Item::Data(_),
        ) => {
            let read_at = work.read_at;
            let ready = *work
                .ready_at
                .get_or_insert_with(|| read_at + runtime.delay(latency_ms, jitter_ms));
            if now < ready {
                pending.push_front(work);
                return Some(ready);
            }
            pending.push_front(work.pass());
        }
        (ToxicKind::Bandwidth { rate_kb_per_s }, Item::Data(data)) if rate_kb_per_s > 0 => {
            if work.ready_at.is_none() {
                // Pieces of at most 100 ms at the rate, as in Toxiproxy, so
                // that a slow rate trickles rather than bursts.
                let piece_bytes = (rate_kb_per_s as usize).saturating_mul(100);
                if data.len() > piece_bytes {
                    let rest = data.split_off(piece_bytes);
                    pending.push_front(Work::new(stage, Item::Data(rest), work.read_at));
                }
                // Back to back, the next piece starts when the last one
                // ended, so that timer overshoot does not add up over a long
                // transfer; after an idle gap longer than the slack, it starts
                // now, so that idle time is never saved up for a burst.
                let start = match runtime.free_at {
                    Some(free) if now <= free + BANDWIDTH_SLACK => free,
                    _ => now,
                };
                work.ready_at = Some(start + transmit_time(data.len(), rate_kb_per_s));
            }
            let ready = work.ready_at.unwrap_or(now);
            if now < ready {
                pending.push_front(work);
                return Some(ready);
            }
            runtime.free_at = Some(ready);
            pending.push_front(work.pass());
        }
        (ToxicKind::SlowClose { delay_ms }, Item::End { failed: false }) => {
            let ready = *work
                .ready_at
                .get_or_insert_with(|| now + millis(u64::from(delay_ms)));
            if now < ready {
                pending.push_front(work);
                return Some(ready);
            }
            pending.push_front(work.pass());
        }
        (ToxicKind::Timeout { .. }, Item::Data(_)) => {
            // Dropped on the floor, as in Toxiproxy.
        }
        (ToxicKind::ResetPeer { timeout_ms }, Item::Data(_) | Item::End { .. }) => {
            // The first data (or the end) arms the reset; everything from
            // then on is dropped.
            runtime
                .deadline
                .get_or_insert_with(|| now + millis(u64::from(timeout_ms)));
        }
        (
            ToxicKind::Slicer {
                average_size_bytes,
                size_variation_bytes,
                delay_us,
            },
            Item::Data(data),
        ) => {
            let slice = match slice_len(
                data.len(),
                average_size_bytes,
                size_variation_bytes,
                &mut runtime.rng,
            ) {
                Some(len) => {
                    let slice = data.split_to(len);
                    pending.push_front(work);
                    slice
                }
                None => std::mem::take(data),
            };
            if delay_us > 0 {
                let pause = Item::Pause(Duration::from_micros(u64::from(delay_us)));
                pending.push_front(Work::new(stage, pause, now));
            }
            pending.push_front(Work::new(stage + 1, Item::Data(slice), now));
        }
        (ToxicKind::Slicer { .. }, Item::Pause(pause)) => {
            let pause = *pause;
            let ready = *work.ready_at.get_or_insert_with(|| now + pause);
            if now < ready {
                pending.push_front(work);
                return Some(ready);
            }
        }
        (ToxicKind::LimitData { limit_bytes }, Item::Data(data)) => {
            let remaining = u64::from(limit_bytes).saturating_sub(runtime.sent_bytes);
            let keep = usize::try_from(remaining).unwrap_or(usize::MAX);
            data.truncate(keep);
            runtime.sent_bytes += data.len() as u64;
            if runtime.sent_bytes >= u64::from(limit_bytes) {
                // Nothing after this chunk goes through: the connection
                // closes once it has.
                pending.clear();
                pending.push_front(Work::new(stage + 1, Item::Close, work.read_at));
            }
            if !data.is_empty() {
                pending.push_front(work.pass());
            }
        }
        _ => pending.push_front(work.pass()),
    }
    None
}

/// Reads chunks into `tx`, each stamped with the time it was read, until the
/// source ends. `holding` is set while a chunk read is not yet in the channel.
async fn read_chunks(
    src: &mut OwnedReadHalf,
    tx: mpsc::Sender<Work>,
    chunk_bytes: usize,
    holding: &AtomicBool,
) {
    let mut buf = BytesMut::new();
    loop {
        buf.reserve(chunk_bytes);
        let read = {
            let mut limited = (&mut buf).limit(chunk_bytes);
            src.read_buf(&mut limited).await
        };
        let item = match read {
            Ok(0) => Item::End { failed: false },
            Ok(_) => Item::Data(buf.split().freeze()),
            Err(_) => Item::End { failed: true },
        };
        let last = matches!(item, Item::End { .. });
        holding.store(true, Ordering::Relaxed);
        let sent = tx.send(Work::new(0, item, Instant::now())).await;
        holding.store(false, Ordering::Relaxed);
        if sent.is_err() || last {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slices(len: usize, average: u32, variation: u32, seed: u64) -> Vec<usize> {
        let mut rng = seed::rng(seed, &[b"slicer-test"]);
        let mut out = Vec::new();
        let mut rest = len;
        while let Some(n) = slice_len(rest, average, variation, &mut rng) {
            out.push(n);
            rest -= n;
        }
        out.push(rest);
        out
    }

    #[test]
    fn slices_cover_the_chunk_within_the_variation() {
        let cut = slices(10_000, 100, 20, 1);
        assert_eq!(cut.iter().sum::<usize>(), 10_000);
        assert!(cut.len() >= 10_000 / 120, "{} slices", cut.len());
        assert!(cut.iter().all(|n| (1..=120).contains(n)), "{cut:?}");
        assert_eq!(cut, slices(10_000, 100, 20, 1), "same seed, same slices");
        assert_ne!(
            cut,
            slices(10_000, 100, 20, 2),
            "another seed, other slices"
        );
    }

    #[test]
    fn slicing_degenerate_sizes_terminates() {
        assert_eq!(slices(5, 1, 0, 0), vec![1; 5]);
        // A variation larger than the average still makes progress.
        let cut = slices(1000, 2, 50, 3);
        assert_eq!(cut.iter().sum::<usize>(), 1000);
        assert!(cut.iter().all(|n| *n >= 1));
        assert_eq!(slices(10, 100, 0, 0), vec![10]);
    }

    fn delays(connection: u64, toxic: &str) -> Vec<Duration> {
        let ctx = LinkContext {
            seed: 9,
            proxy: Arc::from("db"),
            connection,
            chunk_bytes: 1024,
            channel_chunks: 4,
        };
        let kind = ToxicKind::Latency {
            latency_ms: 100,
            jitter_ms: 50,
        };
        let toxic = super::super::model::Toxic::new(Stream::Downstream, kind).named(toxic);
        let active = Arc::new(ActiveToxic { id: 0, toxic });
        let mut runtime = Runtime::meet(&ctx, Stream::Downstream, active, Instant::now());
        (0..32).map(|_| runtime.delay(100, 50)).collect()
    }

    #[test]
    fn jitter_replays_per_connection_and_toxic() {
        let first = delays(3, "lag");
        assert_eq!(first, delays(3, "lag"), "the same draws every run");
        assert_ne!(first, delays(4, "lag"), "another connection draws others");
        assert_ne!(first, delays(3, "lag2"), "another toxic draws others");
        let range = Duration::from_millis(50)..Duration::from_millis(150);
        assert!(first.iter().all(|d| range.contains(d)), "{first:?}");
        assert!(first.iter().any(|d| *d != first[0]), "{first:?}");
    }

    #[test]
    fn transmit_time_follows_the_rate() {
        // 100 KB/s: 10 000 bytes take 100 ms.
        assert_eq!(transmit_time(10_000, 100), Duration::from_millis(100));
        assert_eq!(transmit_time(1, 1), Duration::from_millis(1));
    }
}
