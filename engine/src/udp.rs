//! The thin tokio shell around a [`MediaLeg`]: one UDP socket (RTP and RTCP muxed, RFC
//! 5761), one frame clock, and lock-free audio queues to whoever plays and captures.
//!
//! Everything that decides anything is in the sans-IO [`MediaLeg`]; this module only moves
//! bytes and reads the clock. One task ([`UdpLeg::run_until`]) owns the socket and the leg:
//!
//! - a datagram from the peer is handed to the leg with `Instant::now()` read right after
//!   `recv_from` returned (the arrival time is the jitter buffer's measurement);
//! - on every frame tick (a tokio interval of the leg's frame period; missed ticks are
//!   skipped, never bursted, so a stalled task does not pop a burst of frames afterwards) it
//!   pops one frame from the leg into the playout queue, sends one frame from the capture
//!   queue (or lets the media clock pass when there is none), and sends RTCP when due;
//! - events (DTMF, source changes, BYE) go out on a bounded channel.
//!
//! The audio queues are `ringbuf` SPSC rings of samples, written and read a whole frame at a
//! time. A full playout ring or event channel drops the frame or event and counts it
//! ([`ShellStats`]); the network task never waits on its consumers.
//!
//! Datagrams from an address other than the peer are dropped and counted. Without a peer
//! ([`UdpLeg::set_peer`] not called) the first datagram the leg accepts sets it (symmetric
//! RTP, as for a peer behind NAT).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use ringbuf::traits::{Consumer, Observer, Producer, Split};
use ringbuf::{HeapCons, HeapProd, HeapRb};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

use crate::leg::{LegEvent, MAX_DATAGRAM, MediaLeg};

/// The shell's side of the queues.
pub struct LegIo {
    /// Decoded frames, engine rate, for the consumer.
    pub playout: HeapProd<f32>,
    /// Frames to send, engine rate, from the producer.
    pub capture: HeapCons<f32>,
    /// Events for the owner.
    pub events: mpsc::Sender<LegEvent>,
}

/// The owner's side of the queues.
pub struct LegIoRemote {
    /// Read decoded frames here.
    pub playout: HeapCons<f32>,
    /// Write frames to send here.
    pub capture: HeapProd<f32>,
    /// Events from the leg.
    pub events: mpsc::Receiver<LegEvent>,
}

impl LegIo {
    /// Queues holding `playout_samples` and `capture_samples` samples and 64 events.
    pub fn new(playout_samples: usize, capture_samples: usize) -> (LegIo, LegIoRemote) {
        let (playout_prod, playout_cons) = HeapRb::<f32>::new(playout_samples.max(1)).split();
        let (capture_prod, capture_cons) = HeapRb::<f32>::new(capture_samples.max(1)).split();
        let (events_tx, events_rx) = mpsc::channel(64);
        (
            LegIo {
                playout: playout_prod,
                capture: capture_cons,
                events: events_tx,
            },
            LegIoRemote {
                playout: playout_cons,
                capture: capture_prod,
                events: events_rx,
            },
        )
    }
}

/// What the shell saw, beside the leg's own [`crate::leg::LegStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShellStats {
    /// Datagrams read from the socket.
    pub datagrams_received: u64,
    /// Datagrams from an address other than the peer, dropped.
    pub foreign_datagrams: u64,
    /// Datagrams the leg rejected.
    pub rejected_datagrams: u64,
    /// Socket receive errors.
    pub recv_errors: u64,
    /// Socket send errors.
    pub send_errors: u64,
    /// Packets not sent because no peer is known yet.
    pub unsent: u64,
    /// Frame ticks handled.
    pub ticks: u64,
    /// Decoded frames dropped because the playout queue was full.
    pub playout_dropped: u64,
    /// Ticks with no full frame in the capture queue (nothing sent).
    pub capture_underruns: u64,
    /// Events dropped because the event channel was full.
    pub events_dropped: u64,
    /// Frames the leg failed to produce or send (codec errors; not expected).
    pub leg_errors: u64,
}

/// A media leg on a UDP socket.
#[derive(Debug)]
pub struct UdpLeg {
    socket: UdpSocket,
    peer: Option<SocketAddr>,
    leg: MediaLeg,
    stats: ShellStats,
}

