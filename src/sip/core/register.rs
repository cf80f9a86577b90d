//! The trunks' registrations, run by the core: each trunk with `register = true` has a
//! [`Registration`] client (RFC 3261 §10.2: digest answers, refresh before expiry,
//! backoff on failure), whose REGISTERs leave as client transactions from our SIP port,
//! so the trunk sends calls back to the Contact it registered. After every change, their
//! states go to the metrics ([`SipMetrics::set_trunks`]), which the API and `/metrics`
//! read.

use confer_pstn_bridge::registration::{
    FailureReason, Registration, RegistrationConfig, RegistrationState,
};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::super::metrics::TrunkStatus;
use super::super::trunks::TrunkRegistration;
use super::*;
use confer_pstn_bridge::sip::Uri;

/// One trunk's registration.
pub(super) struct Registered {
    trunk: TrunkRegistration,
    client: Registration<StdRng>,
}

impl std::fmt::Debug for Registered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registered")
            .field("trunk", &self.trunk.trunk)
            .finish_non_exhaustive()
    }
}

fn failure_text(f: &FailureReason) -> String {
    match f {
        FailureReason::Status(s) => format!("{} {}", s.as_u16(), s.canonical_reason()),
        FailureReason::AuthFailed => "the registrar refused our credentials".into(),
        FailureReason::NoCredentials => "challenged, but the trunk has no credentials".into(),
        FailureReason::Timeout => "no response (timeout)".into(),
        FailureReason::TransportError => "could not send".into(),
        FailureReason::IntervalTooBrief => "423 without a usable Min-Expires".into(),
        FailureReason::NotGranted => "the registrar granted 0 seconds".into(),
        FailureReason::Malformed(e) => format!("unreadable response: {e}"),
    }
}

impl<R: RngCore> SipCore<R> {
    /// Starts the trunks' registrations (once, when the shell starts).
    pub fn start_registrations(&mut self, now: Instant) {
        if !self.registrations.is_empty() {
            return;
        }
        let contact_host = match self.config.local.ip {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
        };
        let port = self.config.local.udp.unwrap_or(5060);
        let sent_by = self.sent_by(&Transport::Udp);
        for trunk in self.config.registrations.clone() {
            let contact =
                match format!("sip:{}@{contact_host}:{port}", trunk.contact_user).parse::<Uri>() {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(trunk = %trunk.trunk, "registration contact: {e}");
                        continue;
                    }
                };
            let mut config = RegistrationConfig::new(
                trunk.registrar.clone(),
                trunk.aor.clone(),
                contact,
                sent_by.clone(),
            );
            config.credentials = trunk.credentials.clone();
            config.expires = trunk.expires;
            let client = Registration::new(config, StdRng::from_rng(&mut self.rng), now);
            self.registrations.push(Registered { trunk, client });
        }
        self.send_registers(now);
    }

    /// Sends what the registrations have to send, and publishes their states.
    pub(super) fn send_registers(&mut self, now: Instant) {
        for i in 0..self.registrations.len() {
            while let Some(req) = self.registrations[i].client.poll_request(now) {
                let destination = self.registrations[i].trunk.destination.clone();
                match self.layer.send_request(req, destination, now) {
                    Ok(tx) => {
                        self.by_client_tx.insert(tx, (0, Purpose::Register(i)));
                    }
                    Err(e) => {
                        tracing::warn!(trunk = %self.registrations[i].trunk.trunk, "REGISTER not sent: {e}");
                        self.registrations[i].client.on_transport_error(now);
                    }
                }
            }
        }
        self.publish_registrations(now);
    }

    /// A final response, timeout or transport error of registration `i`'s REGISTER.
    pub(super) fn on_register_result(
        &mut self,
        i: usize,
        response: Option<&Response>,
        timed_out: bool,
        now: Instant,
    ) {
        let Some(r) = self.registrations.get_mut(i) else {
            return;
        };
        let before = r.client.state().clone();
        match response {
            Some(resp) => {
                if let Err(e) = r.client.on_response(resp, now) {
                    tracing::info!(trunk = %r.trunk.trunk, "registration response: {e}");
                }
            }
            None if timed_out => r.client.on_timeout(now),
            None => r.client.on_transport_error(now),
        }
        let after = r.client.state();
        if std::mem::discriminant(&before) != std::mem::discriminant(after) {
            match after {
                RegistrationState::Registered { .. } => {
                    tracing::info!(trunk = %r.trunk.trunk, "registered at the trunk");
                }
                RegistrationState::Backoff { last_failure, .. }
                | RegistrationState::Failed(last_failure) => {
                    tracing::warn!(trunk = %r.trunk.trunk, "registration failed: {}", failure_text(last_failure));
                }
                _ => {}
            }
        }
        self.send_registers(now);
    }

    /// Removes every binding (`Expires: 0`) at shutdown.
    pub(super) fn unregister_all(&mut self, now: Instant) {
        for r in &mut self.registrations {
            r.client.unregister(now);
        }
        self.send_registers(now);
    }

    /// The registrations' timers.
    pub(super) fn registration_timeout(&self) -> Option<Instant> {
        self.registrations
            .iter()
            .filter_map(|r| r.client.next_timeout())
            .min()
    }

    /// Fires the registrations' due timers.
    pub(super) fn registration_timers(&mut self, now: Instant) {
        let due = self
            .registrations
            .iter()
            .any(|r| r.client.next_timeout().is_some_and(|t| t <= now));
        if due {
            for r in &mut self.registrations {
                r.client.handle_timeout(now);
            }
            self.send_registers(now);
        }
    }

    fn publish_registrations(&self, now: Instant) {
        if self.registrations.is_empty() {
            return;
        }
        let states = self
            .registrations
            .iter()
            .map(|r| {
                let stats = r.client.stats();
                let (state, last_failure, expires_in_s) = match r.client.state() {
                    RegistrationState::Unregistered => ("unregistered", None, None),
                    RegistrationState::Registering => ("registering", None, None),
                    RegistrationState::Registered { expires_at } => (
                        "registered",
                        None,
                        Some(expires_at.saturating_duration_since(now).as_secs()),
                    ),
                    RegistrationState::Backoff { last_failure, .. } => {
                        ("backoff", Some(failure_text(last_failure)), None)
                    }
                    RegistrationState::Failed(f) => ("failed", Some(failure_text(f)), None),
                };
                TrunkStatus {
                    trunk: r.trunk.trunk.clone(),
                    state,
                    last_failure,
                    expires_in_s,
                    last_status: stats.last_status.map(|s| s.as_u16()),
                    successes: stats.successes,
                    failures: stats.failures,
                }
            })
            .collect();
        self.metrics.set_trunks(states);
    }
}
