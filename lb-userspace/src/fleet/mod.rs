//! Several appliances acting as one: the fleet's config from etcd (`etcd`), and the release
//! state and canary analysis they share (`release`). See
//! `docs/fleet.md`.

pub mod etcd;
pub mod release;
