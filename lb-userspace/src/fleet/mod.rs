//! Several appliances acting as one: the fleet's config from etcd (`etcd`), the release
//! state and canary analysis they share (`release`), and rate limits counted across them in
//! Redis (`ratelimit`). See
//! `docs/fleet.md`.

pub mod etcd;
pub mod ratelimit;
