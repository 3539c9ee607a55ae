//! Session tickets (resumption without server-side state): the session is sealed with
//! AES-256-GCM under a key shared by every worker, so a client resumes on any core. The key
//! rotates every `period`; the key before it still opens tickets for one more period, so a
//! ticket is good for at most two periods, and a key is never used after that.

use std::sync::RwLock;
use std::time::Duration;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};

/// The longest ticket lifetime TLS 1.3 allows (RFC 8446, 4.6.1), in seconds.
const MAX_TICKET_LIFETIME: u64 = 7 * 86_400;

/// Length of the key name that starts every ticket.
const NAME_LEN: usize = 16;

struct Key {
    name: [u8; NAME_LEN],
    key: LessSafeKey,
}

impl Key {
    fn generate(rng: &SystemRandom) -> Option<Key> {
        let mut name = [0u8; NAME_LEN];
        let mut secret = [0u8; 32];
        rng.fill(&mut name).ok()?;
        rng.fill(&mut secret).ok()?;
        let key = UnboundKey::new(&AES_256_GCM, &secret).ok()?;
        Some(Key {
            name,
            key: LessSafeKey::new(key),
        })
    }
}

struct Keys {
    current: Key,
    previous: Option<Key>,
    /// Unix seconds when `current` is replaced.
    next_switch: u64,
}

/// Tickets under rotating keys.
pub struct RotatingTickets {
    period: u64,
    rng: SystemRandom,
    keys: RwLock<Keys>,
}

impl std::fmt::Debug for RotatingTickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotatingTickets")
            .field("period", &self.period)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl RotatingTickets {
    /// Keys that rotate every `period` (at least a second).
    pub fn new(period: Duration) -> Result<RotatingTickets, String> {
        RotatingTickets::starting_at(period, unix_now())
    }

    fn starting_at(period: Duration, now: u64) -> Result<RotatingTickets, String> {
        let period = period.as_secs().max(1);
        let rng = SystemRandom::new();
        let current = Key::generate(&rng).ok_or("TLS tickets: no randomness for a key")?;
        Ok(RotatingTickets {
            period,
            keys: RwLock::new(Keys {
                current,
                previous: None,
                next_switch: now.saturating_add(period),
            }),
            rng,
        })
    }

    /// Replaces the keys whose time is up.
    fn rotate(&self, now: u64) {
        if now
            < self
                .keys
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .next_switch
        {
            return;
        }
        let mut k = self.keys.write().unwrap_or_else(|p| p.into_inner());
        if now < k.next_switch {
            return;
        }
        let Some(fresh) = Key::generate(&self.rng) else {
            // Keep the current key a little longer rather than stop issuing tickets.
            return;
        };
        let old = std::mem::replace(&mut k.current, fresh);
        // The old key opens tickets for one more period, unless that period is over too.
        k.previous = (now < k.next_switch.saturating_add(self.period)).then_some(old);
        k.next_switch = now.saturating_add(self.period);
    }

    fn seal(&self, plain: &[u8], now: u64) -> Option<Vec<u8>> {
        self.rotate(now);
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let k = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(&k.current.name);
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        k.current
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&k.current.name),
                &mut body,
            )
            .ok()?;
        out.extend_from_slice(&body);
        Some(out)
    }

    fn open(&self, ticket: &[u8], now: u64) -> Option<Vec<u8>> {
        self.rotate(now);
        if ticket.len() < NAME_LEN + NONCE_LEN + 16 {
            return None;
        }
        let (name, rest) = ticket.split_at(NAME_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let k = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let key = [Some(&k.current), k.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|key| key.name[..] == *name)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = sealed.to_vec();
        let plain = key
            .key
            .open_in_place(nonce, Aad::from(&key.name), &mut body)
            .ok()?;
        let n = plain.len();
        body.truncate(n);
        Some(body)
    }
}

impl rustls::server::ProducesTickets for RotatingTickets {
    fn enabled(&self) -> bool {
        true
    }

    /// The lifetime hint clients get: a ticket opens for up to two periods, and TLS 1.3
    /// allows at most 7 days.
    fn lifetime(&self) -> u32 {
        u32::try_from(self.period.saturating_mul(2).min(MAX_TICKET_LIFETIME)).unwrap_or(u32::MAX)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.seal(plain, unix_now())
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.open(cipher, unix_now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_open_for_two_periods_and_never_after_tampering() {
        let t0 = 1_000_000;
        let t = RotatingTickets::starting_at(Duration::from_secs(100), t0).expect("keys");
        let ticket = t.seal(b"session state", t0).expect("seal");
        assert_eq!(
            t.open(&ticket, t0 + 1).as_deref(),
            Some(&b"session state"[..])
        );
        // Any flipped byte (name, nonce, ciphertext, tag) fails to open.
        for i in [0, NAME_LEN, NAME_LEN + NONCE_LEN, ticket.len() - 1] {
            let mut bad = ticket.clone();
            bad[i] ^= 1;
            assert_eq!(t.open(&bad, t0 + 1), None, "byte {i}");
        }
        assert_eq!(t.open(&ticket[..10], t0 + 1), None);
        // After one rotation the old key still opens it; new tickets use the new key.
        assert!(t.open(&ticket, t0 + 150).is_some());
        let newer = t.seal(b"later", t0 + 150).expect("seal");
        assert_ne!(newer[..NAME_LEN], ticket[..NAME_LEN]);
        // After the second rotation the first key is gone.
        assert_eq!(t.open(&ticket, t0 + 260), None);
        assert!(t.open(&newer, t0 + 260).is_some());
    }

    #[test]
    fn a_long_quiet_spell_retires_both_keys() {
        let t0 = 5_000;
        let t = RotatingTickets::starting_at(Duration::from_secs(10), t0).expect("keys");
        let ticket = t.seal(b"s", t0).expect("seal");
        // Nothing for five periods: the key that sealed it ended long ago.
        assert_eq!(t.open(&ticket, t0 + 50), None);
        assert_eq!(rustls::server::ProducesTickets::lifetime(&t), 20);
        let week = RotatingTickets::new(Duration::from_secs(7 * 86_400)).expect("keys");
        assert_eq!(
            rustls::server::ProducesTickets::lifetime(&week),
            604_800,
            "never above TLS 1.3's 7 days"
        );
    }
}