impl UdpLeg {
    /// Binds a socket for `leg` at `addr` (port 0: an ephemeral port).
    pub async fn bind(addr: SocketAddr, leg: MediaLeg) -> io::Result<Self> {
        Ok(UdpLeg {
            socket: UdpSocket::bind(addr).await?,
            peer: None,
            leg,
            stats: ShellStats::default(),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Where to send, and the only address to receive from.
    pub fn set_peer(&mut self, addr: SocketAddr) {
        self.peer = Some(addr);
    }

    /// The leg.
    pub fn leg(&self) -> &MediaLeg {
        &self.leg
    }

    /// Runs the leg until `shutdown` completes, then sends an RTCP BYE and returns the leg
    /// and the shell's counters.
    // The shell is the one place that reads the clock: arrival times and frame ticks.
    #[allow(clippy::disallowed_methods)]
    pub async fn run_until(
        mut self,
        mut io: LegIo,
        shutdown: impl Future<Output = ()>,
    ) -> (MediaLeg, ShellStats) {
        let frame = self.leg.frame_samples();
        let mut ticker = tokio::time::interval(self.leg.frame_duration());
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        // One byte more than the leg accepts, so that an oversized datagram is seen as such
        // rather than silently truncated.
        let mut rx = vec![0u8; MAX_DATAGRAM + 1];
        let mut tx = vec![0u8; MAX_DATAGRAM];
        let mut pcm = vec![0.0f32; frame];
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                r = self.socket.recv_from(&mut rx) => {
                    let now = Instant::now();
                    match r {
                        Ok((len, from)) => self.on_datagram(&rx[..len], from, now),
                        Err(_) => self.stats.recv_errors += 1,
                    }
                }
                _ = ticker.tick() => {
                    let now = Instant::now();
                    self.on_tick(now, &mut io, &mut pcm, &mut tx).await;
                }
            }
        }
        if let Ok(n) = self.leg.write_bye(Instant::now(), &mut tx) {
            self.send(&tx[..n]).await;
        }
        (self.leg, self.stats)
    }

    fn on_datagram(&mut self, datagram: &[u8], from: SocketAddr, now: Instant) {
        self.stats.datagrams_received += 1;
        if self.peer.is_some_and(|p| p != from) {
            self.stats.foreign_datagrams += 1;
            return;
        }
        match self.leg.handle_datagram(datagram, now) {
            Ok(_) => {
                self.peer.get_or_insert(from);
            }
            Err(_) => self.stats.rejected_datagrams += 1,
        }
    }

    async fn on_tick(&mut self, now: Instant, io: &mut LegIo, pcm: &mut [f32], tx: &mut [u8]) {
        self.stats.ticks += 1;
        match self.leg.poll_frame(now, pcm) {
            Ok(_) if io.playout.vacant_len() >= pcm.len() => {
                io.playout.push_slice(pcm);
            }
            Ok(_) => self.stats.playout_dropped += 1,
            Err(_) => self.stats.leg_errors += 1,
        }
        if io.capture.occupied_len() >= pcm.len() {
            io.capture.pop_slice(pcm);
            match self.leg.send_frame(pcm, now, tx) {
                Ok(0) => {}
                Ok(n) => self.send(&tx[..n]).await,
                Err(_) => self.stats.leg_errors += 1,
            }
        } else {
            self.stats.capture_underruns += 1;
            self.leg.skip_frame();
        }
        match self.leg.poll_rtcp(now, tx) {
            Ok(Some(n)) => self.send(&tx[..n]).await,
            Ok(None) => {}
            Err(_) => self.stats.leg_errors += 1,
        }
        while let Some(e) = self.leg.poll_event() {
            if io.events.try_send(e).is_err() {
                self.stats.events_dropped += 1;
            }
        }
    }

    async fn send(&mut self, packet: &[u8]) {
        let Some(peer) = self.peer else {
            self.stats.unsent += 1;
            return;
        };
        if self.socket.send_to(packet, peer).await.is_err() {
            self.stats.send_errors += 1;
        }
    }
}
